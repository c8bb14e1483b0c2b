"""
Who the client of a connection or request is, behind reverse proxies.

The one place that answers it. Without ``--trusted-proxies`` the client is
the TCP peer. With it, a peer inside one of those networks is a proxy that
speaks for someone else:

- on the HTTP port, its ``X-Forwarded-For`` is read from the right, past
  every address that is itself a trusted proxy, and the first address that
  is not names the client (nginx's ``real_ip_recursive``; Synapse's
  ``x_forwarded``). A header with a malformed entry on that walk is ignored
  as a whole: the peer's address is kept, never a half-read guess.
- on a port given as ``haproxy:...``, its PROXY protocol header names the
  client (:mod:`wecompany.proxyprotocol`).

From any other peer both are ignored: what a client says about itself
changes nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs
from twisted.internet.address import IPv4Address, IPv6Address

#: More entries than this in X-Forwarded-For are not walked (the peer is kept).
MAX_FORWARDED = 64


def parse_ip(text: str):
    """
    ``text`` as an :mod:`ipaddress` address, or None if it is not one.

    Accepts what proxies write in X-Forwarded-For: ``192.0.2.1``,
    ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:443`` and
    ``192.0.2.1:443``. An IPv4-mapped IPv6 address is its IPv4 address, and
    an IPv6 zone is dropped.
    """
    text = text.strip()
    if text.startswith("["):
        inside, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
        text = inside
    elif text.count(":") == 1:  # IPv4 with a port
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_of(address) -> str | None:
    """The host of an ``IAddress`` (IPv4Address, IPv6Address), or None for UNIX sockets and the like."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


def address_for(host: str, port: int = 0):
    """An ``IAddress`` for ``host`` (an IP address as text): IPv4Address or IPv6Address."""
    ip = ipaddress.ip_address(host)
    return IPv6Address("TCP", host, port) if ip.version == 6 else IPv4Address("TCP", host, port)


@attrs.frozen
class TrustedProxies:
    """
    The networks of ``--trusted-proxies``: an empty tuple trusts no one, which
    is the default (:data:`NO_PROXIES`).
    """

    networks: tuple = ()

    @classmethod
    def of(cls, networks) -> "TrustedProxies":
        """From Config's ``trusted_proxies`` (a tuple of networks, or None)."""
        return cls(tuple(networks or ()))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address) -> bool:
        """Whether ``address`` (an ``IAddress``, a host string or an ipaddress address) is a trusted proxy."""
        if not self.networks:
            return False
        if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            ip = address
        else:
            host = address if isinstance(address, str) else host_of(address)
            ip = parse_ip(host) if host is not None else None
        if ip is None:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)

    def forwarded_client(self, peer: str, forwarded_for: Iterable[str | bytes]) -> str:
        """
        The client's address (text) of a request from ``peer`` (the TCP
        peer's host, after any PROXY header) carrying the ``X-Forwarded-For``
        header values ``forwarded_for`` (each comma-separated, in the order
        received). ``peer`` itself unless it is a trusted proxy and the header
        is well formed; if every address in the header is a trusted proxy, the
        leftmost one.
        """
        if not self.trusts(peer):
            return peer
        entries: list[str] = []
        for value in forwarded_for:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            entries.extend(value.split(","))
            if len(entries) > MAX_FORWARDED:
                return peer
        client = None
        for entry in reversed(entries):
            if not entry.strip():
                continue  # "a, , b": an empty element, as RFC 9110 lists allow
            ip = parse_ip(entry)
            if ip is None:
                return peer  # a malformed value: keep the peer
            client = ip
            if not self.trusts(ip):
                break
        return str(client) if client is not None else peer


NO_PROXIES = TrustedProxies()
