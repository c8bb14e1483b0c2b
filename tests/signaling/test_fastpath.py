"""
The signaling fast path's use of Autobahn internals: every internal it
touches is there, in the shape expected (or the test fails), and on any
input it does exactly what plain Autobahn does.
"""

from __future__ import annotations

import configparser
import os

from hypothesis import given, settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from tests.signaling.test_protocol import SignalingTestCase, client_frame, recording, server_frames
from wecompany.signaling import fastpath
from wecompany.signaling.protocol import SignalingFactory

SETUP_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "setup.cfg")


class InternalsTests(SignalingTestCase):
    def open_protocol(self, fast_path: bool = True):
        factory = SignalingFactory(self.api.domain, ping_interval=0, ping_timeout=0, fast_path=fast_path)
        self.rest_join("alice")
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport()
        proto.makeConnection(transport)
        query = (f"meeting_id={self.meeting_id}&user_id={self.uid('alice')}&peer_id=p&token={self.token('alice')}")
        proto.dataReceived(f"GET /ws/signaling?{query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"))
        transport.clear()
        return factory, proto, transport

    def test_every_internal_used_is_there_in_its_shape(self):
        self.assertEqual(fastpath.class_problems(), [])
        factory, proto, _ = self.open_protocol()
        self.assertEqual(fastpath.instance_problems(proto), [])
        self.assertTrue(factory.fast_path)  # nor did the factory's own checks find anything
        self.assertIsInstance(proto, fastpath.FastPathProtocol)

    def test_the_check_can_fail(self):
        class Changed:
            state = 3
            data = "not bytes"

        problems = fastpath.instance_problems(Changed())
        self.assertIn("data is a str, not <class 'bytes'>", problems)
        self.assertIn("an open protocol has no send_queue", problems)

    def test_a_failed_check_serves_plain_autobahn(self):
        factory, proto, transport = self.open_protocol()
        factory.disable_fast_path(["WebSocketProtocol._dataReceived is missing"])
        self.assertFalse(factory.fast_path)
        recording(proto)
        calls = []
        real = proto._dataReceived
        proto._dataReceived = lambda data: (calls.append(data), real(data))
        proto.dataReceived(client_frame(b"hello"))
        self.assertEqual((proto.got, len(calls)), ([(b"hello", False)], 1))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_the_cap_in_setup_cfg_is_the_tested_version(self):
        parser = configparser.ConfigParser()
        parser.read(SETUP_CFG)
        requires = parser["options"]["install_requires"]
        for package, version in fastpath.TESTED.items():
            self.assertIn(f"{package}>=", requires)
            line = next(item for item in requires.split("\n") if item.strip().startswith(f"{package}>="))
            self.assertTrue(line.strip().endswith(f"<={version}"), line)

    # -- the same behaviour as plain Autobahn, on any input ----------------------------
    FRAMES = st.lists(st.one_of(
        st.tuples(st.just("text"), st.text(max_size=300).map(str.encode)),
        st.tuples(st.just("big"), st.integers(126, 70_000).map(lambda n: b"t" * n)),
        st.tuples(st.just("ping"), st.binary(max_size=20)),
        st.tuples(st.just("binary"), st.binary(max_size=50)),
        st.tuples(st.just("fragments"), st.lists(st.text(max_size=20).map(str.encode), min_size=2, max_size=4)),
        st.tuples(st.just("bad-utf8"), st.just(b"\xff\xfe")),
        st.tuples(st.just("unmasked"), st.just(b"x")),
    ), max_size=8)

    @staticmethod
    def stream(frames, masks) -> bytes:
        out = b""
        for i, (kind, payload) in enumerate(frames):
            mask = masks[i % len(masks)]
            if kind in ("text", "big", "bad-utf8"):
                out += client_frame(payload, mask=mask)
            elif kind == "ping":
                out += client_frame(payload, opcode=9, mask=mask)
            elif kind == "binary":
                out += client_frame(payload, opcode=2, mask=mask)
            elif kind == "unmasked":
                out += client_frame(payload, masked=False)
            else:
                out += client_frame(payload[0], fin=False, mask=mask)
                for piece in payload[1:-1]:
                    out += client_frame(piece, opcode=0, fin=False, mask=mask)
                out += client_frame(payload[-1], opcode=0, mask=mask)
        return out

    def outcome(self, fast_path: bool, data: bytes, cut: int):
        factory, proto, transport = self.open_protocol(fast_path)
        recording(proto)
        self.assertEqual(isinstance(proto, fastpath.FastPathProtocol), fast_path)
        for start in range(0, len(data), cut):
            if transport.disconnecting:
                break
            proto.dataReceived(data[start:start + cut])
        return proto.got, transport.disconnecting, [f for f in server_frames(transport.value()) if f[0] != 8]

    @settings(max_examples=80)
    @given(FRAMES, st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=3),
           st.sampled_from([1, 3, 7, 64, 100_000]))
    def test_fast_and_plain_deliver_the_same(self, frames, masks, cut):
        data = self.stream(frames, masks)
        self.assertEqual(self.outcome(True, data, cut), self.outcome(False, data, cut))
