"""
A cap on the connections one client address may hold open on a port.

Without it, one address could take every file descriptor the daemon has
(700 slow connections once made TCP logins and ``/health`` fail under a limit
of 600). Each listener counts its own connections per address: an IPv4
address, or the /64 network of an IPv6 one (what one IPv6 host is usually
given). A connection over the cap is told why, in the port's own protocol,
and closed before any of its input is read.

A trusted proxy's own connections (``--trusted-proxies``) are not counted:
they carry many clients. Behind a PROXY-protocol port the cap counts the
clients the headers name (:mod:`wecompany.proxyprotocol` builds the port's
protocol for that address); behind an X-Forwarded-For proxy the proxy keeps
the cap per client.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory


def address_key(address) -> str:
    """What connections are counted by: the IPv4 address, or the IPv6 /64."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return "local"  # UNIX sockets and the like: one local peer
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AddressCounter:
    """
    Open connections per address key, at most ``limit`` each; memory grows
    only with live connections. ``exempt`` (a
    :class:`~wecompany.proxies.TrustedProxies`) are not counted.
    """

    log = Logger()

    def __init__(self, limit: int, exempt=None) -> None:
        self.limit = limit
        self.exempt = exempt
        self._open: dict[str, int] = {}
        self.refused = 0

    def key_for(self, address) -> str | None:
        """What a connection from ``address`` is counted by, or None if it is not counted (a trusted proxy)."""
        if self.exempt and self.exempt.trusts(address):
            return None
        return address_key(address)

    def acquire(self, key: str | None) -> bool:
        if key is None:
            return True
        count = self._open.get(key, 0)
        if count >= self.limit:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                self.log.warn("refusing connections from {key}: {limit} are open ({refused} refused so far)",
                              key=key, limit=self.limit, refused=self.refused)
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: str | None) -> None:
        if key is None:
            return
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def open_from(self, key: str) -> int:
        return self._open.get(key, 0)


class Refusal(Protocol):
    """Writes ``message`` to a connection over the cap and closes it; reads nothing."""

    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(self.message)
        self.transport.loseConnection()


class _Counted(ProtocolWrapper):
    address: str | None = None


class CappedFactory(WrappingFactory):
    """
    Wraps a listener's factory to count its connections per address.

    A wrapper, rather than a count kept by the protocol, because the HTTP
    site's connections can change protocol half way (a WebSocket upgrade
    hands the socket to another protocol, whose close the HTTP channel never
    hears of); the wrapper sees every connection to its end.
    """

    protocol = _Counted
    noisy = False

    def __init__(self, wrapped, counter: AddressCounter, refusal: bytes) -> None:
        super().__init__(wrapped)
        self.counter = counter
        self.refusal = refusal

    def buildProtocol(self, addr):
        key = self.counter.key_for(addr)
        if not self.counter.acquire(key):
            return Refusal(self.refusal)
        wrapper = super().buildProtocol(addr)
        if wrapper is None:
            self.counter.release(key)
            return None
        wrapper.address = key
        return wrapper

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        self.counter.release(p.address)
