"""Classroom network mode (``CLASSROOM=1``, or ``make classroom``): students' phones open
the kiosk over the school's network, with their cameras.

Browsers give a page the camera only in a secure context: ``http://127.0.0.1`` on the
machine itself, or HTTPS.  So in this mode the server

* listens on every network interface (``HOST`` 0.0.0.0 unless it is set, ``webapp.config``),
* serves HTTPS with a certificate of its own local certificate authority, made at the
  first start and made again when the machine's addresses change
  (``prepare``, called by gunicorn.conf.py and app.py before they listen;
  ``webapp.stores.certificates`` keeps the files in ``MODEL_DIR/tls``),
* and the kiosk and admin pages show the address to open as a QR code, with the line on
  accepting the certificate once (``invitation``; ``webapp.views.classroom``).

Plain HTTP on 127.0.0.1 stays the default.  Imported by the gunicorn master: no torch,
no Flask.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webapp.stores import certificates
    from webapp.stores.certificates import IPAddress, Names

# webapp.stores.certificates (and the cryptography package under it) is imported when a
# certificate is made or read, not by every worker at start: most servers never do.

log = logging.getLogger(__name__)

KIOSK_PATH = "/kiosk"
CA_PATH = "/classroom/ca.crt"
LOOPBACK_NAMES = ("localhost",)
# Interfaces whose addresses a phone on the classroom network cannot reach: they are in
# the certificate (harmless) but never the address shown, unless there is no other.
VIRTUAL_PREFIXES = ("lo", "docker", "br-", "veth", "virbr", "vmnet", "vboxnet", "tun", "tap",
                    "wg", "zt", "tailscale", "utun", "podman", "cni", "flannel", "kube")


def tls_folder(config) -> Path:
    return Path(config["MODEL_DIR"]) / "tls"


def prepare(config) -> tuple[certificates.Files, list[tuple[int, str]]]:
    """Before the server listens: the certificates for this machine's current addresses
    (made or renewed), and what to log about them: (logging level, message) pairs, for
    the server's own log (gunicorn's master has no other)."""
    from webapp.stores import certificates  # cryptography: only for certificates

    names = machine_names(config["HOST"])
    files, made = certificates.ensure(tls_folder(config), names)
    notes = [(logging.INFO, message) for message in made]
    shown = [a for a in names.addresses if not a.is_loopback]
    if shown:
        base = f"https://{_url_host(shown[0])}:{config['PORT']}"
        notes.append((logging.INFO, f"classroom mode: phones open {base}{KIOSK_PATH} (the "
                      f"kiosk shows it as a QR code); the certificate authority to install "
                      f"once: {base}{CA_PATH}"))
    else:
        notes.append((logging.WARNING, "classroom mode: this machine has no network address "
                      "yet; connect it to the classroom network and start the server again"))
    if config["HOST"] in ("127.0.0.1", "localhost", "::1"):
        notes.append((logging.WARNING, f"classroom mode with HOST={config['HOST']}: only this "
                      "machine can reach the server (leave HOST unset to listen on the "
                      "network)"))
    return files, notes


# --------------------------------------------------------------------------- addresses


def machine_names(host: str = "0.0.0.0") -> Names:
    """What the server certificate names: the machine's addresses (the one to show
    people first), loopback, ``localhost`` and the host names."""
    from webapp.stores.certificates import Names  # cryptography: only for certificates

    addresses = _addresses_to_show(host)
    addresses += [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    hosts = []
    name = socket.gethostname().strip().lower()
    if _valid_host(name):
        hosts.append(name)
        if "." not in name:
            hosts.append(f"{name}.local")  # mDNS (Avahi, Bonjour)
    with contextlib.suppress(OSError):
        fqdn = socket.getfqdn().strip().lower()
        if _valid_host(fqdn) and "." in fqdn and fqdn not in hosts:
            hosts.append(fqdn)
    hosts += [h for h in LOOPBACK_NAMES if h not in hosts]
    return Names(tuple(dict.fromkeys(addresses)), tuple(hosts))


def _addresses_to_show(host: str) -> list[IPAddress]:
    """The machine's network addresses, best first: the one with the default route,
    then real interfaces before virtual ones, IPv4 before IPv6.  A HOST that names one
    address: that one alone."""
    with contextlib.suppress(ValueError):
        fixed = ipaddress.ip_address(host)
        if not fixed.is_unspecified:
            return [] if fixed.is_loopback else [fixed]
    found: list[tuple[tuple, IPAddress]] = []
    default = _default_route_address()
    for n, (interface, address) in enumerate(interface_addresses()):
        virtual = interface.startswith(VIRTUAL_PREFIXES)
        rank = (address != default, virtual, address.version, n)
        found.append((rank, address))
    return [address for _rank, address in sorted(found)]


def interface_addresses() -> list[tuple[str, IPAddress]]:
    """(interface, address) of every interface that is up, without loopback and
    IPv6 link-local addresses (they need a zone a URL cannot carry)."""
    import psutil

    stats = psutil.net_if_stats()
    found = []
    for interface, entries in psutil.net_if_addrs().items():
        if interface in stats and not stats[interface].isup:
            continue
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                address = ipaddress.ip_address(entry.address.split("%")[0])
            except ValueError:
                continue
            if address.is_loopback or (address.version == 6 and address.is_link_local):
                continue
            found.append((interface, address))
    return found


def _default_route_address() -> IPAddress | None:
    """The address this machine would send from to the wider network (a UDP socket's
    connect sends nothing); None on a network without a default route (many classroom
    hotspots)."""
    with contextlib.suppress(OSError, ValueError), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))
        return ipaddress.ip_address(probe.getsockname()[0])
    return None


def _valid_host(name: str) -> bool:
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        and not label.startswith("-") for label in labels)


def _url_host(address: IPAddress | str) -> str:
    text = str(address)
    return f"[{text}]" if ":" in text else text


# --------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class Invitation:
    """What a page shows so others can join: the address, its QR code, the CA."""

    url: str  # the kiosk on this machine's network address ("" when it has none)
    ca_url: str
    qr_svg: str  # a data: URI of the QR code's SVG ("" without an address)


def invitation(config, request_host: str) -> Invitation | None:
    """The address to show on a page asked for at ``request_host`` (the Host header):
    that host itself when it is one of the certificate's network addresses or names (it
    evidently works), else the certificate's first network address on the request's
    port.  None outside classroom mode or before the certificates exist."""
    if not config.get("CLASSROOM"):
        return None
    names = _certificate_names(str(tls_folder(config) / "server.crt"))
    if names is None:
        return None
    host, port = _split_host(request_host, config["PORT"])
    known = {str(a) for a in names.addresses if not a.is_loopback} | {
        h for h in names.hosts if h not in LOOPBACK_NAMES}
    if host not in known:
        shown = [a for a in names.addresses if not a.is_loopback]
        host = _url_host(shown[0]) if shown else ""
    elif ":" in host:
        host = _url_host(host)
    if not host:
        return Invitation("", "", "")
    base = f"https://{host}:{port}"
    url = base + KIOSK_PATH
    return Invitation(url, base + CA_PATH, qr_svg(url))


@functools.lru_cache(maxsize=8)
def qr_svg(text: str) -> str:
    """``text`` as a QR code (segno), an SVG data: URI for an ``<img>``."""
    import segno

    return segno.make(text, error="m").svg_data_uri(scale=4, border=2)


def _certificate_names(path: str) -> Names | None:
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _names_at(path, stamp)


@functools.lru_cache(maxsize=4)
def _names_at(path: str, _stamp: int) -> Names | None:
    from webapp.stores import certificates  # cryptography: only for certificates

    return certificates.read_names(path)


def _split_host(request_host: str, default_port) -> tuple[str, str]:
    """("192.168.1.5", "5000") from "192.168.1.5:5000", "[fd00::2]:5000", "pc.local"."""
    value = request_host.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    return host, port if port.isdigit() else str(default_port)
