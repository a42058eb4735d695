"""Classroom network mode through the real app (webapp/classroom.py, the pages' part):
the setting, which address the kiosk and admin pages show as a QR code and never one a
request made up, the CA download, nothing of it outside classroom mode.  The real server
at a real network address, with Chromium and the QR code decoded:
tests/views/test_classroom.py."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

import pytest

from webapp import classroom, create_app
from webapp.config import Config
from webapp.stores import certificates
from webapp.stores.certificates import Names


def make_app(tmp_path, *addresses, **config):
    """A classroom app whose certificates name ``addresses`` (made as the server does
    before it listens)."""
    names = Names(tuple(ipaddress.ip_address(a) for a in (*addresses, "127.0.0.1", "::1")),
                  ("classroom-pc", "classroom-pc.local", "localhost"))
    certificates.ensure(tmp_path / "store" / "tls", names)
    return create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "store"),
                       "CLASSROOM": True, **config})


def shown(page: str) -> str:
    """The address in the page's panel, and check its QR code says the same."""
    url = re.search(r'id="classroom-url">([^<]+)<', page).group(1)
    alt = re.search(r'id="classroom-qr"[^>]*alt="QR code of ([^"]+)"', page, re.S)
    assert alt and alt.group(1) == url
    assert re.search(r'src="data:image/svg\+xml[^"]+"', page)
    return url


def test_classroom_mode_listens_on_the_network_unless_host_is_set():
    assert Config.from_env({})["HOST"] == "127.0.0.1"
    assert Config.from_env({"CLASSROOM": "1"})["HOST"] == "0.0.0.0"
    assert Config.from_env({"CLASSROOM": "1", "HOST": "192.168.1.23"})["HOST"] == "192.168.1.23"


@pytest.mark.parametrize("base_url, expected", [
    # Opened on the server machine: the first network address of the certificate.
    ("https://127.0.0.1:5000", "https://192.168.1.23:5000/kiosk"),
    ("https://localhost:5000", "https://192.168.1.23:5000/kiosk"),
    # Opened at one of its addresses or names: that one (it evidently works), its port.
    ("https://10.0.7.4:5443", "https://10.0.7.4:5443/kiosk"),
    ("https://classroom-pc.local:5000", "https://classroom-pc.local:5000/kiosk"),
    ("https://[fd00::23]:5000", "https://[fd00::23]:5000/kiosk"),
    # A name the certificate does not know (a made-up Host header): never shown.
    ("https://evil.example:5000", "https://192.168.1.23:5000/kiosk"),
])
def test_the_pages_show_an_address_of_the_certificate(tmp_path, base_url, expected):
    app = make_app(tmp_path, "192.168.1.23", "10.0.7.4", "fd00::23", ADMIN_TOKEN="")
    client = app.test_client()
    kiosk = client.get("/kiosk", base_url=base_url).text
    assert shown(kiosk) == expected
    assert "choose Advanced, then Proceed" in kiosk
    assert f"install the certificate authority from {expected.removesuffix('/kiosk')}" \
           f"/classroom/ca.crt" in kiosk
    assert "<a " not in kiosk.split('id="classroom"')[1].split("</aside>")[0]  # no links


def test_the_qr_code_says_the_address(tmp_path):
    app = make_app(tmp_path, "192.168.1.23")
    page = app.test_client().get("/kiosk", base_url="https://127.0.0.1:5000").text
    svg = unquote(re.search(r'id="classroom-qr" src="data:image/svg\+xml[^,]*,([^"]+)"',
                            page).group(1))
    assert svg.startswith("<svg") or svg.startswith("<?xml")
    assert classroom.qr_svg("https://192.168.1.23:5000/kiosk") in page


def test_the_ca_certificate_downloads_in_classroom_mode_only(tmp_path):
    app = make_app(tmp_path, "192.168.1.23")
    answer = app.test_client().get("/classroom/ca.crt")
    assert answer.status_code == 200
    assert answer.mimetype == "application/x-x509-ca-cert"
    assert answer.data == (tmp_path / "store" / "tls" / "ca.crt").read_bytes()
    plain = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "store")})
    assert plain.test_client().get("/classroom/ca.crt").status_code == 404
    kiosk = plain.test_client().get("/kiosk").text
    assert 'id="classroom"' not in kiosk and "classroom.css" not in kiosk


def test_a_machine_without_a_network_address_says_so(tmp_path):
    page = make_app(tmp_path).test_client().get("/kiosk").text
    assert 'id="classroom-url"' not in page
    assert "no network address yet" in page


def test_the_addresses_shown_first_are_the_ones_phones_can_reach():
    names = classroom.machine_names("0.0.0.0")
    assert {"127.0.0.1", "::1"} <= {str(a) for a in names.addresses}
    assert "localhost" in names.hosts
    network = [a for a in names.addresses if not a.is_loopback]
    assert network == [a for a in network if not a.is_link_local or a.version == 4]
    assert names.addresses[-2:] == (ipaddress.ip_address("127.0.0.1"),
                                    ipaddress.ip_address("::1"))
    only = classroom.machine_names("192.168.1.23")  # HOST names one address: that one
    assert [str(a) for a in only.addresses if not a.is_loopback] == ["192.168.1.23"]
