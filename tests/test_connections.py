"""The cap on connections per client address, on both ports."""

from __future__ import annotations

import struct

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain
from wecompany.config import parse_networks
from wecompany.connections import AddressCounter, CappedFactory, address_key
from wecompany.proxies import TrustedProxies
from wecompany.tcp import codec
from wecompany.tcp.protocol import WeCompanyFactory


def connect(factory, host: str, ipv6: bool = False):
    address = IPv6Address("TCP", host, 5000) if ipv6 else IPv4Address("TCP", host, 5000)
    proto = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    proto.makeConnection(transport)
    return proto, transport


class AddressKeyTests(SynchronousTestCase):
    def test_keys(self):
        self.assertEqual(address_key(IPv4Address("TCP", "10.1.2.3", 1)), "10.1.2.3")
        # One IPv6 host usually has a whole /64: it counts as one address.
        self.assertEqual(address_key(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 1)),
                         address_key(IPv6Address("TCP", "2001:db8:1:2:ffff::9", 1)))
        self.assertEqual(address_key(IPv6Address("TCP", "2001:db8:1:2::1", 1)), "2001:db8:1:2::/64")
        self.assertEqual(address_key(IPv6Address("TCP", "::ffff:10.1.2.3", 1)), "10.1.2.3")
        self.assertEqual(address_key(UNIXAddress(b"/run/wc.sock")), "local")

    def test_counter(self):
        counter = AddressCounter(2)
        self.assertEqual([counter.acquire("a") for _ in range(3)], [True, True, False])
        self.assertTrue(counter.acquire("b"))
        counter.release("a")
        self.assertTrue(counter.acquire("a"))
        for _ in range(5):
            counter.release("b")
        self.assertEqual((counter.open_from("b"), counter.refused), (0, 1))
        self.assertNotIn("b", counter._open)  # nothing kept for an address with none open


class Echo(Protocol):
    lost = 0

    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason):
        type(self).lost += 1


class CappedFactoryTests(SynchronousTestCase):
    def test_over_the_cap_is_told_and_closed(self):
        factory = CappedFactory(Factory.forProtocol(Echo), AddressCounter(3), b"503 go away")
        kept = [connect(factory, "10.0.0.1") for _ in range(3)]
        refused, transport = connect(factory, "10.0.0.1")
        self.assertEqual(transport.value(), b"503 go away")
        self.assertTrue(transport.disconnecting)
        refused.dataReceived(b"ignored")  # a refused connection reads nothing
        self.assertEqual(transport.value(), b"503 go away")
        other, other_transport = connect(factory, "10.0.0.2")  # another address is not affected
        other.dataReceived(b"hi")
        self.assertEqual(other_transport.value(), b"hi")
        # A slot comes back when a connection closes, whichever protocol holds it by then.
        kept[0][0].connectionLost(Failure(ConnectionDone()))
        _, transport = connect(factory, "10.0.0.1")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_a_trusted_proxy_is_not_counted(self):
        # It carries many clients (X-Forwarded-For names them); the proxy keeps the cap per client.
        trusted = TrustedProxies.of(parse_networks("trusted-proxies", "10.9.0.0/16"))
        counter = AddressCounter(1, exempt=trusted)
        factory = CappedFactory(Factory.forProtocol(Echo), counter, b"503 go away")
        for _ in range(5):
            _, transport = connect(factory, "10.9.0.1")
            self.assertEqual(transport.value(), b"")
        connect(factory, "10.8.0.1")
        _, transport = connect(factory, "10.8.0.1")  # anyone else is
        self.assertEqual(transport.value(), b"503 go away")
        self.assertIsNone(counter.key_for(IPv4Address("TCP", "10.9.3.3", 1)))

    def test_the_count_follows_a_protocol_swap(self):
        # A WebSocket upgrade replaces the wrapped protocol; the wrapper still sees the close.
        counter = AddressCounter(1)
        factory = CappedFactory(Factory.forProtocol(Echo), counter, b"no")
        wrapper, _ = connect(factory, "10.0.0.3")
        wrapper.wrappedProtocol = Echo()
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(counter.open_from("10.0.0.3"), 0)


class TcpCapTests(SynchronousTestCase):
    def test_the_tcp_port_refuses_with_an_error_frame(self):
        d = make_domain(self)
        factory = WeCompanyFactory(d, connection_cap=AddressCounter(2))
        kept = [connect(factory, "10.0.0.1") for _ in range(2)]
        _, transport = connect(factory, "10.0.0.1")
        (length,) = struct.unpack(">I", transport.value()[:4])
        body = transport.value()[4:4 + length]
        self.assertEqual(body[0], codec.MsgType.ERROR)
        reader = codec.Reader(body, 1)
        self.assertEqual((reader.u16(), reader.qstr()), (503, "too many connections from your address"))
        self.assertTrue(transport.disconnecting)
        kept[0][0].connectionLost(Failure(ConnectionDone()))
        _, transport = connect(factory, "10.0.0.1")
        self.assertFalse(transport.disconnecting)
