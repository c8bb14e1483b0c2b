"""
wecompany.mirror.medialink: direct media links between nodes, over in-memory
transports (no sockets, no wall time).
"""

from __future__ import annotations

import json

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from wecompany.mirror import medialink
from wecompany.mirror.medialink import FROM_PARTY, TO_CLIENT, NodeLinks, link_key

SECRET = b"s" * 32


class Wire:
    """Connections between protocols, each over a pair of StringTransports; :meth:`pump` moves the bytes."""

    def __init__(self) -> None:
        self.pairs: list[tuple] = []

    def join(self, client, server) -> None:
        ct, st = StringTransport(), StringTransport()
        client.makeConnection(ct)
        server.makeConnection(st)
        self.pairs.append([client, ct, server, st])

    def pump(self) -> None:
        for _ in range(100):
            moved = False
            for pair in list(self.pairs):
                client, ct, server, st = pair
                for src, dst in ((ct, server), (st, client)):
                    data = src.value()
                    if data:
                        src.clear()
                        dst.dataReceived(data)
                        moved = True
                if ct.disconnecting or st.disconnecting or getattr(ct, "aborted", False) \
                        or getattr(st, "aborted", False):
                    self.pairs.remove(pair)
                    client.connectionLost(None)
                    server.connectionLost(None)
                    moved = True
            if not moved:
                return


class FakeEndpoint:
    def __init__(self, case, address: str) -> None:
        self.case = case
        self.address = address

    def connect(self, factory):
        target = self.case.listening.get(self.address)
        if target is None:
            return fail(ConnectionRefusedError(self.address))
        protocol = factory.buildProtocol(None)
        self.case.wire.join(protocol, target.factory().buildProtocol(None))
        return succeed(protocol)


class Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wire = Wire()
        self.listening: dict[str, NodeLinks] = {}
        self.heard: dict[str, list] = {}
        self.connects: list[str] = []

    def links(self, node: str, secret: bytes = SECRET, prefix: str = "wecompany:") -> NodeLinks:
        def connect(address):
            self.connects.append(address)
            return FakeEndpoint(self, address)

        links = NodeLinks(self.clock, node, link_key(secret, prefix), connect=connect, address=f"mem:{node}",
                          max_frame=4096)
        self.listening[f"mem:{node}"] = links
        self.heard[node] = []
        links.on_media(lambda *packet, node=node: self.heard[node].append(packet))
        return links

    def pair(self, **b_options):
        a, b = self.links("a"), self.links("b", **b_options)
        a.peer_address("b", b.address)
        b.peer_address("a", a.address)
        return a, b


class LinkTests(Case):
    def test_media_goes_over_the_link_once_it_is_up(self):
        a, b = self.pair()
        # No link yet: the caller sends this packet through Redis; a link is being made.
        self.assertIsNone(a.send("b", TO_CLIENT, "sid1", "call1", b"first"))
        self.wire.pump()
        self.assertEqual(list(a.links), ["b"])
        self.assertEqual(list(b.links), ["a"])  # either side may send on it
        self.assertTrue(a.send("b", TO_CLIENT, "sid1", "call1", b"\x00media\xff"))
        self.assertTrue(b.send("a", FROM_PARTY, "sid9", "", b"back"))
        self.wire.pump()
        self.assertEqual(self.heard["b"], [("a", TO_CLIENT, "sid1", "call1", b"\x00media\xff")])
        self.assertEqual(self.heard["a"], [("b", FROM_PARTY, "sid9", "", b"back")])
        self.assertEqual(sorted(self.connects), ["mem:a", "mem:b"])  # each connected at once

    def test_another_clusters_secret_gets_no_link(self):
        a, b = self.pair(secret=b"t" * 32)
        a.send("b", TO_CLIENT, "s", "c", b"x")
        self.wire.pump()
        self.assertEqual((a.links, b.links), ({}, {}))
        self.assertEqual(self.wire.pairs, [])  # closed
        self.assertIsNone(a.send("b", TO_CLIENT, "s", "c", b"x"))

    def test_another_clusters_prefix_gets_no_link(self):
        a, b = self.pair(prefix="other:")
        a.send("b", TO_CLIENT, "s", "c", b"x")
        self.wire.pump()
        self.assertEqual((a.links, b.links), ({}, {}))

    def test_the_node_answering_must_be_the_one_asked_for(self):
        a, c = self.links("a"), self.links("c")
        a.peer_address("b", c.address)  # b announced c's address
        a.send("b", TO_CLIENT, "s", "c", b"x")
        self.wire.pump()
        self.assertEqual((a.links, c.links), ({}, {}))

    def raw(self, links: NodeLinks):
        """A stranger's connection to ``links``: (its protocol, the bytes it was sent)."""
        protocol = links.factory().buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def frame(self, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + body

    def test_anything_but_a_hello_first_is_refused(self):
        b = self.links("b")
        for first in (b"M\x00\x01s\x01cdata", b"Pproof", b"X", b"H{not json", b'H{"v":1,"node":"a"}',
                      b'H{"v":2,"node":"a","nonce":"' + b"0" * 32 + b'"}'):
            protocol, transport = self.raw(b)
            protocol.dataReceived(self.frame(first))
            self.assertTrue(transport.disconnecting, first)
            protocol.connectionLost(None)
        self.assertEqual((b.links, self.heard["b"]), ({}, []))

    def test_media_before_the_proof_is_refused(self):
        b = self.links("b")
        protocol, transport = self.raw(b)
        hello = json.dumps({"v": 1, "node": "a", "nonce": "0" * 32}).encode()
        protocol.dataReceived(self.frame(b"H" + hello))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(self.frame(b"M\x00\x01s\x01cdata"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.heard["b"], [])

    def test_a_silent_connection_is_closed_after_the_handshake_timeout(self):
        b = self.links("b")
        _, transport = self.raw(b)
        self.clock.advance(medialink.HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_a_frame_over_the_limit_closes_the_link(self):
        b = self.links("b")
        protocol, transport = self.raw(b)
        protocol.dataReceived((b.max_frame + 1).to_bytes(4, "big"))
        self.assertTrue(transport.disconnecting)

    def test_a_malformed_media_frame_closes_the_link(self):
        for bad in (b"M", b"M\x00", b"M\x00\x05ab", b"M\x07\x01s\x01c", b"M\x00\x01s\x05c", b"Q"):
            a, b = self.links("a"), self.links("b")
            a.peer_address("b", b.address)  # one connection, a to b
            self.wire.pump()
            link = a.links["b"]
            link.sendString(bad)
            self.wire.pump()
            self.assertEqual((a.links, b.links), ({}, {}), bad)
            self.assertEqual(self.heard["b"], [], bad)
            self.listening.clear()

    def test_a_full_link_drops_media(self):
        a, b = self.pair()
        a.send("b", TO_CLIENT, "s", "c", b"")
        self.wire.pump()
        a.links["b"].gate.pauseProducing()  # the transport said its buffer is full
        self.assertFalse(a.send("b", TO_CLIENT, "s", "c", b"dropped"))
        a.links["b"].gate.resumeProducing()
        self.assertTrue(a.send("b", TO_CLIENT, "s", "c", b"sent"))
        self.wire.pump()
        self.assertEqual([p[-1] for p in self.heard["b"]], [b"sent"])
        self.assertEqual((a.sent, a.dropped), (1, 1))

    def test_no_address_no_connection(self):
        a = self.links("a")
        self.assertIsNone(a.send("b", TO_CLIENT, "s", "c", b"x"))
        self.assertEqual(self.connects, [])

    def test_a_failed_connection_is_retried_with_backoff(self):
        a = self.links("a")
        a.peer_address("b", "mem:b")  # nothing listens there
        self.assertEqual(len(self.connects), 1)  # at once
        self.assertIsNone(a.send("b", TO_CLIENT, "s", "c", b"x"))
        self.assertEqual(len(self.connects), 1)  # not before the delay
        self.clock.advance(medialink.RETRY_FIRST)
        self.assertEqual(len(self.connects), 2)
        self.clock.advance(medialink.RETRY_FIRST)  # the delay doubled
        self.assertEqual(len(self.connects), 2)
        self.clock.advance(medialink.RETRY_FIRST)
        self.assertEqual(len(self.connects), 3)
        b = self.links("b")  # b starts listening: the next attempt makes the link
        self.clock.advance(4 * medialink.RETRY_FIRST)
        self.wire.pump()
        self.assertEqual((list(a.links), list(b.links)), (["b"], ["a"]))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # and no attempt is left

    def test_a_lost_link_is_made_again(self):
        a, b = self.pair()
        self.wire.pump()
        for link in list(b._open):
            link.transport.loseConnection()  # b's end drops every connection
        self.wire.pump()
        self.assertEqual((a.links, b.links), ({}, {}))
        self.clock.advance(medialink.RETRY_FIRST)
        self.wire.pump()
        self.assertEqual((list(a.links), list(b.links)), (["b"], ["a"]))

    def test_a_new_address_replaces_the_link(self):
        a, b = self.pair()
        a.send("b", TO_CLIENT, "s", "c", b"")
        self.wire.pump()
        a.peer_address("b", "mem:elsewhere")
        self.wire.pump()
        self.assertNotIn("b", a.links)

    def test_a_forgotten_node_loses_its_links(self):
        a, b = self.pair()
        a.send("b", TO_CLIENT, "s", "c", b"")
        self.wire.pump()
        a.forget("b")
        self.wire.pump()
        self.assertEqual((a.links, b.links), ({}, {}))
        self.assertIsNone(a.send("b", TO_CLIENT, "s", "c", b"x"))
        self.clock.advance(medialink.RETRY_MAX)
        self.assertNotIn("mem:b", self.connects[2:])  # a has no address left to connect to

    def test_stop_closes_every_link(self):
        a, b = self.pair()
        a.send("b", TO_CLIENT, "s", "c", b"")
        self.wire.pump()
        b.stop()
        self.wire.pump()
        self.assertEqual((a.links, b.links), ({}, {}))

    def test_the_listening_address_is_announced(self):
        links = NodeLinks(self.clock, "a", b"k", connect=None)

        class Port:
            def __init__(self, host):
                self.host = host

            def getHost(self):
                from twisted.internet.address import IPv4Address
                return IPv4Address("TCP", self.host, 7100)

        links.listening(Port("10.0.0.5"))
        self.assertEqual(links.address, "tcp:host=10.0.0.5:port=7100")
        given = NodeLinks(self.clock, "a", b"k", connect=None, address="tls:host=node1:port=7100")
        given.listening(Port("0.0.0.0"))
        self.assertEqual(given.address, "tls:host=node1:port=7100")
