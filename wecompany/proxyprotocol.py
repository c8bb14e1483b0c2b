"""
The PROXY protocol (HAProxy's, versions 1 and 2), accepted from trusted
proxies only.

Twisted's ``haproxy:`` endpoint wrapper takes a PROXY header from any peer,
and requires one from every peer. With ``--trusted-proxies``, a port given as
``haproxy:<endpoint>`` is served by :class:`ProxyHeaderFactory` instead:

- a peer in a trusted network must start with a PROXY header (v1 or v2),
  within :data:`HEADER_TIMEOUT` seconds; the connection's client address
  (``getPeer()``, and the address the port's own factory is built for, so
  its per-address connection cap counts clients, not the proxy) is the one
  the header names. A v2 ``LOCAL`` header (a health check) or a v1
  ``UNKNOWN`` one keeps the proxy's own address. A header that is malformed,
  too long, or late closes the connection.
- any other peer is a client like on a plain port: its first bytes are the
  port's protocol. One that starts with a PROXY signature is refused with a
  close (as HAProxy's ``accept-proxy`` refuses what it cannot trust): it is a
  proxy missing from ``--trusted-proxies``, or a client claiming to be one,
  and neither should be served as if it were the address it names.

Twisted's parsers are private (``twisted.protocols.haproxy`` exports only
``proxyEndpoint``), so the header is parsed here, bounded: a v1 line is at
most 107 bytes, a v2 header at most :data:`MAX_V2_LENGTH` bytes after its
16-byte prefix.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, providedBy

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 header the specification allows, CRLF included.
V1_MAX = 107
#: The longest v2 address block and TLVs accepted (HAProxy's own are far shorter).
MAX_V2_LENGTH = 4096
#: Seconds a trusted peer has to send its whole PROXY header.
HEADER_TIMEOUT = 5.0

_V2_PREFIX = 16
_ADDRESS_LENGTHS = {0x1: 12, 0x2: 36, 0x3: 216}  # AF_INET, AF_INET6, AF_UNIX


class InvalidProxyHeader(Exception):
    """A PROXY header that cannot be accepted; the message says why."""


@attrs.frozen
class ProxyInfo:
    """What a PROXY header says: the client's and the proxy's addresses, or None to keep the connection's own."""

    source: object = None
    destination: object = None


def starts_with_signature(data: bytes) -> str | None:
    """
    ``"v1"`` or ``"v2"`` when ``data`` starts with that version's signature,
    ``"partial"`` while ``data`` could still become one, else None.
    """
    for version, signature in (("v1", V1_SIGNATURE), ("v2", V2_SIGNATURE)):
        if data.startswith(signature):
            return version
        if signature.startswith(data):
            return "partial"
    return None


def parse_header(data: bytes) -> tuple[ProxyInfo, int] | None:
    """
    The PROXY header at the start of ``data``: ``(info, bytes it took)``, or
    None when more bytes are needed. Raises :class:`InvalidProxyHeader` for
    anything else (not a PROXY header, malformed, over the bounds).
    """
    kind = starts_with_signature(data)
    if kind == "partial":
        return None
    if kind == "v1":
        return _parse_v1(data)
    if kind == "v2":
        return _parse_v2(data)
    raise InvalidProxyHeader("no PROXY protocol signature")


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise InvalidProxyHeader(f"v1 header longer than {V1_MAX} bytes")
        return None
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:  # the proxy cannot tell: the rest of the line is ignored
        return ProxyInfo(), end + 2
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise InvalidProxyHeader("v1 header is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    version = 4 if fields[1] == b"TCP4" else 6
    source = _v1_address(version, fields[2], fields[4])
    destination = _v1_address(version, fields[3], fields[5])
    return ProxyInfo(source, destination), end + 2


def _v1_address(version: int, host: bytes, port: bytes):
    try:
        ip = ipaddress.ip_address(host.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidProxyHeader(f"v1 header: {host[:64]!r} is not an address") from None
    if ip.version != version:
        raise InvalidProxyHeader(f"v1 header: {ip} is not an IPv{version} address")
    # Decimal, no sign, no leading zero (the specification's form).
    if not (port.isdigit() and len(port) <= 5 and (port == b"0" or not port.startswith(b"0"))) \
            or int(port) > 65535:
        raise InvalidProxyHeader(f"v1 header: {port[:8]!r} is not a port")
    kind = IPv4Address if version == 4 else IPv6Address
    return kind("TCP", str(ip), int(port))


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | None:
    if len(data) < _V2_PREFIX:
        return None
    version_command, family_protocol, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2:
        raise InvalidProxyHeader(f"v2 header: version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0x0, 0x1):
        raise InvalidProxyHeader(f"v2 header: command {command}")
    if length > MAX_V2_LENGTH:
        raise InvalidProxyHeader(f"v2 header: {length} bytes of addresses and TLVs, over {MAX_V2_LENGTH}")
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family not in (0x0, *_ADDRESS_LENGTHS) or protocol not in (0x0, 0x1, 0x2):
        raise InvalidProxyHeader(f"v2 header: family and protocol {family_protocol:#04x}")
    if length < _ADDRESS_LENGTHS.get(family, 0):
        raise InvalidProxyHeader(f"v2 header: {length} bytes, too short for its addresses")
    total = _V2_PREFIX + length
    if len(data) < total:
        return None
    if command == 0x0 or protocol != 0x1 or family not in (0x1, 0x2):
        # LOCAL (the proxy's own health check), UNSPEC, UNIX or datagram
        # sources: the connection's own addresses stand.
        return ProxyInfo(), total
    block = data[_V2_PREFIX:total]
    if family == 0x1:
        src, dst, sport, dport = struct.unpack("!4s4sHH", block[:12])
        kind = IPv4Address
        source, destination = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
    else:
        src, dst, sport, dport = struct.unpack("!16s16sHH", block[:36])
        kind = IPv6Address
        source, destination = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
    return ProxyInfo(kind("TCP", str(source), sport), kind("TCP", str(destination), dport)), total


class ProxyHeaderProtocol(ProtocolWrapper):
    """
    One connection of a :class:`ProxyHeaderFactory` port. From a trusted peer
    the port's own protocol is built once the header is read, for the
    address it names; from any other peer at once, for the peer's address.
    """

    _HEADER, _SNIFFING, _PASSING = "header", "sniffing", "passing"

    def __init__(self, factory: "ProxyHeaderFactory", addr, trusted: bool) -> None:
        super().__init__(factory, None)
        self.peer_address = addr
        self.trusted = trusted
        self.info: ProxyInfo | None = None
        self._state = self._HEADER if trusted else self._SNIFFING
        self._buffer = b""
        self._timer = None

    def logPrefix(self) -> str:
        inner = self.wrappedProtocol
        name = inner.logPrefix() if hasattr(inner, "logPrefix") else type(self.factory.wrappedFactory).__name__
        return f"{name} (PROXY)"

    def makeConnection(self, transport) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self.trusted:
            self._timer = self.factory.clock.callLater(self.factory.timeout, self._too_late)
        else:
            self._start_wrapped(self.peer_address)

    def _start_wrapped(self, addr) -> bool:
        protocol = self.factory.wrappedFactory.buildProtocol(addr)
        if protocol is None:
            self.loseConnection()
            return False
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        return True

    def dataReceived(self, data: bytes) -> None:
        if self._state == self._PASSING:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.disconnecting:
            return
        self._buffer += data
        if self._state == self._HEADER:
            self._read_header()
        else:
            self._sniff()

    def _read_header(self) -> None:
        try:
            parsed = parse_header(self._buffer)
        except InvalidProxyHeader as error:
            self.factory.refuse(f"invalid PROXY header from trusted peer {_host(self.peer_address)}: {error}")
            self._close()
            return
        if parsed is None:
            return
        self.info, used = parsed
        self._cancel_timer()
        rest, self._buffer = self._buffer[used:], b""
        self._state = self._PASSING
        if self._start_wrapped(self.getPeer()) and rest and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def _sniff(self) -> None:
        kind = starts_with_signature(self._buffer)
        if kind == "partial":
            return  # at most 11 bytes held; the port's own timeouts run meanwhile
        if kind is not None:
            self.factory.refuse(f"PROXY header from {_host(self.peer_address)}, which is not in --trusted-proxies: "
                                "connection closed")
            self._close()
            return
        data, self._buffer = self._buffer, b""
        self._state = self._PASSING
        self.wrappedProtocol.dataReceived(data)

    def _too_late(self) -> None:
        self._timer = None
        self.factory.refuse(f"no PROXY header from trusted peer {_host(self.peer_address)} "
                            f"within {self.factory.timeout:g} s")
        self._close()

    def _close(self) -> None:
        self._buffer = b""
        self.loseConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def getPeer(self):
        if self.info is not None and self.info.source is not None:
            return self.info.source
        return self.transport.getPeer()

    def getHost(self):
        if self.info is not None and self.info.destination is not None:
            return self.info.destination
        return self.transport.getHost()

    def connectionLost(self, reason) -> None:
        self._cancel_timer()
        self.factory.unregisterProtocol(self)
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
            self.wrappedProtocol = None


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps a port's factory so that peers in ``trusted`` (a
    :class:`~wecompany.proxies.TrustedProxies`) speak the PROXY protocol
    first and everyone else is served directly.

    :param clock: ``IReactorTime`` for the header timeout.
    :param timeout: seconds a trusted peer has for its header.
    """

    protocol = ProxyHeaderProtocol
    noisy = False
    log = Logger()

    def __init__(self, wrappedFactory, trusted, clock, timeout: float = HEADER_TIMEOUT) -> None:
        super().__init__(wrappedFactory)
        self.trusted = trusted
        self.clock = clock
        self.timeout = timeout
        self.refused = 0

    def buildProtocol(self, addr):
        return self.protocol(self, addr, self.trusted.trusts(addr))

    def refuse(self, why: str) -> None:
        """Count a refused connection; log the first and every thousandth (clients choose how many)."""
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            self.log.warn("{why} ({refused} refused so far)", why=why, refused=self.refused)


def _host(address) -> str:
    return str(getattr(address, "host", address))


def proxy_protocol_port(description: str) -> str | None:
    """The endpoint inside a ``haproxy:`` description (``haproxy:tcp:8888`` -> ``tcp:8888``), else None."""
    prefix = "haproxy:"
    return description[len(prefix):] if description.startswith(prefix) else None
