"""The Host header names a server may answer to: its loopback names, or, bound to a public address, also the
machine's own names and addresses, plus names the user adds (`--allowed-host`).

The Host check is what stops DNS rebinding (a page on evil.example whose name later resolves to this machine):
such a request carries `Host: evil.example`, which is never one of these.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]


def as_host(address: str) -> str:
    """An address or name as it appears in a Host header: IPv6 in brackets, short form, no zone."""
    address = address.strip().lower().split("%", 1)[0]
    if address.startswith("["):
        address = address[1:].split("]", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.rstrip(".")
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _resolved(name: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return set()


def _routed() -> set[str]:
    """The addresses this machine sends from by default (a UDP connect sends no packet)."""
    found = set()
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((target, 9))
                found.add(sock.getsockname()[0])
        except OSError:
            pass
    return found


def _interfaces() -> set[str]:
    """Every interface's addresses, where the system tells them without extra packages (Linux)."""
    found: set[str] = set()
    if not sys.platform.startswith("linux"):
        return found
    try:
        import fcntl

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _, name in socket.if_nameindex():
                try:
                    raw = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
                    found.add(socket.inet_ntoa(raw[20:24]))
                except OSError:  # no IPv4 address on this one
                    pass
    except (ImportError, OSError):
        pass
    try:
        with open("/proc/net/if_inet6") as fh:
            for line in fh:
                hexa = line.split()[0]
                found.add(str(ipaddress.IPv6Address(bytes.fromhex(hexa))))
    except (OSError, ValueError, IndexError):
        pass
    return found


def machine_hosts(bind: str) -> list[str]:
    """Host header names for a server bound to `bind`: the loopback names and `bind` itself; for any
    non-loopback bind also the host name, the fully qualified name, and every address of the machine."""
    names = {as_host(n) for n in LOOPBACK_NAMES}
    if bind not in ("", "0.0.0.0", "::"):
        names.add(as_host(bind))
    if is_loopback(bind):
        return sorted(names)
    hostname = socket.gethostname()
    try:
        fqdn = socket.getfqdn()
    except OSError:
        fqdn = hostname
    addresses = _routed() | _interfaces()
    for name in {hostname, fqdn, os.environ.get("HOSTNAME", "")} - {""}:
        names.add(as_host(name))
        addresses |= _resolved(name)
    names |= {as_host(a) for a in addresses}
    return sorted(names)
