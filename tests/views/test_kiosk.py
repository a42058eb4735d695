"""The kiosk's teacher settings (defaults from the environment, changes in an atomically
written JSON file; the language of the pages among them), the /kiosk page and its `flask
kiosk` commands."""

from __future__ import annotations

import json
import re
import threading

import pytest

from webapp import create_app
from webapp.config import Config, ConfigError
from webapp.stores.kiosk_settings import (
    FIELDS,
    KioskSettings,
    KioskSettingsError,
    KioskSettingsStore,
)

LANGUAGES = {"en": "English", "zh_Hans_CN": "中文"}  # what the catalogs offer


@pytest.fixture()
def store(tmp_path):
    return KioskSettingsStore(tmp_path / "instance" / "kiosk.json", KioskSettings(),
                              LANGUAGES)


@pytest.fixture()
def kiosk_app(tmp_path):
    return create_app({"TESTING": True, "KIOSK_SETTINGS_FILE": str(tmp_path / "kiosk.json")})


# --------------------------------------------------------------------------- settings


def test_defaults_come_from_the_environment():
    config = Config.from_env({"KIOSK_IDLE_SECONDS": "30", "KIOSK_BARS": "5",
                              "KIOSK_EXPLAIN": "no", "KIOSK_AUTO_CAPTURE_SECONDS": "10"})
    assert KioskSettings.from_config(config) == KioskSettings(
        idle_seconds=30, auto_capture_seconds=10, bars=5, explain=False, language="")
    assert KioskSettings.from_config(Config.from_env({})) == KioskSettings()


@pytest.mark.parametrize("env, words", [
    ({"KIOSK_BARS": "9"}, "KIOSK_BARS=9: must be between 1 and 5"),
    ({"KIOSK_IDLE_SECONDS": "soon"}, "KIOSK_IDLE_SECONDS='soon': expected a whole number"),
])
def test_bad_environment_values_name_the_setting(env, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        Config.from_env(env)


def test_the_retired_label_language_setting_still_works_or_says_why_not(caplog):
    """KIOSK_LANGUAGE chose the kiosk's label language (a file of label translations); the
    labels now follow the language of the page, so it stands for DEFAULT_LANGUAGE."""
    app = create_app({"TESTING": True, "KIOSK_LANGUAGE": "zh_CN"})
    assert app.config["DEFAULT_LANGUAGE"] == "zh_CN"
    assert "KIOSK_LANGUAGE is retired" in caplog.text
    body = app.test_client().get("/kiosk/settings.json").get_json()
    assert body["language"] == "zh_Hans_CN" and body["confidence_words"][0][1] == "非常确定"
    with pytest.raises(ConfigError, match="KIOSK_LANGUAGE='de': no catalog"):
        create_app({"KIOSK_LANGUAGE": "de"})
    with pytest.raises(ConfigError, match="TRANSLATIONS_DIR is no longer read"):
        Config.from_env({"TRANSLATIONS_DIR": "/srv/translations"})


def test_update_keeps_only_changes_in_a_json_file(store):
    assert store.load() == KioskSettings()
    assert not store.path.exists()
    settings = store.update({"idle_seconds": "45", "bars": 5, "language": "zh-CN",
                             "explain": True})
    assert settings == KioskSettings(idle_seconds=45, bars=5, language="zh_Hans_CN")
    data = json.loads(store.path.read_text("utf-8"))
    assert data["format"] == "kiosk-settings/1" and data["updated"]
    assert data["settings"] == {"idle_seconds": 45, "bars": 5, "language": "zh_Hans_CN"}
    # No temporary file is left beside it.
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["kiosk.json",
                                                                   "kiosk.json.lock"]
    # A second store (another worker process) reads the same.
    other = KioskSettingsStore(store.path, KioskSettings(), LANGUAGES)
    assert other.load() == settings


def test_a_changed_environment_default_applies_to_untouched_fields(store):
    store.update({"bars": 4})
    later = KioskSettingsStore(store.path, KioskSettings(idle_seconds=20), LANGUAGES)
    assert later.load() == KioskSettings(idle_seconds=20, bars=4)


def test_form_submission_reads_an_absent_checkbox_as_no(store):
    settings = store.update_from_form({"idle_seconds": "90", "auto_capture_seconds": "0",
                                       "bars": "2", "language": ""})
    assert settings == KioskSettings(idle_seconds=90, bars=2, explain=False, live=False)
    assert store.update_from_form({"explain": "on"}).explain is True


def test_invalid_changes_name_every_bad_field_and_change_nothing(store):
    store.update({"bars": 4})
    before = store.path.read_bytes()
    with pytest.raises(KioskSettingsError) as info:
        store.update({"bars": 0, "idle_seconds": "soon", "language": "../../etc/passwd",
                      "explain": "maybe", "colour": "red", "auto_capture_seconds": 5})
    errors = info.value.errors
    assert set(errors) == {"bars", "idle_seconds", "language", "explain", "colour"}
    assert errors["bars"] == "must be from 1 to 5"
    assert errors["idle_seconds"] == "enter a whole number"
    assert "no catalog for the language" in errors["language"]
    assert "unknown setting" in errors["colour"]
    assert store.path.read_bytes() == before


def test_reset_goes_back_to_the_defaults(store):
    store.update({"bars": 1})
    assert store.reset() == KioskSettings()
    assert not store.path.exists()


def test_a_damaged_file_never_takes_the_kiosk_down(store, caplog):
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text("{not json")
    assert store.load() == KioskSettings()
    store.path.write_text(json.dumps({"settings": {"bars": 99, "idle_seconds": 15}}))
    assert store.load() == KioskSettings(idle_seconds=15)  # the good entry is kept
    assert "ignoring" in caplog.text


def test_a_language_whose_catalog_was_removed_falls_back(store, caplog):
    store.update({"language": "zh_Hans_CN"})
    without = KioskSettingsStore(store.path, KioskSettings(), {"en": "English"})
    assert without.load().language == ""  # each browser's own, logged
    assert "ignoring language" in caplog.text
    # An old file naming a label-translation language (translations/de.json) is ignored too.
    store.path.write_text(json.dumps({"settings": {"language": "de", "bars": 2}}))
    assert store.load() == KioskSettings(bars=2)


def test_readers_never_see_half_a_file_and_writers_lose_nothing(store):
    """Two writers change different fields 30 times each while a reader keeps reading."""
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                if store.path.exists():
                    json.loads(store.path.read_text("utf-8"))
            except FileNotFoundError:
                pass
            except ValueError as exc:  # half-written JSON
                errors.append(exc)

    def writer(field, values):
        for value in values:
            store.update({field: value})

    threads = [threading.Thread(target=reader),
               threading.Thread(target=writer, args=("idle_seconds", range(100, 130))),
               threading.Thread(target=writer, args=("bars", [1, 2, 4, 5] * 7 + [1, 2]))]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert not errors
    assert store.load() == KioskSettings(idle_seconds=129, bars=2)


def test_fields_describe_a_form():
    assert [f.name for f in FIELDS] == list(KioskSettings().as_dict())
    assert all(f.label and f.help and f.setting.startswith(("KIOSK_", "DEFAULT_LANGUAGE"))
               for f in FIELDS)


# --------------------------------------------------------------------------- page


def test_kiosk_page_carries_the_settings_and_only_local_assets(kiosk_app):
    client = kiosk_app.test_client()
    with kiosk_app.app_context():
        from webapp.current import kiosk_settings as store

        store().update({"idle_seconds": 12, "bars": 4, "explain": False})
    response = client.get("/kiosk")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "camera=(self)" in response.headers["Permissions-Policy"]
    page = response.get_data(as_text=True)
    assert 'data-idle-seconds="12"' in page and 'data-bars="4"' in page
    assert 'data-explain="false"' in page
    assert "What is this?" in page
    assert "<a " not in page  # no link that leaves the kiosk
    # The language switch: a button per other language, named in that language.
    assert re.search(r'<button type="button" class="kiosk-small-button" '
                     r'data-lang="zh_Hans_CN" lang="zh-Hans-CN">中文</button>', page)
    chinese = client.get("/kiosk", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert '<html lang="zh-Hans-CN"' in chinese and "这是什么？" in chinese
    assert 'data-lang="en" lang="en">English</button>' in chinese
    assert not re.search(r'<input(?![^>]*type="file")', page)  # no text input
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)  # no inline script
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert urls and all(u.startswith("/") for u in urls)
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_settings_json_gives_the_page_its_words_in_its_language(kiosk_app):
    client = kiosk_app.test_client()
    body = client.get("/kiosk/settings.json").get_json()
    assert body["language"] == ""  # each browser's own
    assert body["confidence_words"][0] == [0.7, "very sure"]
    assert "{label}" in body["explanation_template"]
    assert {f.name for f in FIELDS} <= set(body)
    with kiosk_app.app_context():
        from webapp.current import kiosk_settings as store

        store().update({"language": "zh_CN"})  # the teacher fixes Chinese for everyone
    body = client.get("/kiosk/settings.json").get_json()
    assert body["language"] == "zh_Hans_CN"
    assert body["confidence_words"][0] == [0.7, "非常确定"]
    assert "“{label}”" in body["explanation_template"] and "热力图" in body["explanation_template"]
    assert "labels" not in body  # class names come with every answer (display_label)
    # A visitor's own choice still wins.
    english = client.get("/kiosk/settings.json?lang=en").get_json()
    assert english["confidence_words"][0] == [0.7, "very sure"]


def test_settings_file_defaults_to_the_instance_folder():
    app = create_app({})
    with app.app_context():
        from webapp import current

        assert str(current.kiosk_settings().path) == f"{app.instance_path}/kiosk.json"


# --------------------------------------------------------------------------- command line


def test_flask_kiosk_commands(kiosk_app, tmp_path):
    runner = kiosk_app.test_cli_runner()
    result = runner.invoke(args=["kiosk", "set", "idle_seconds=30", "language=zh"])
    assert result.exit_code == 0, result.output
    assert re.search(r"idle_seconds\s+30\s+settings file", result.output)
    assert re.search(r"bars\s+3\s+default \(KIOSK_BARS\)", result.output)
    assert json.loads((tmp_path / "kiosk.json").read_text("utf-8"))["settings"] == {
        "idle_seconds": 30, "language": "zh_Hans_CN"}

    result = runner.invoke(args=["kiosk", "set", "bars=12"])
    assert result.exit_code == 1 and "bars: must be from 1 to 5" in result.output

    result = runner.invoke(args=["kiosk", "languages"])
    assert re.search(r"zh_Hans_CN\s+中文", result.output)

    result = runner.invoke(args=["kiosk", "reset"])
    assert result.exit_code == 0 and not (tmp_path / "kiosk.json").exists()


# --------------------------------------------------------------------------- admin form


def _submitted(html: str) -> dict:
    """What a browser submits for the form as rendered (unticked checkboxes are absent)."""
    from html.parser import HTMLParser

    form, state = {}, {}

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "input" and a.get("name"):
                if a.get("type") != "checkbox" or "checked" in a:
                    form[a["name"]] = a.get("value", "")
            elif tag == "select":
                state["select"] = a["name"]
            elif tag == "option" and "selected" in a:
                form[state["select"]] = a["value"]

    Parser().feed(html)
    return form


def test_settings_form_macro_round_trips_through_update_from_form(kiosk_app):
    from flask import render_template_string

    from webapp.current import kiosk_settings as store

    template = ('{% from "_kiosk_settings_form.html" import kiosk_settings_form %}'
                '{{ kiosk_settings_form(s.fields, s.load(), s.languages(), errors) }}')
    with kiosk_app.test_request_context():
        s = store()
        s.update({"idle_seconds": 25, "explain": False, "language": "zh_Hans_CN"})
        html = render_template_string(template, s=s, errors={})
        form = _submitted(html)
        assert form == {"idle_seconds": "25", "auto_capture_seconds": "0", "bars": "3",
                        "live": "on", "language": "zh_Hans_CN"}
        assert s.update_from_form(form) == s.load()  # nothing changes on a plain save
        form.update(bars="5", explain="on")
        assert s.update_from_form(form) == KioskSettings(idle_seconds=25, bars=5,
                                                         language="zh_Hans_CN")
        with pytest.raises(KioskSettingsError) as info:
            s.update_from_form({**form, "bars": "9"})
        html = render_template_string(template, s=s, errors=info.value.errors)
        # The teacher fixed Chinese for the pages: the form speaks it too.
        assert "必须在 1 到 5 之间" in html and "is-invalid" in html
