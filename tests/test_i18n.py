"""The interface's language: which catalog a request gets, messages raised far from a
request shown in the visitor's language, and catalogs that are complete and compiled."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from testkit import ROOT
from webapp import create_app
from webapp.config import ConfigError
from webapp.messages import Message

CATALOGS = sorted((ROOT / "translations").glob("*/LC_MESSAGES/messages.po"))
ZH = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8", "Accept": "application/json"}
JSON = {"Accept": "application/json"}


@pytest.fixture()
def client():
    return create_app({"TESTING": True}).test_client()


def _message(response) -> str:
    return response.get_json()["error"]["message"]


def test_the_browser_language_chooses_the_catalog(client):
    assert _message(client.get("/nowhere", headers=ZH)) == "这个地址上什么也没有。"
    assert _message(client.get("/nowhere", headers=JSON)) == "There is nothing at this address."
    english_first = {"Accept-Language": "en-GB,en;q=0.9,zh-CN;q=0.5", **JSON}
    assert _message(client.get("/nowhere", headers=english_first)).startswith("There is")


def test_the_code_stays_english_and_json_is_utf8(client):
    response = client.get("/nowhere", headers=ZH)
    assert response.get_json()["error"]["code"] == "not_found"
    assert "这个地址".encode() in response.data  # not \u escapes


def test_after_a_form_the_switch_goes_to_the_home_page_of_its_area(tmp_path):
    """A page answering a posted form cannot be asked for again: its language switch
    leads to the home page of the area the form was in (the admin's, the site's)."""
    client = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "models"),
                         "ADMIN_TOKEN": "i18n-admin-token-0123456789"}).test_client()
    refused = client.post("/admin/login", data={"token": "wrong"})
    assert 'href="/admin/?lang=zh_Hans_CN"' in refused.get_data(as_text=True)
    answered = client.post("/", data={}, headers={"Accept": "text/html"})
    page = answered.get_data(as_text=True)
    assert 'href="/?lang=zh_Hans_CN"' in page and "/admin/?lang" not in page


def test_the_switch_is_remembered_and_beats_the_browser(client):
    page = client.get("/nowhere?lang=zh-CN", headers={"Accept": "text/html"})
    assert '<html lang="zh-Hans-CN"' in page.get_data(as_text=True)
    assert "这个地址上什么也没有。" in page.get_data(as_text=True)
    # The cookie now wins over an English browser, until the visitor switches back.
    english = {"Accept-Language": "en", **JSON}
    assert _message(client.get("/nowhere", headers=english)) == "这个地址上什么也没有。"
    client.get("/nowhere?lang=en", headers=english)
    assert _message(client.get("/nowhere", headers=ZH)).startswith("There is")


def test_an_unknown_language_is_english(client):
    assert _message(client.get("/nowhere?lang=xx", headers=JSON)).startswith("There is")
    klingon = {"Accept-Language": "tlh", **JSON}
    assert _message(client.get("/nowhere", headers=klingon)).startswith("There is")


def test_the_owner_can_fix_the_language():
    client = create_app({"TESTING": True, "DEFAULT_LANGUAGE": "zh_CN"}).test_client()
    assert _message(client.get("/nowhere", headers=JSON)) == "这个地址上什么也没有。"
    # A visitor's own choice still wins.
    assert _message(client.get("/nowhere?lang=en", headers=JSON)).startswith("There is")


def test_a_language_without_catalog_stops_startup():
    with pytest.raises(ConfigError, match="DEFAULT_LANGUAGE='fr': no catalog"):
        create_app({"TESTING": True, "DEFAULT_LANGUAGE": "fr"})


def test_a_message_is_english_text_that_translates_where_it_is_shown():
    message = Message("The upload is larger than the %(mb)s MB limit.", mb="20")
    assert message == "The upload is larger than the 20 MB limit."
    assert f"{message}".endswith("MB limit.")
    for copy in (pickle.loads(pickle.dumps(message)), Message.from_json(message.to_json())):
        assert (copy, copy.msgid, copy.params) == (message, message.msgid, message.params)
    app = create_app({"TESTING": True})
    from webapp.i18n import translate

    with app.test_request_context(headers=ZH):
        assert translate(message) == "上传的文件超过了 20 MB 的上限。"
        assert translate("a sentence no catalog knows") == "a sentence no catalog knows"
    with app.test_request_context():
        assert translate(message) == "The upload is larger than the 20 MB limit."


def test_a_plain_string_from_json_stays_a_string():
    assert Message.from_json("plain") == "plain"
    assert Message.from_json({"msgid": "%(x)s", "params": {}}) == "%(x)s"  # bad params


def _code_messages() -> set[str]:
    """Every message ``make i18n-extract`` finds in the code, templates and scripts."""
    with open(ROOT / "babel.cfg", encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None,
                "lazy_gettext": None, "Message": None}
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=keywords):
        found.add(message[0] if isinstance(message, tuple) else message)
    return found


@pytest.mark.parametrize("po", CATALOGS, ids=lambda p: p.parent.parent.name)
def test_every_message_is_translated(po: Path):
    with po.open("rb") as f:
        catalog = read_po(f)
    translated = {m.id if isinstance(m.id, str) else m.id[0] for m in catalog
                  if m.id and m.string and not m.fuzzy
                  and all(m.string if isinstance(m.string, tuple) else [m.string])}
    missing = sorted(_code_messages() - translated)
    assert not missing, (f"{len(missing)} messages without a translation in {po} (make "
                         f"i18n-update, translate, make i18n-compile): {missing[:10]}")


@pytest.mark.parametrize("po", CATALOGS, ids=lambda p: p.parent.parent.name)
def test_the_compiled_catalog_is_up_to_date(po: Path):
    with po.open("rb") as f:
        catalog = read_po(f)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    with po.with_suffix(".mo").open("rb") as f:
        shipped = read_mo(f)

    def entries(catalog):  # a plural message's id and strings are lists
        return {(tuple(m.id) if isinstance(m.id, list | tuple) else m.id):
                (tuple(m.string) if isinstance(m.string, list | tuple) else m.string)
                for m in catalog if m.id}

    assert entries(shipped) == entries(read_mo(compiled)), "run make i18n-compile"
