"""The classroom's certificates (webapp/stores/certificates.py): a client that trusts the
local CA connects to every name of the machine without a warning (real TLS handshakes,
OpenSSL's verification), the CA outlives address changes, may not vouch for anything
else, and the private keys are nobody else's."""

from __future__ import annotations

import datetime as _dt
import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webapp.stores import certificates
from webapp.stores.certificates import Names


def names(*addresses, hosts=("classroom-pc", "classroom-pc.local", "localhost")) -> Names:
    return Names(tuple(ipaddress.ip_address(a) for a in (*addresses, "127.0.0.1", "::1")),
                 tuple(hosts))


def handshake(files, server_name: str, cert=None, key=None) -> str:
    """A real TLS connection over loopback, the client trusting only ``ca.crt`` and
    asking for ``server_name`` (an address or a host name); "" when it verifies, else
    OpenSSL's reason."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert or files.cert, key or files.key)
    client_context = ssl.create_default_context(cafile=str(files.ca_cert))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port)) as raw, \
                    client_context.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.send(b"x")
            return ""
        except ssl.SSLCertVerificationError as exc:
            return exc.verify_message
        finally:
            thread.join(5)


def test_a_client_that_trusts_the_ca_reaches_every_name_of_the_machine(tmp_path):
    files, made = certificates.ensure(tmp_path / "tls", names("192.168.1.23", "fd00::23"))
    assert len(made) == 2  # the CA and the server's certificate
    for name in ("192.168.1.23", "fd00::23", "127.0.0.1", "classroom-pc", "classroom-pc.local",
                 "localhost"):
        assert handshake(files, name) == "", name
    assert handshake(files, "192.168.1.99")  # an address it is not for
    for key in (files.key, files.ca_key):  # the private keys are the server user's alone
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_start_with_the_same_addresses_keeps_the_certificates(tmp_path):
    first, _ = certificates.ensure(tmp_path / "tls", names("192.168.1.23"))
    before = {p: p.read_bytes() for p in (first.cert, first.key, first.ca_cert, first.ca_key)}
    again, made = certificates.ensure(tmp_path / "tls", names("192.168.1.23"))
    assert made == []
    assert {p: p.read_bytes() for p in before} == before


def test_a_new_address_gets_a_new_server_certificate_from_the_same_ca(tmp_path):
    """A phone that installed the CA keeps trusting the server after DHCP gives the
    machine another address."""
    files, _ = certificates.ensure(tmp_path / "tls", names("192.168.1.23"))
    ca_before = files.ca_cert.read_bytes()
    files, made = certificates.ensure(tmp_path / "tls", names("10.0.7.4"))
    assert made == ["made a new server certificate for 10.0.7.4, 127.0.0.1, ::1, "
                    "classroom-pc, classroom-pc.local, localhost"]
    assert files.ca_cert.read_bytes() == ca_before
    assert handshake(files, "10.0.7.4") == ""
    assert handshake(files, "192.168.1.23")  # the old address is no longer in it


def test_the_ca_vouches_for_nothing_but_this_machine_and_the_private_networks(tmp_path):
    """A copy of the CA's key cannot impersonate another site to the phones that
    installed the CA: a certificate it signs for any other name fails verification."""
    files, _ = certificates.ensure(tmp_path / "tls", names("192.0.2.2"))
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    for rogue in (x509.DNSName("bank.example"), x509.IPAddress(ipaddress.ip_address("8.8.8.8"))):
        key = ec.generate_private_key(ec.SECP256R1())
        now = _dt.datetime.now(_dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - _dt.timedelta(days=1))
                .not_valid_after(now + _dt.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([rogue]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path, key_path = tmp_path / "rogue.crt", tmp_path / "rogue.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        reason = handshake(files, str(rogue.value), cert_path, key_path)
        assert "name constraint" in reason or "permitted" in reason, reason
    # ... while an address of a private network it was not made for is fine:
    files, made = certificates.ensure(tmp_path / "tls", names("172.20.1.5"))
    assert len(made) == 1 and handshake(files, "172.20.1.5") == ""


def test_an_address_the_ca_may_not_vouch_for_gets_a_new_ca(tmp_path):
    files, _ = certificates.ensure(tmp_path / "tls", names("192.0.2.2"))
    ca_before = files.ca_cert.read_bytes()
    files, made = certificates.ensure(tmp_path / "tls", names("198.51.100.7"))
    assert len(made) == 2 and files.ca_cert.read_bytes() != ca_before
    assert handshake(files, "198.51.100.7") == ""


def test_a_certificate_near_its_end_is_made_again(tmp_path):
    files, _ = certificates.ensure(tmp_path / "tls", names("192.168.1.23"))
    soon = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=certificates.SERVER_DAYS - 10)
    _, made = certificates.ensure(tmp_path / "tls", names("192.168.1.23"), now=soon)
    assert made == ["made a new server certificate for 192.168.1.23, 127.0.0.1, ::1, "
                    "classroom-pc, classroom-pc.local, localhost"]


@pytest.mark.parametrize("damaged", ["server.crt", "server.key", "ca.key"])
def test_damaged_files_are_made_again(tmp_path, damaged):
    files, _ = certificates.ensure(tmp_path / "tls", names("192.168.1.23"))
    (tmp_path / "tls" / damaged).write_bytes(b"-----BEGIN garbage")
    files, made = certificates.ensure(tmp_path / "tls", names("192.168.1.23"))
    assert made and handshake(files, "192.168.1.23") == ""
