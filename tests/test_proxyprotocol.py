"""The PROXY protocol, v1 and v2, from trusted peers only."""

from __future__ import annotations

import socket
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain
from wecompany.config import parse_networks
from wecompany.connections import AddressCounter, CappedFactory
from wecompany.proxies import TrustedProxies
from wecompany.proxyprotocol import (
    HEADER_TIMEOUT, MAX_V2_LENGTH, V1_MAX, V2_SIGNATURE, InvalidProxyHeader, ProxyHeaderFactory, ProxyInfo,
    parse_header, proxy_protocol_port,
)
from wecompany.tcp import codec
from wecompany.tcp.protocol import WeCompanyFactory

PROXY = IPv4Address("TCP", "10.0.0.5", 41000)
STRANGER = IPv4Address("TCP", "203.0.113.50", 41000)
V1 = b"PROXY TCP4 198.51.100.7 10.0.0.11 51234 8888\r\n"


def v2(command=0x1, family=0x11, block=None, tlvs=b"") -> bytes:
    if block is None:
        block = socket.inet_aton("198.51.100.7") + socket.inet_aton("10.0.0.11") + struct.pack("!HH", 51234, 8888)
    body = block + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


class ParserTests(SynchronousTestCase):
    def test_v1(self):
        info, used = parse_header(V1 + b"rest")
        self.assertEqual(info, ProxyInfo(IPv4Address("TCP", "198.51.100.7", 51234),
                                         IPv4Address("TCP", "10.0.0.11", 8888)))
        self.assertEqual(used, len(V1))
        info, _ = parse_header(b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n")
        self.assertEqual(info.source, IPv6Address("TCP", "2001:db8::7", 51234))
        self.assertEqual(parse_header(b"PROXY UNKNOWN ffff::1 whatever\r\n")[0], ProxyInfo())

    def test_v2(self):
        info, used = parse_header(v2(tlvs=b"\x04\x00\x02ab") + b"GET /")  # a TLV (NOOP) is skipped
        self.assertEqual(info.source, IPv4Address("TCP", "198.51.100.7", 51234))
        self.assertEqual(used, 16 + 12 + 5)
        block = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "::1") \
            + struct.pack("!HH", 1, 2)
        self.assertEqual(parse_header(v2(family=0x21, block=block))[0].source, IPv6Address("TCP", "2001:db8::7", 1))
        # LOCAL (a health check) and UNSPEC: the connection's own addresses.
        self.assertEqual(parse_header(v2(command=0x0))[0], ProxyInfo())
        self.assertEqual(parse_header(v2(family=0x00, block=b""))[0], ProxyInfo())

    def test_incomplete_needs_more(self):
        for header in (V1, v2()):
            for end in range(len(header)):
                self.assertIsNone(parse_header(header[:end]), header[:end])

    def test_malformed(self):
        for bad in [b"GET / HTTP/1.1\r\n", b"\x00\x00\x00\x05",
                    b"PROXY TCP4 198.51.100.7 10.0.0.11 51234\r\n",
                    b"PROXY TCP4 2001:db8::7 10.0.0.11 51234 8888\r\n",
                    b"PROXY TCP6 198.51.100.7 2001:db8::1 1 2\r\n",
                    b"PROXY TCP4 198.51.100.7 10.0.0.11 99999 8888\r\n",
                    b"PROXY TCP4 198.51.100.7 10.0.0.11 +1 8888\r\n",
                    b"PROXY TCP4 198.51.100.7 10.0.0.11 0123 8888\r\n",
                    b"PROXY TCP4  198.51.100.7 10.0.0.11 1 8888\r\n",
                    b"PROXY UDP4 198.51.100.7 10.0.0.11 1 2\r\n",
                    b"PROXY TCP4 host.example 10.0.0.11 1 2\r\n",
                    v2()[:12] + b"\x11" + v2()[13:],        # version 1 in a v2 header
                    v2(command=0x2),
                    v2(family=0x41),                        # no such family
                    v2(block=b"\x01\x02\x03")]:             # shorter than its addresses
            self.assertRaises(InvalidProxyHeader, parse_header, bad)

    def test_oversized(self):
        self.assertRaises(InvalidProxyHeader, parse_header, b"PROXY TCP4 " + b"1" * V1_MAX)
        too_long = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, MAX_V2_LENGTH + 1)
        self.assertRaises(InvalidProxyHeader, parse_header, too_long)  # refused before the body arrives

    def test_port_description(self):
        self.assertEqual(proxy_protocol_port("haproxy:tcp:8888:interface=10.0.0.11"), "tcp:8888:interface=10.0.0.11")
        self.assertIsNone(proxy_protocol_port("tcp:8888"))


class Recorder(Protocol):
    def __init__(self, built_for):
        self.built_for = built_for
        self.data = b""
        self.lost = False

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True


class RecordingFactory(Factory):
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        protocol = Recorder(addr)
        self.built.append(protocol)
        return protocol


class WrapperTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.inner = RecordingFactory()
        self.trusted = TrustedProxies.of(parse_networks("trusted-proxies", "10.0.0.0/24"))
        self.factory = ProxyHeaderFactory(self.inner, self.trusted, self.clock)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self, peer=PROXY, factory=None):
        factory = factory or self.factory
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "10.0.0.11", 8888))
        protocol.makeConnection(transport)
        return protocol, transport

    def warnings(self):
        return [e["why"] for e in self.events if "why" in e]

    def test_a_trusted_peer_names_the_client_v1_one_byte_at_a_time(self):
        wrapper, transport = self.connect()
        self.assertEqual(self.inner.built, [])  # nothing is built before the header
        for byte in V1 + b"hello":
            wrapper.dataReceived(bytes([byte]))
        [inner] = self.inner.built
        client = IPv4Address("TCP", "198.51.100.7", 51234)
        self.assertEqual((inner.built_for, inner.peer, wrapper.getPeer()), (client, client, client))
        self.assertEqual(inner.host, IPv4Address("TCP", "10.0.0.11", 8888))
        self.assertEqual(inner.data, b"hello")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(HEADER_TIMEOUT * 2)  # the header timer is gone
        self.assertFalse(transport.disconnecting)

    def test_a_trusted_peer_v2_with_data_in_the_same_chunk(self):
        wrapper, _ = self.connect()
        wrapper.dataReceived(v2() + b"GET / HTTP/1.1\r\n")
        [inner] = self.inner.built
        self.assertEqual(inner.peer.host, "198.51.100.7")
        self.assertEqual(inner.data, b"GET / HTTP/1.1\r\n")
        wrapper.write(b"answer")  # the inner protocol writes through the wrapper
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(inner.lost)
        self.assertEqual(self.factory.protocols, {})

    def test_a_health_check_keeps_the_proxy_address(self):
        wrapper, _ = self.connect()
        wrapper.dataReceived(v2(command=0x0))
        self.assertEqual(self.inner.built[0].peer, PROXY)

    def test_a_trusted_peer_without_a_header_is_closed(self):
        wrapper, transport = self.connect()
        wrapper.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.inner.built, [])
        self.assertIn("invalid PROXY header from trusted peer 10.0.0.5", self.warnings()[0])

    def test_bad_and_oversized_headers_close(self):
        for bad in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", b"PROXY " + b"x" * V1_MAX,
                    V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 60000)):
            wrapper, transport = self.connect()
            wrapper.dataReceived(bad)
            self.assertTrue(transport.disconnecting, bad)
            wrapper.dataReceived(b"more")  # nothing more is read
        self.assertEqual(self.inner.built, [])
        self.assertEqual(self.factory.refused, 3)

    def test_a_slow_header_times_out(self):
        wrapper, transport = self.connect()
        wrapper.dataReceived(V1[:10])
        self.clock.advance(HEADER_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.inner.built, [])
        self.assertIn("no PROXY header from trusted peer 10.0.0.5 within 5 s", self.warnings()[0])

    def test_an_untrusted_peer_is_a_plain_client(self):
        wrapper, transport = self.connect(STRANGER)
        [inner] = self.inner.built  # built at once, for the peer's own address
        self.assertEqual((inner.built_for, inner.peer), (STRANGER, STRANGER))
        for byte in b"GET / HTTP/1.1\r\n":
            wrapper.dataReceived(bytes([byte]))
        self.assertEqual(inner.data, b"GET / HTTP/1.1\r\n")
        self.clock.advance(HEADER_TIMEOUT * 2)  # no header timer for it: the port's own timeouts apply
        self.assertFalse(transport.disconnecting)
        # A binary frame starting with what could be a v2 signature's first byte is held only until it differs.
        wrapper, _ = self.connect(STRANGER)
        wrapper.dataReceived(b"\r")
        self.assertEqual(self.inner.built[-1].data, b"")
        wrapper.dataReceived(b"\x00")
        self.assertEqual(self.inner.built[-1].data, b"\r\x00")

    def test_a_proxy_header_from_an_untrusted_peer_is_refused(self):
        for header in (V1, v2()):
            wrapper, transport = self.connect(STRANGER)
            for byte in header[:20]:
                wrapper.dataReceived(bytes([byte]))
            self.assertTrue(transport.disconnecting)
            inner = self.inner.built[-1]
            self.assertEqual(inner.data, b"")  # its header never reached the protocol as data
            self.assertEqual(inner.peer, STRANGER)
            wrapper.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(inner.lost)
        self.assertIn("PROXY header from 203.0.113.50, which is not in --trusted-proxies", self.warnings()[0])
        self.assertEqual(len(self.warnings()), 1)  # logged once, then every thousandth

    def test_the_connection_cap_counts_the_clients_behind_the_proxy(self):
        capped = CappedFactory(self.inner, AddressCounter(1, exempt=self.trusted), b"503")
        factory = ProxyHeaderFactory(capped, self.trusted, self.clock)
        first, _ = self.connect(factory=factory)
        first.dataReceived(V1)
        other, transport = self.connect(factory=factory)
        other.dataReceived(V1.replace(b"198.51.100.7", b"198.51.100.8"))
        self.assertEqual(transport.value(), b"")  # another client through the same proxy
        again, transport = self.connect(factory=factory)
        again.dataReceived(V1)
        self.assertEqual(transport.value(), b"503")  # the first client's second connection
        self.assertTrue(transport.disconnecting)
        # A health check from the proxy itself is not counted against anyone.
        for _ in range(3):
            check, transport = self.connect(factory=factory)
            check.dataReceived(v2(command=0x0))
            self.assertEqual(transport.value(), b"")

    def test_the_tcp_port_sees_the_client(self):
        domain = make_domain(self)
        tcp = WeCompanyFactory(domain, connection_cap=AddressCounter(1, exempt=self.trusted))
        factory = ProxyHeaderFactory(tcp, self.trusted, self.clock)
        wrapper, transport = self.connect(factory=factory)
        wrapper.dataReceived(V1)
        [proto] = tcp.connections
        self.assertEqual(proto._peer_host(), "198.51.100.7")
        self.assertEqual(proto.address_key, "198.51.100.7")
        # A second connection of that client is over the cap: an ERROR frame, then closed.
        wrapper, transport = self.connect(factory=factory)
        wrapper.dataReceived(V1)
        self.assertEqual(transport.value()[4], codec.MsgType.ERROR)
        self.assertTrue(transport.disconnecting)
