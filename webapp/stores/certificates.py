"""The classroom's certificates: a local certificate authority and the server certificate
it signs for this machine's addresses and names, kept in a folder (``MODEL_DIR/tls``).

Phones give a page the camera only in a secure context, and a page from another machine
is one only over HTTPS.  There is no public certificate for ``192.168.1.23``, so the
server makes its own, once::

    ca.crt      the local certificate authority (10 years); what a phone or a PC may
                install once to trust this server without a warning (/classroom/ca.crt)
    ca.key      its private key (mode 0600; it never leaves this folder)
    server.crt  the server's certificate, signed by the CA (397 days)
    server.key  its private key (mode 0600)

``ensure(folder, names)`` is called at every start: it keeps what is there when it still
fits, and otherwise makes a new **server** certificate (when the machine's addresses or
names changed, it is not signed by this CA, or it ends within 30 days) -- the CA stays,
so a phone that installed it keeps trusting the server.  A new CA is only made when there
is none, it ends within a year, or it may not vouch for one of the names.

The CA is **name-constrained**: it may only vouch for the private network ranges
(10/8, 172.16/12, 192.168/16, 100.64/10, link-local, loopback, fc00::/7), the
machine's other addresses at the time it was made, ``localhost`` and this machine's
host names.  A copy of its key could not impersonate a bank to the phones that trust it.
The constraint is not marked critical, so a client that does not know the extension
still accepts the certificate (every current browser and OpenSSL enforce it anyway).

ECDSA P-256 keys, SHA-256 signatures, subjectAltName and serverAuth: what Chromium,
Firefox, Safari (at most 825 days for a local CA's certificate) and Android require.
No Flask here.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webapp.durable import locked, write_bytes

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_SERVER_DAYS = 30  # a server certificate ending sooner is made again at start
RENEW_CA_DAYS = 365
ORGANISATION = "Offline Image Classifier"
# The networks a classroom's machines are on: the CA may vouch for any address in them,
# so a new address from DHCP needs a new server certificate, never a new CA.
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128",
))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Names:
    """What the server certificate names: IP addresses and DNS names, the address to
    show people first."""

    addresses: tuple[IPAddress, ...]
    hosts: tuple[str, ...]

    def general_names(self) -> list[x509.GeneralName]:
        return ([x509.IPAddress(a) for a in self.addresses]
                + [x509.DNSName(h) for h in self.hosts])


@dataclass(frozen=True)
class Files:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def key(self) -> Path:
        return self.folder / "server.key"


def ensure(folder: str | os.PathLike, names: Names,
           now: _dt.datetime | None = None) -> tuple[Files, list[str]]:
    """The certificates for ``names`` in ``folder``: kept when they still fit, else
    made (see the module's docstring); and what was made, in words.  Safe when several
    processes start at once."""
    files = Files(Path(folder))
    files.folder.mkdir(parents=True, exist_ok=True)
    now = now or _dt.datetime.now(_dt.UTC)
    made = []
    with locked(files.folder / ".lock"):
        ca = _read_cert(files.ca_cert)
        ca_key = _read_key(files.ca_key)
        if ca is None or ca_key is None or _ends_within(ca, now, RENEW_CA_DAYS) \
                or not permits(ca, names) or ca.public_key() != ca_key.public_key():
            ca, ca_key = _make_ca(names, now)
            write_bytes(files.ca_key, _key_pem(ca_key), mode=0o600)
            write_bytes(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
            made.append(f"made a new local certificate authority in {files.folder}")
        cert = _read_cert(files.cert)
        key = _read_key(files.key)
        if cert is None or key is None or cert.public_key() != key.public_key() \
                or not _signed_by(cert, ca) or _ends_within(cert, now, RENEW_SERVER_DAYS) \
                or set(names_in(cert)) != set(names.general_names()):
            cert, key = _make_server_cert(names, ca, ca_key, now)
            write_bytes(files.key, _key_pem(key), mode=0o600)
            write_bytes(files.cert, cert.public_bytes(serialization.Encoding.PEM))
            made.append("made a new server certificate for " + ", ".join(
                [str(a) for a in names.addresses] + list(names.hosts)))
    return files, made


def names_in(cert: x509.Certificate) -> list[x509.GeneralName]:
    """The IP addresses and DNS names a certificate is for, in its order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n for n in san if isinstance(n, x509.IPAddress | x509.DNSName)]


def read_names(path: str | os.PathLike) -> Names | None:
    """The names of the certificate in ``path`` (None when there is none)."""
    cert = _read_cert(Path(path))
    if cert is None:
        return None
    found = names_in(cert)
    return Names(tuple(n.value for n in found if isinstance(n, x509.IPAddress)),
                 tuple(n.value for n in found if isinstance(n, x509.DNSName)))


def permits(ca: x509.Certificate, names: Names) -> bool:
    """Whether ``ca``'s name constraints allow every one of ``names``."""
    try:
        constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return True
    permitted = constraints.permitted_subtrees or []
    networks = [p.value for p in permitted if isinstance(p, x509.IPAddress)]
    domains = [p.value.lower() for p in permitted if isinstance(p, x509.DNSName)]
    return (all(any(a in n for n in networks) for a in names.addresses)
            and all(any(h.lower() == d or h.lower().endswith("." + d) for d in domains)
                    for h in names.hosts))


# --------------------------------------------------------------------------- making


def _make_ca(names: Names, now: _dt.datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    host = names.hosts[0] if names.hosts else "localhost"
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{ORGANISATION} classroom CA ({host})"[:64]),
    ])
    networks = list(PRIVATE_NETWORKS)
    for address in names.addresses:
        if not any(address in n for n in networks):
            networks.append(ipaddress.ip_network(address))
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.IPAddress(n) for n in networks]
        + [x509.DNSName(h) for h in names.hosts], excluded_subtrees=None)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(constraints, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server_cert(names: Names, ca: x509.Certificate, ca_key, now: _dt.datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, ORGANISATION),
        ]))
        .issuer_name(ca.subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names.general_names()), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# --------------------------------------------------------------------------- files


def _read_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _read_key(path: Path):
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ends_within(cert: x509.Certificate, now: _dt.datetime, days: int) -> bool:
    return cert.not_valid_after_utc - now < _dt.timedelta(days=days)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
