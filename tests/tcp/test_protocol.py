"""
The TCP protocol over StringTransport with a fake clock: no sockets, no wall time.
"""

from __future__ import annotations

import hashlib
import os
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain, make_user
from tests.storage.fakes3 import FakeConnectionError, FakeS3Client
from wecompany.tcp import codec
from wecompany.tcp.codec import MsgType
from wecompany.tcp.protocol import WeCompanyFactory

PASSWORD = "Secret-pass1"


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def parse_frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        assert len(data) >= 4 + n, "truncated frame in output"
        out.append(data[4:4 + n])
        data = data[4 + n:]
    return out


def q(s: str) -> bytes:
    return codec.qstr(s)


def s16(s: str) -> bytes:
    return codec.str16(s)


class Conn:
    """One client connection under test."""

    def __init__(self, factory, host: str):
        self.proto = factory.buildProtocol(IPv4Address("TCP", host, 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.proto.makeConnection(self.transport)
        self.pending: list[bytes] = []

    def send(self, *bodies: bytes) -> None:
        self.proto.dataReceived(b"".join(frame(b) for b in bodies))

    def send_bytewise(self, *bodies: bytes) -> None:
        for byte in b"".join(frame(b) for b in bodies):
            self.proto.dataReceived(bytes((byte,)))

    def frames(self) -> list[bytes]:
        data = self.transport.value()
        self.transport.clear()
        out, self.pending = self.pending + parse_frames(data), []
        return out

    def types(self) -> list[int]:
        return [f[0] for f in self.frames()]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting or self.transport.disconnected


def error_of(body: bytes):
    """(code, message, offending type) of an ERROR body."""
    assert body[0] == MsgType.ERROR, body
    r = codec.Reader(body, 1)
    return r.u16(), r.qstr(), r.u8()


def auth_result(body: bytes):
    assert body[0] == MsgType.AUTH_RESULT, body
    r = codec.Reader(body, 1)
    if r.u8():
        return True, r.str16(), r.str16()
    return False, r.str16()


class ProtocolTestCase(SynchronousTestCase):
    factory_options: dict = {}

    def setUp(self):
        options = dict(max_frame=4096, login_timeout=10, idle_timeout=90, message_rate=100,
                       message_burst=200, auth_fail_delay=1.0)
        options.update(self.factory_options)
        self.domain = make_domain(self, max_frame=options["max_frame"], **self.domain_options())
        self.clock = self.domain.clock
        self.factory = WeCompanyFactory(self.domain, **options)
        self._hosts = iter(f"10.0.0.{i}" for i in range(1, 250))

    def domain_options(self) -> dict:
        """More :func:`make_domain` options (Config fields, a fake S3 client) for this test's domain."""
        return {}

    def connect(self, host=None) -> Conn:
        return Conn(self.factory, host or next(self._hosts))

    def login(self, username: str, register: bool = True, host: str | None = None) -> tuple[Conn, str]:
        """A logged-in connection and its user id (registering the account on first use)."""
        conn = self.connect(host)
        exists = self.domain.registry.find_online(username) is not None or \
            self.domain.store.get_user_by_username(username).result is not None
        t = MsgType.LOGIN if exists or not register else MsgType.REGISTER
        conn.send(bytes((t,)) + s16(username) + s16(PASSWORD))
        frames = conn.frames()
        ok = auth_result(frames[0])
        self.assertTrue(ok[0], ok)
        conn.pending = frames[1:]  # what arrived right after login (stored messages, files)
        return conn, ok[2]


class FramingTests(ProtocolTestCase):
    def test_bytewise_and_coalesced(self):
        conn, _ = self.login("alice")
        conn.send_bytewise(b"\x07", b"\x07")
        self.assertEqual(conn.frames(), [b"\x07", b"\x07"])
        conn.send(*([b"\x07"] * 5))
        self.assertEqual(conn.frames(), [b"\x07"] * 5)

    def test_login_bytewise(self):
        make_user(self.domain, "alice")
        conn = self.connect()
        conn.send_bytewise(b"\x08" + s16("alice") + s16(PASSWORD), b"\x07")
        frames = conn.frames()
        self.assertTrue(auth_result(frames[0])[0])
        self.assertEqual(frames[1:], [b"\x07"])

    def test_oversized_prefix_closes_without_buffering(self):
        conn, _ = self.login("alice")
        conn.proto.dataReceived(struct.pack(">I", 4097) + b"x" * 1000)
        code, message, _ = error_of(conn.frames()[-1])
        self.assertEqual(code, 413)
        self.assertIn("4097", message)
        self.assertTrue(conn.closed)
        conn.proto.dataReceived(b"y" * 5000)
        self.assertEqual(conn.proto._unprocessed, b"")

    def test_frame_at_the_limit_is_accepted(self):
        conn, _ = self.login("alice")
        conn.send(b"\x00" + q("*") + q("x" * ((4096 - 1 - 4 - 4 - 2) // 2 - 300)))
        self.assertEqual(conn.frames()[0][0], MsgType.TEXT_ACK)

    def test_server_refuses_to_send_oversized(self):
        conn, _ = self.login("alice")
        conn.proto.send_body(b"\x0f" + b"x" * 4096)
        code, message, offending = error_of(conn.frames()[0])
        self.assertEqual((code, offending), (413, 0x0F))
        self.assertIn("exceeds the frame limit", message)
        conn.proto.send_body(b"\x0f" + b"x" * 4095)
        self.assertEqual(conn.frames(), [b"\x0f" + b"x" * 4095])

    def test_text_limit_counts_utf16_bytes(self):
        alice, _ = self.login("alice")
        bob, bob_id = self.login("bob")
        # 1000 emoji are 1000 code points but 4000 UTF-16 bytes: too big to forward.
        alice.send(b"\x00" + q(bob_id) + q("\U0001F600" * 1000))
        self.assertEqual(error_of(alice.frames()[0])[0], 413)
        self.assertEqual(bob.frames(), [])
        alice.send(b"\x00" + q(bob_id) + q("\U0001F600" * 800))
        self.assertEqual(alice.frames()[0][0], MsgType.TEXT_ACK)
        self.assertEqual(codec.decode_server(bob.frames()[0])["text"], "\U0001F600" * 800)

    def test_empty_frame_is_malformed(self):
        conn, _ = self.login("alice")
        conn.send(b"")
        self.assertEqual(error_of(conn.frames()[0])[0], 400)
        self.assertFalse(conn.closed)


class AuthTests(ProtocolTestCase):
    def test_register_then_login_and_token(self):
        conn = self.connect()
        conn.send(b"\x09" + s16("alice") + s16(PASSWORD))
        ok, token, user_id = auth_result(conn.frames()[0])
        self.assertTrue(ok)
        self.assertEqual(user_id, str(self.domain.store.get_user_by_username("alice").result.id))
        self.assertEqual(self.domain.tokens.verify(token)["username"], "alice")
        # The same token logs in on a fresh connection.
        conn.proto.connectionLost(None)
        other = self.connect()
        other.send(b"\x0b" + s16(token))
        self.assertEqual(auth_result(other.frames()[0])[2], user_id)
        # And a login by password on a third.
        third = self.connect()
        third.send(b"\x08" + s16("ALICE") + s16(PASSWORD))
        self.assertEqual(auth_result(third.frames()[0])[2], user_id)

    def test_register_refusals(self):
        make_user(self.domain, "alice")
        cases = [("alice", PASSWORD, "username already exists"),
                 ("al", PASSWORD, "username must be"),
                 ("bobby", "short1A", "at least 8"),
                 ("bobby", "alllowercase", "at least 3"),
                 ("bobby", "MyPassword1!", "common password")]
        for username, password, text in cases:
            conn = self.connect()
            conn.send(b"\x09" + s16(username) + s16(password))
            result = auth_result(conn.frames()[0])
            self.assertFalse(result[0])
            self.assertIn(text, result[1])

    def test_closed_registration_is_refused_and_closes(self):
        domain = make_domain(self, max_frame=4096, registration="closed")
        closed = WeCompanyFactory(domain, max_frame=4096, auth_fail_delay=1.0)
        conn = Conn(closed, "10.0.0.9")
        conn.send(b"\x09" + s16("alice") + s16(PASSWORD))
        self.assertEqual(auth_result(conn.frames()[0]),
                         (False, "registration is closed: ask an administrator for an account"))
        self.assertIsNone(domain.store.get_user_by_username("alice").result)
        self.assertFalse(conn.closed)
        domain.clock.advance(1.0)
        self.assertTrue(conn.closed)
        # An account an operator made logs in as usual.
        self.successResultOf(Deferred.fromCoroutine(domain.accounts.create("bobby", PASSWORD)))
        other = Conn(closed, "10.0.0.10")
        other.send(b"\x08" + s16("bobby") + s16(PASSWORD))
        self.assertTrue(auth_result(other.frames()[0])[0])

    def test_failed_login_closes_after_delay(self):
        make_user(self.domain, "alice")
        conn = self.connect()
        conn.send(b"\x08" + s16("alice") + s16("Wrong-pass1"))
        self.assertEqual(auth_result(conn.frames()[0]), (False, "invalid password"))
        self.assertFalse(conn.closed)
        conn.send(b"\x07")  # ignored while closing
        self.assertEqual(conn.frames(), [])
        self.clock.advance(1.0)
        self.assertTrue(conn.closed)

    def test_unexpected_failure_still_answers_and_closes(self):
        real = self.domain.store

        class BrokenStore:
            def get_user_by_login(self, login):
                raise RuntimeError("database exploded")

            def __getattr__(self, name):
                return getattr(real, name)

        self.domain.accounts.store = BrokenStore()
        conn = self.connect()
        conn.send(b"\x08" + s16("alice") + s16(PASSWORD))
        self.assertEqual(auth_result(conn.frames()[0]), (False, "internal error"))
        self.flushLoggedErrors(RuntimeError)
        self.clock.advance(1.0)
        self.assertTrue(conn.closed)

    def test_unknown_user(self):
        conn = self.connect()
        conn.send(b"\x08" + s16("nobody") + s16(PASSWORD))
        self.assertEqual(auth_result(conn.frames()[0]), (False, "user not found"))

    def test_bad_token(self):
        for token in ("garbage", self.domain.tokens.issue(999, "ghost")):
            conn = self.connect()
            conn.send(b"\x0b" + s16(token))
            self.assertEqual(auth_result(conn.frames()[0]), (False, "invalid token"))

    def test_expired_token(self):
        uid = make_user(self.domain, "alice")
        token = self.domain.tokens.issue(uid, "alice")
        self.clock.advance(86400 + 31)
        conn = self.connect()
        conn.send(b"\x0b" + s16(token))
        self.assertEqual(auth_result(conn.frames()[0]), (False, "token expired"))

    def test_failed_logins_are_limited_per_account_and_address(self):
        make_user(self.domain, "alice")
        make_user(self.domain, "bob")
        for _ in range(5):
            conn = self.connect("10.9.9.9")
            conn.send(b"\x08" + s16("alice") + s16("Wrong-pass1"))
            self.assertEqual(auth_result(conn.frames()[0])[1], "invalid password")
        # The account is locked for the window, from every address...
        for host in ("10.9.9.9", "10.8.8.8"):
            conn = self.connect(host)
            conn.send(b"\x08" + s16("alice") + s16(PASSWORD))
            self.assertIn("too many failed attempts", auth_result(conn.frames()[0])[1])
        # ... another account is not, and a success from this address clears nothing for it.
        self.login("bob")
        self.clock.advance(61)
        conn = self.connect("10.9.9.9")
        conn.send(b"\x08" + s16("alice") + s16(PASSWORD))
        self.assertTrue(auth_result(conn.frames()[0])[0])

    def test_register_is_rate_limited_per_address(self):
        # Finding 5: 152 accounts in 15 s from one address, with no limit at all.
        from wecompany.domain.ratelimit import KeyedRateLimiter
        self.factory.auth_limiter = KeyedRateLimiter(self.clock, rate=1.0, burst=20)
        made = 0
        for i in range(150):
            if i % 10 == 0:
                self.clock.advance(1)  # 150 attempts over 15 s
            conn = self.connect("10.5.5.5")
            conn.send(b"\x09" + s16(f"bot{i}") + s16(PASSWORD))
            made += auth_result(conn.frames()[0])[0]
        self.assertEqual(made, 20 + 14)  # the burst, then one a second
        conn = self.connect("10.5.5.5")
        conn.send(b"\x0b" + s16(self.domain.tokens.issue(1, "bot0")))
        self.assertIn("too many requests", auth_result(conn.frames()[0])[1])  # token logins draw on it too
        conn = self.connect("10.4.4.4")
        conn.send(b"\x09" + s16("human") + s16(PASSWORD))
        self.assertTrue(auth_result(conn.frames()[0])[0])

    def test_messages_before_login_get_error_and_are_dropped(self):
        conn = self.connect()
        conn.send(b"\x00" + q("1") + q("hi"), b"\x07")
        errors = [error_of(f) for f in conn.frames()]
        self.assertEqual([(c, t) for c, _, t in errors], [(401, 0x00), (401, 0x07)])
        self.assertFalse(conn.closed)

    def test_login_timeout(self):
        conn = self.connect()
        self.clock.advance(9.9)
        self.assertFalse(conn.closed)
        self.clock.advance(0.1)
        self.assertEqual(error_of(conn.frames()[0])[0], 408)
        self.assertTrue(conn.closed)

    def test_login_timer_cancelled_after_login(self):
        conn, _ = self.login("alice")
        self.clock.advance(11)
        self.assertFalse(conn.closed)

    def test_already_authenticated(self):
        conn, _ = self.login("alice")
        conn.send(b"\x08" + s16("alice") + s16(PASSWORD))
        self.assertEqual(error_of(conn.frames()[0])[:1], (409,))

    def test_one_session_per_user(self):
        first, uid = self.login("alice")
        bob, bob_id = self.login("bob")
        bob.send(b"\x02" + q(uid) + b"\x00")
        call_id = codec.Reader(first.frames()[0], 1).qstr()
        second, _ = self.login("alice")
        code, message, _ = error_of(first.frames()[-1])
        self.assertEqual(code, 409)
        self.assertIn("another connection", message)
        self.assertTrue(first.closed)
        # The old session's call ended for the other party.
        end = bob.frames()[-1]
        self.assertEqual(end, codec.encode_call_end(call_id, "replaced"))
        self.assertIs(self.domain.registry.chat_client(uid), second.proto)
        # The old connection's close does not log out the new one.
        first.proto.connectionLost(None)
        self.assertIs(self.domain.registry.chat_client(uid), second.proto)


class HeartbeatTests(ProtocolTestCase):
    def test_echo(self):
        conn, _ = self.login("alice")
        conn.send(b"\x07")
        self.assertEqual(conn.frames(), [b"\x07"])

    def test_idle_timeout(self):
        conn, _ = self.login("alice")
        self.clock.advance(60)
        conn.send(b"\x07")
        self.clock.advance(89)
        self.assertFalse(conn.closed)
        self.clock.advance(1)
        self.assertTrue(conn.closed)
        self.assertEqual(error_of(conn.frames()[-1])[0], 408)


class MalformedTests(ProtocolTestCase):
    def test_malformed_body_each_type(self):
        conn, _ = self.login("alice")
        bodies = [b"\x00" + q("x"), b"\x02" + q("bob"), b"\x03", b"\x04\x00", b"\x05" + q("c") + b"z",
                  b"\x07z", b"\x0f\x00", b"\x11\x09", b"\x01\x7f", b"\x01\x01" + q("t")]
        for body in bodies:
            conn.send(body)
            code, _, offending = error_of(conn.frames()[0])
            self.assertEqual((code, offending), (400, body[0]))
            conn.send(b"\x07")  # a good frame resets the malformed count
            self.assertEqual(conn.frames(), [b"\x07"])
        self.assertFalse(conn.closed)

    def test_server_only_and_unknown_types(self):
        conn, _ = self.login("alice")
        for t in (0x0A, 0x0C, 0x0D, 0x0E, 0x10, 0x42):
            conn.send(bytes((t,)))
            self.assertEqual(error_of(conn.frames()[0])[::2], (400, t))

    def test_repeated_malformed_closes(self):
        conn, _ = self.login("alice")
        conn.send(*([b"\x03"] * 10))
        frames = conn.frames()
        self.assertEqual(len(frames), 10)
        self.assertIn("too many malformed", error_of(frames[-1])[1])
        self.assertTrue(conn.closed)

    def test_flood_is_limited_then_closed(self):
        conn, _ = self.login("alice")  # the login frame took one token of the burst
        conn.send(*([b"\x07"] * 199))
        self.assertEqual(conn.frames(), [b"\x07"] * 199)
        conn.send(*([b"\x07"] * 10))
        # One ERROR for the episode, not one per dropped message.
        self.assertEqual([error_of(f)[0] for f in conn.frames()], [429])
        self.clock.advance(0.5)  # 50 tokens back in each bucket
        conn.send(*([b"\x07"] * 50))
        self.assertEqual(conn.frames(), [b"\x07"] * 50)
        self.assertFalse(conn.closed)
        # Keep flooding: once the drop budget (burst 200) is spent, the connection closes.
        conn.send(*([b"\x07"] * 250))
        self.assertTrue(conn.closed)
        self.assertIn("rate limit", error_of(conn.frames()[-1])[1])

    def test_file_fetches_offers_and_cancels_are_rate_limited(self):
        # 20,000 FILE_FETCH frames once each cost a database query.
        for op_frame in (b"\x01\x04" + codec.u64(12345) + codec.u64(0), b"\x01\x03" + q("nope"),
                         b"\x01\x01" + q("t") + q("nobody") + q("f") + codec.u64(1) + b"\0" * 32):
            conn, _ = self.login("alice")
            conn.send(*([op_frame] * 20_000))
            answers = conn.frames()
            self.assertTrue(conn.closed)
            self.assertIn("rate limit", error_of(answers[-1])[1])
            self.assertLess(len(answers), 210)  # the burst (200, less the login) and the 429s

    def test_chunks_of_no_upload_are_charged(self):
        conn, _ = self.login("alice")
        conn.send(*([b"\x01\x02" + q("no-such-upload") + codec.u64(0) + b"data"] * 20_000))
        self.assertTrue(conn.closed)
        self.assertLess(len(conn.frames()), 410)

    def test_file_frames_before_login_are_rate_limited(self):
        conn = self.connect()
        conn.send(*([b"\x01\x02" + q("t") + codec.u64(0) + b"data"] * 20_000))
        self.assertTrue(conn.closed)

    def test_file_chunks_are_not_rate_limited(self):
        alice, _ = self.login("alice")
        self.login("bob")
        data = b"c" * 300 * 4
        alice.send(b"\x01\x01" + q("t") + q("bob") + q("f") + codec.u64(len(data))
                   + __import__("hashlib").sha256(data).digest())
        # 300 chunks at once: far over the message burst, yet none is refused.
        alice.send(*[b"\x01\x02" + q("t") + codec.u64(i) + data[i:i + 4] for i in range(0, len(data), 4)])
        last = codec.decode_server(alice.frames()[-1])
        self.assertEqual((last["op"], last.fields.get("delivered")), (codec.FILE_COMPLETE, True))


class TextTests(ProtocolTestCase):
    def test_direct_delivery_by_id_and_name(self):
        alice, alice_id = self.login("alice")
        bob, bob_id = self.login("bob")
        alice.send(b"\x00" + q(bob_id) + q("hi bob"), b"\x00" + q("BOB") + q("again"))
        acks = alice.frames()
        for ack in acks:
            r = codec.Reader(ack, 1)
            r.u64()
            self.assertEqual((r.qstr(), r.u8(), r.u32()), (bob_id, 0, 1))
        got = bob.frames()
        self.assertEqual(len(got), 2)
        r = codec.Reader(got[0], 1)
        self.assertEqual((r.qstr(), r.qstr()), (alice_id, "hi bob"))
        msg_id, sent_ms, flags, name = r.u64(), r.u64(), r.u8(), r.qstr()
        self.assertEqual((sent_ms, flags, name), (1_700_000_000_000, 0, "alice"))
        self.assertEqual(msg_id, codec.Reader(acks[0], 1).u64())

    def test_unknown_recipient(self):
        alice, _ = self.login("alice")
        alice.send(b"\x00" + q("nobody") + q("hi"), b"\x00" + q("12345") + q("hi"))
        self.assertEqual([error_of(f)[0] for f in alice.frames()], [404, 404])

    def test_broadcast(self):
        alice, alice_id = self.login("alice")
        bob, _ = self.login("bob")
        carol, _ = self.login("carol")
        alice.send(b"\x00" + q("*") + q("all hands"))
        ack = codec.Reader(alice.frames()[0], 1)
        ack.u64()
        self.assertEqual((ack.qstr(), ack.u8(), ack.u32()), ("*", 0, 2))
        for other in (bob, carol):
            r = codec.Reader(other.frames()[0], 1)
            self.assertEqual((r.qstr(), r.qstr()), (alice_id, "all hands"))
            r.u64(), r.u64()
            self.assertEqual(r.u8(), codec.TEXT_FLAG_BROADCAST)

    def test_offline_delivery_in_order_after_login(self):
        bob_id = make_user(self.domain, "bob")
        alice, _ = self.login("alice")
        for i in range(150):  # more than one drain batch
            alice.send(b"\x00" + q("bob") + q(f"m{i}"))
        acks = alice.frames()
        self.assertEqual({codec.Reader(a, 9).qstr() for a in acks}, {str(bob_id)})
        self.assertEqual({a[-5] for a in acks}, {1})  # status stored
        bob, _ = self.login("bob")
        texts = []
        for f in bob.frames():
            r = codec.Reader(f, 1)
            r.qstr()
            text = r.qstr()
            r.u64(), r.u64()
            self.assertEqual(r.u8(), codec.TEXT_FLAG_STORED)
            texts.append(text)
        self.assertEqual(texts, [f"m{i}" for i in range(150)])
        self.assertEqual(self.domain.store.fetch_offline_messages(bob_id, 10).result, [])

    def test_text_too_long_to_forward(self):
        alice, _ = self.login("alice")
        alice.send(b"\x00" + q("*") + q("x" * 2000))
        self.assertEqual(error_of(alice.frames()[0])[0], 413)


class PresenceTests(ProtocolTestCase):
    def test_contacts_presence_and_list(self):
        alice, alice_id = self.login("alice")
        bob_id = str(make_user(self.domain, "bob"))
        alice.send(b"\x11\x01" + q("bob"))
        self.assertEqual(alice.frames(), [codec.encode_contact(1, bob_id, "bob", False)])
        bob, _ = self.login("bob")
        self.assertEqual(alice.frames(), [codec.encode_presence(bob_id, "bob", True)])
        alice.send(b"\x11\x03")
        self.assertEqual(alice.frames()[0], b"\x11\x03" + codec.u32(1) + codec.u32(0) + codec.u16(1)
                         + q(bob_id) + q("bob") + b"\x01")
        bob.proto.connectionLost(None)
        self.assertEqual(alice.frames(), [codec.encode_presence(bob_id, "bob", False)])
        alice.send(b"\x11\x02" + q(bob_id))
        self.assertEqual(alice.frames(), [codec.encode_contact(2, bob_id, "bob", False)])
        alice.send(b"\x11\x02" + q(bob_id), b"\x11\x01" + q(alice_id), b"\x11\x01" + q("ghost"))
        self.assertEqual([error_of(f)[0] for f in alice.frames()], [404, 400, 404])

    def test_online_list(self):
        alice, alice_id = self.login("alice")
        bob, bob_id = self.login("bob")
        alice.send(b"\x0f")
        self.assertEqual(alice.frames()[0], b"\x0f" + codec.u32(2) + codec.u32(0) + codec.u16(2)
                         + q(alice_id) + q("alice") + q(bob_id) + q("bob"))
        alice.send(b"\x0f" + codec.u32(1) + codec.u16(5))
        self.assertEqual(alice.frames()[0], b"\x0f" + codec.u32(2) + codec.u32(1) + codec.u16(1)
                         + q(bob_id) + q("bob"))
        alice.send(b"\x0f" + codec.u32(0) + codec.u16(0), b"\x0f" + codec.u32(0) + codec.u16(501))
        self.assertEqual([error_of(f)[0] for f in alice.frames()], [400, 400])


class CallTests(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.alice, self.alice_id = self.login("alice")
        self.bob, self.bob_id = self.login("bob")

    def ring(self, video=True) -> str:
        self.alice.send(b"\x02" + q("bob") + bytes((video,)))
        ringing = self.alice.frames()
        r = codec.Reader(ringing[0], 1)
        call_id = r.qstr()
        self.assertEqual(ringing, [codec.encode_call_ringing(call_id, self.bob_id, video)])
        self.assertEqual(self.bob.frames(), [codec.encode_call_incoming(call_id, self.alice_id, video, "alice")])
        return call_id

    def test_place_accept_media_end(self):
        call_id = self.ring()
        self.bob.send(b"\x03" + q(call_id))
        self.assertEqual(self.alice.frames(), [b"\x03" + q(call_id)])
        self.assertEqual(self.bob.frames(), [b"\x03" + q(call_id)])
        self.alice.send(b"\x06AUDIO1", b"\x06AUDIO2")
        self.bob.send(b"\x06VIDEO")
        self.assertEqual(self.bob.frames(), [b"\x06" + q(call_id) + b"AUDIO1", b"\x06" + q(call_id) + b"AUDIO2"])
        self.assertEqual(self.alice.frames(), [b"\x06" + q(call_id) + b"VIDEO"])
        self.alice.send(b"\x05" + q(call_id))
        self.assertEqual(self.alice.frames(), [codec.encode_call_end(call_id, "hangup")])
        self.assertEqual(self.bob.frames(), [codec.encode_call_end(call_id, "hangup")])
        # Media after the end is not relayed.
        self.alice.send(b"\x06late")
        self.assertEqual(self.bob.frames(), [])
        self.assertEqual(error_of(self.alice.frames()[0])[::2], (409, 0x06))

    def test_accept_by_caller_or_stranger_is_forbidden(self):
        call_id = self.ring()
        carol, _ = self.login("carol")
        self.alice.send(b"\x03" + q(call_id))
        carol.send(b"\x03" + q(call_id), b"\x05" + q(call_id))
        self.assertEqual(error_of(self.alice.frames()[0])[0], 403)
        self.assertEqual([error_of(f)[0] for f in carol.frames()], [403, 403])
        self.assertEqual(self.bob.frames(), [])

    def test_reject_with_and_without_reason(self):
        call_id = self.ring()
        self.bob.send(b"\x04" + q(call_id))
        self.assertEqual(self.alice.frames(), [codec.encode_call_reject(call_id, "rejected")])
        self.assertEqual(self.bob.frames(), [codec.encode_call_reject(call_id, "rejected")])
        call_id = self.ring()
        self.bob.send(b"\x04" + q(call_id) + q("in a meeting"))
        self.assertEqual(self.alice.frames(), [codec.encode_call_reject(call_id, "in a meeting")])

    def test_busy_offline_unknown_self(self):
        self.ring()
        carol, _ = self.login("carol")
        make_user(self.domain, "dave")
        for callee, reason in (("bob", "busy"), ("alice", "busy"), ("dave", "offline"),
                               ("nobody", "not_found"), ("carol", "self")):
            carol.send(b"\x02" + q(callee) + b"\x00")
            r = codec.Reader(carol.frames()[0], 1)
            self.assertEqual(carol.proto.factory.calls.call_of(carol.proto), None)
            r.qstr()
            self.assertEqual(r.qstr(), reason)
        self.assertEqual(self.domain.calls.count, 1)

    def test_ring_timeout(self):
        call_id = self.ring()
        self.clock.advance(30)
        self.assertEqual(self.alice.frames(), [codec.encode_call_reject(call_id, "timeout")])
        self.assertEqual(self.bob.frames(), [codec.encode_call_reject(call_id, "timeout")])

    def test_max_call_length(self):
        call_id = self.ring()
        self.bob.send(b"\x03" + q(call_id))
        self.alice.frames(), self.bob.frames()
        for _ in range(3600 // 60):  # heartbeats keep both connections alive
            self.clock.advance(60)
            self.alice.send(b"\x07")
            self.bob.send(b"\x07")
        frames = [f for f in self.alice.frames() if f != b"\x07"]
        self.assertEqual(frames, [codec.encode_call_end(call_id, "max_duration")])

    def test_disconnect_ends_call(self):
        call_id = self.ring()
        self.bob.send(b"\x03" + q(call_id))
        self.alice.frames()
        self.bob.proto.connectionLost(None)
        self.assertEqual(self.alice.frames(), [codec.encode_call_end(call_id, "disconnected")])
        self.assertEqual(self.domain.calls.count, 0)

    def test_slow_receiver_drops_media_not_memory(self):
        call_id = self.ring()
        self.bob.send(b"\x03" + q(call_id))
        self.alice.frames(), self.bob.frames()
        self.bob.transport.producer.pauseProducing()  # bob's send buffer is full
        self.alice.send(*([b"\x06" + b"m" * 100] * 50))
        self.assertEqual(self.bob.frames(), [])
        self.assertEqual(self.domain.calls.dropped_packets, 50)
        self.bob.transport.producer.resumeProducing()
        self.alice.send(b"\x06again")
        self.assertEqual(self.bob.frames(), [b"\x06" + q(call_id) + b"again"])

    def test_oversized_media_refused(self):
        call_id = self.ring()
        self.bob.send(b"\x03" + q(call_id))
        self.bob.frames()
        self.alice.frames()
        self.alice.send(b"\x06" + b"m" * (4096 - 512))
        self.assertEqual(error_of(self.alice.frames()[0])[0], 413)
        self.assertEqual(self.bob.frames(), [])


class SlowConsumerTests(ProtocolTestCase):
    factory_options = {"max_send_buffer": 1000}

    def test_control_messages_over_the_buffer_limit_abort(self):
        alice, _ = self.login("alice")
        bob, bob_id = self.login("bob")
        bob.transport.producer.pauseProducing()
        for _ in range(20):
            alice.send(b"\x00" + q(bob_id) + q("x" * 20))
        self.assertTrue(bob.closed)


class AnonymousTests(ProtocolTestCase):
    factory_options = {"allow_anonymous": True}

    def test_first_frame_carries_identity_and_message(self):
        bob, bob_id = self.login("bob")
        anon = self.connect()
        anon.send(b"\x00" + q("visitor") + q(bob_id) + q("hello"))
        acks = anon.frames()
        self.assertEqual(acks[0][0], MsgType.TEXT_ACK)
        r = codec.Reader(bob.frames()[0], 1)
        self.assertEqual((r.qstr(), r.qstr()), ("visitor", "hello"))
        anon.send(b"\x07")
        self.assertEqual(anon.frames(), [b"\x07"])

    def test_anonymous_cannot_displace_another(self):
        first = self.connect()
        first.send(b"\x07" + q("visitor"))
        self.assertEqual(first.frames(), [b"\x07"])
        second = self.connect()
        second.send(b"\x07" + q("visitor"))
        self.assertEqual(error_of(second.frames()[0])[0], 409)
        self.assertFalse(first.closed)

    def test_anonymous_cannot_claim_accounts(self):
        make_user(self.domain, "bob")
        for claimed in ("bob", "12", ""):
            anon = self.connect()
            anon.send(b"\x07" + q(claimed))
            self.assertIn(error_of(anon.frames()[0])[0], (400, 401))
            self.assertIsNone(anon.proto.identity)


class AnonymousDisabledTests(ProtocolTestCase):
    def test_refused(self):
        anon = self.connect()
        anon.send(b"\x07" + q("visitor"))
        self.assertEqual(error_of(anon.frames()[0])[0], 401)
        self.assertIsNone(anon.proto.identity)


class FileTests(ProtocolTestCase):
    def offer(self, conn, to, data, tid="t1", digest=None):
        conn.send(b"\x01\x01" + q(tid) + q(to) + q("../../etc/report.pdf") + codec.u64(len(data))
                  + (digest or hashlib.sha256(data).digest()))
        r = codec.Reader(conn.frames()[0], 2)
        self.assertEqual(r.qstr(), tid)
        return r.u64()

    def chunks(self, conn, data, tid="t1", size=10):
        for off in range(0, len(data), size):
            conn.send(b"\x01\x02" + q(tid) + codec.u64(off) + data[off:off + size])

    def received(self, conn):
        """(incoming fields, bytes, done) from the recipient's frames."""
        info, data, done = None, b"", False
        for f in conn.frames():
            self.assertEqual(f[0], MsgType.FILE)
            r = codec.Reader(f, 2)
            if f[1] == codec.FILE_INCOMING:
                info = (r.u64(), r.qstr(), r.qstr(), r.u64(), r.raw(32), r.qstr())
            elif f[1] == codec.FILE_DATA:
                r.u64()
                self.assertEqual(r.u64(), len(data))
                data += r.rest()
            elif f[1] == codec.FILE_DONE:
                done = True
        return info, data, done

    def test_fetch_of_an_id_no_database_holds_is_malformed(self):
        alice, _ = self.login("alice")
        alice.send(b"\x01\x04" + codec.u64(2**63) + codec.u64(0))
        code, message, offending = error_of(alice.frames()[0])
        self.assertEqual((code, offending), (400, MsgType.FILE))
        self.assertIn("out of range", message)
        alice.send(b"\x01\x04" + codec.u64(2**63 - 1) + codec.u64(0))
        self.assertEqual(error_of(alice.frames()[0])[:2], (404, "no such file"))
        self.assertFalse(alice.closed)

    def test_online_transfer(self):
        alice, alice_id = self.login("alice")
        bob, _ = self.login("bob")
        data = bytes(range(256)) * 3
        file_id = self.offer(alice, "bob", data)
        self.chunks(alice, data)
        complete = alice.frames()[-1]
        self.assertEqual(complete, codec.encode_file_complete("t1", file_id, True))
        info, got, done = self.received(bob)
        self.assertEqual(info, (file_id, alice_id, "report.pdf", len(data), hashlib.sha256(data).digest(), "alice"))
        self.assertEqual((got, done), (data, True))
        self.assertTrue(self.domain.store.get_file(file_id).result.delivered)

    def test_offline_recipient_gets_it_after_login(self):
        alice, _ = self.login("alice")
        make_user(self.domain, "bob")
        data = b"hello file" * 7
        file_id = self.offer(alice, "bob", data)
        self.chunks(alice, data)
        self.assertEqual(alice.frames()[-1], codec.encode_file_complete("t1", file_id, False))
        bob, _ = self.login("bob")
        info, got, done = self.received(bob)
        self.assertEqual((info[0], got, done), (file_id, data, True))

    def test_checksum_mismatch_discards(self):
        alice, _ = self.login("alice")
        bob, _ = self.login("bob")
        data = b"x" * 25
        file_id = self.offer(alice, "bob", data, digest=b"\x00" * 32)
        self.chunks(alice, data)
        self.assertEqual(alice.frames()[-1], codec.encode_file_failed("t1", "SHA-256 mismatch: file discarded"))
        self.assertIsNone(self.domain.store.get_file(file_id).result)
        self.assertEqual(bob.frames(), [])

    def test_out_of_order_and_excess(self):
        alice, _ = self.login("alice")
        self.login("bob")
        self.offer(alice, "bob", b"abc")
        alice.send(b"\x01\x02" + q("t1") + codec.u64(1) + b"bc")
        self.assertIn("expected offset 0", codec.Reader(alice.frames()[0], 2 + 4 + 4).qstr())
        self.offer(alice, "bob", b"abc", tid="t2")
        alice.send(b"\x01\x02" + q("t2") + codec.u64(0) + b"abcd")
        self.assertEqual(alice.frames()[0][1], codec.FILE_FAILED)
        self.assertEqual(self.domain.files.upload_count, 0)

    def test_offer_refusals(self):
        alice, _ = self.login("alice")
        alice.send(b"\x01\x01" + q("t1") + q("ghost") + q("a") + codec.u64(1) + b"\x00" * 32)
        self.assertEqual(alice.frames()[0], codec.encode_file_failed("t1", "unknown user 'ghost'"))
        alice.send(b"\x01\x01" + q("t1") + q("alice") + q("a") + codec.u64(1 << 40) + b"\x00" * 32)
        failed = codec.Reader(alice.frames()[0], 2)
        self.assertEqual(failed.qstr(), "t1")
        self.assertIn("larger than the limit", failed.qstr())

    def test_sender_disconnect_removes_partial(self):
        alice, _ = self.login("alice")
        self.login("bob")
        file_id = self.offer(alice, "bob", b"0123456789abc")
        self.chunks(alice, b"0123456789")
        alice.proto.connectionLost(None)
        self.assertIsNone(self.domain.store.get_file(file_id).result)
        self.assertEqual(self.domain.files.upload_count, 0)

    def test_delivery_waits_for_a_slow_recipient(self):
        alice, _ = self.login("alice")
        bob, _ = self.login("bob")
        bob.transport.producer.pauseProducing()
        data = b"z" * (5 * self.domain.files.chunk_size)  # five chunks to deliver
        self.offer(alice, "bob", data)
        self.chunks(alice, data, size=1000)
        # The offer notice and one chunk at most went out; the rest waits.
        before = bob.frames()
        self.assertLessEqual(len(before), 2)
        bob.pending = before
        bob.transport.producer.resumeProducing()
        info, got, done = self.received(bob)
        self.assertEqual((got, done), (data, True))  # and then all of it


class EveryNodeFileTests:
    """For FileTests whose storage every node reaches: a file sent through one node is fetched through another."""

    def other_node(self):
        """A second daemon's factory: its own domain on the same store and file storage."""
        options = self.domain_options()
        options.pop("s3_client", None)
        other = make_domain(self, clock=self.clock, store=self.domain.store, max_frame=4096, id_node=2,
                            s3_client=getattr(self, "s3", None), **options)
        factory = WeCompanyFactory(other, max_frame=4096, login_timeout=10, idle_timeout=90, message_rate=100,
                                   message_burst=200, auth_fail_delay=1.0)
        return Conn(factory, "10.0.1.1")

    def test_a_file_sent_through_one_node_is_received_through_another(self):
        alice, _ = self.login("alice")
        make_user(self.domain, "bob")
        data = bytes(range(256)) * 40
        file_id = self.offer(alice, "bob", data)
        self.chunks(alice, data, size=1000)
        self.assertEqual(alice.frames()[-1], codec.encode_file_complete("t1", file_id, False))
        bob = self.other_node()
        bob.send(bytes((MsgType.LOGIN,)) + s16("bob") + s16(PASSWORD))
        frames = bob.frames()
        self.assertTrue(auth_result(frames[0])[0])
        bob.pending = frames[1:]
        info, got, done = self.received(bob)  # right after the login, from the storage
        self.assertEqual((info[0], got, done), (file_id, data, True))
        self.assertTrue(self.domain.store.get_file(file_id).result.delivered)
        bob.send(b"\x01\x04" + codec.u64(file_id) + codec.u64(len(data) - 100))  # and the end again
        for f in bob.frames():
            if f[1] == codec.FILE_DATA:
                self.assertEqual(f[2 + 8:2 + 16], codec.u64(len(data) - 100))
                self.assertEqual(f[2 + 16:], data[-100:])


class SharedDirectoryFileTests(EveryNodeFileTests, FileTests):
    """Every FileTests case again, the files in a directory both nodes mount."""

    def domain_options(self) -> dict:
        if not hasattr(self, "shared"):
            self.shared = os.path.abspath(self.mktemp())
            os.makedirs(self.shared)
        return {"file_storage": f"file:{self.shared}"}


class S3FileTests(EveryNodeFileTests, FileTests):
    """Every FileTests case again, the files in (fake) S3; and what a failing object store does."""

    def domain_options(self) -> dict:
        if not hasattr(self, "s3"):
            self.s3 = FakeS3Client(buckets=["media"])
        return {"file_storage": "s3://media/wc", "s3_client": self.s3}

    def stored_for_bob(self, alice, data: bytes, tid: str = "t1") -> int:
        file_id = self.offer(alice, "bob", data, tid=tid)
        self.chunks(alice, data, tid=tid, size=1000)
        self.assertEqual(alice.frames()[-1], codec.encode_file_complete(tid, file_id, False))
        return file_id

    def test_the_store_down_when_an_upload_completes(self):
        alice, _ = self.login("alice")
        make_user(self.domain, "bob")
        data = b"q" * 2500
        file_id = self.offer(alice, "bob", data)
        self.s3.fail("PutObject", FakeConnectionError("Could not connect to the endpoint URL"))
        self.chunks(alice, data, size=1000)
        self.assertEqual(alice.frames(), [codec.encode_file_failed(
            "t1", "file storage is unavailable right now: try again later (file discarded)")])
        self.assertFalse(alice.closed)
        self.assertIsNone(self.domain.store.get_file(file_id).result)
        self.assertEqual((os.listdir(self.domain.files.spool_dir), self.s3.objects), ([], {}))
        self.assertEqual(self.domain.files.upload_count, 0)
        # Once it is back, the same transfer id works.
        self.s3.recover()
        self.stored_for_bob(alice, data)

    def test_the_store_down_while_a_file_is_delivered(self):
        alice, _ = self.login("alice")
        make_user(self.domain, "bob")
        data = b"r" * 3000
        file_id = self.stored_for_bob(alice, data)
        self.s3.fail("GetObject", FakeConnectionError("Read timeout on endpoint URL"))
        bob, _ = self.login("bob")
        frames = bob.frames()
        self.assertEqual(frames[0][:2], bytes((MsgType.FILE, codec.FILE_INCOMING)))
        self.assertEqual(error_of(frames[1]),
                         (503, f"file {file_id}: file storage is unavailable right now: try again later",
                          MsgType.FILE))
        self.assertEqual(len(frames), 2)
        self.assertFalse(bob.closed)
        self.assertFalse(self.domain.store.get_file(file_id).result.delivered)
        self.s3.recover()
        bob.send(b"\x01\x04" + codec.u64(file_id) + codec.u64(0))
        info, got, done = self.received(bob)
        self.assertEqual((got, done), (data, True))
        self.assertTrue(self.domain.store.get_file(file_id).result.delivered)

    def test_the_store_down_before_a_delivery_starts(self):
        alice, _ = self.login("alice")
        make_user(self.domain, "bob")
        first = self.stored_for_bob(alice, b"1" * 10, "t1")
        self.stored_for_bob(alice, b"2" * 10, "t2")
        self.s3.fail("HeadObject", FakeConnectionError("refused"))
        bob, _ = self.login("bob")
        # Only the error: no FILE_INCOMING, and the second file waits too.
        self.assertEqual([error_of(f)[0] for f in bob.frames()], [503])
        self.s3.recover()
        bob.send(b"\x01\x04" + codec.u64(first) + codec.u64(0))
        self.assertEqual(self.received(bob)[1:], (b"1" * 10, True))

    def test_a_file_the_store_lost(self):
        alice, _ = self.login("alice")
        make_user(self.domain, "bob")
        lost = self.stored_for_bob(alice, b"1" * 10, "t1")
        kept = self.stored_for_bob(alice, b"2" * 10, "t2")
        record = self.domain.store.get_file(lost).result
        del self.s3.objects[("media", f"wc/media/{record.path}")]
        bob, _ = self.login("bob")
        frames = bob.frames()
        self.assertEqual(error_of(frames[0]), (404, f"file {lost}: the file is missing from the file storage",
                                               MsgType.FILE))
        bob.pending = frames[1:]
        info, got, done = self.received(bob)  # the next one follows
        self.assertEqual((info[0], got, done), (kept, b"2" * 10, True))

    def test_delivery_reads_the_store_a_block_at_a_time(self):
        alice, _ = self.login("alice")
        make_user(self.domain, "bob")
        read_size = self.domain.files.read_size
        self.assertEqual(read_size % self.domain.files.chunk_size, 0)
        self.assertGreater(read_size, 250 * self.domain.files.chunk_size)  # 1 MiB of 4 KiB chunks
        data = os.urandom(2 * read_size + 5)
        file_id = self.offer(alice, "bob", data)
        self.chunks(alice, data, size=4000)
        self.s3.calls.clear()
        bob, _ = self.login("bob")
        info, got, done = self.received(bob)
        self.assertEqual((info[0], got, done), (file_id, data, True))
        ranges = [call[2] for call in self.s3.calls if call[0] == "GetObject"]
        self.assertEqual(ranges, [f"bytes=0-{read_size - 1}", f"bytes={read_size}-{2 * read_size - 1}",
                                  f"bytes={2 * read_size}-{3 * read_size - 1}"])


class ShutdownTests(ProtocolTestCase):
    def test_shutdown_tells_clients_and_closes(self):
        alice, _ = self.login("alice")
        pending = self.connect()
        d = self.factory.shutdown(grace=3)
        for conn in (alice, pending):
            self.assertEqual(error_of(conn.frames()[-1])[0], 503)
            self.assertTrue(conn.closed)
        self.assertNoResult(d)
        alice.proto.connectionLost(None)
        pending.proto.connectionLost(None)
        self.successResultOf(d)
        late = self.connect()
        self.assertEqual(error_of(late.frames()[-1])[0], 503)

    def test_stragglers_aborted_after_grace(self):
        alice, _ = self.login("alice")
        self.factory.shutdown(grace=3)
        self.clock.advance(3)
        self.assertTrue(alice.transport.disconnected)


class RealtimeTuningTests(ProtocolTestCase):
    def test_nodelay_and_send_buffer(self):
        class TunableTransport(StringTransport):
            nodelay = False
            bufferSize = 65536

            def setTcpNoDelay(self, enabled):
                self.nodelay = enabled

        proto = self.factory.buildProtocol(IPv4Address("TCP", "10.1.1.1", 1))
        transport = TunableTransport()
        proto.makeConnection(transport)
        self.assertTrue(transport.nodelay)
        self.assertEqual(transport.bufferSize, 256 << 10)


class FuzzTests(ProtocolTestCase):
    """
    Random frames at a logged-in connection (and one that is not): nothing
    escapes the protocol, every answer is a whole frame, and a connection
    is at worst closed, never left inconsistent.
    """

    def test_random_frames(self):
        from hypothesis import given, settings, strategies as st

        types = st.sampled_from(list(range(0x00, 0x12)) + [0x20, 0xFF])
        frames = st.lists(st.tuples(types, st.binary(max_size=80)), min_size=1, max_size=6)

        @settings(max_examples=300)
        @given(frames, st.booleans(), st.sampled_from([1, 5, 1000]))
        def check(bodies, logged_in, cut):
            n = next(self._names)
            host = f"10.{n // 250 + 1}.{n % 250}.9"
            conn = self.login(f"fuzz{n}", host=host)[0] if logged_in else self.connect(host)
            data = b"".join(frame(bytes((t,)) + rest) for t, rest in bodies)
            for start in range(0, len(data), cut):
                conn.proto.dataReceived(data[start:start + cut])
            parse_frames(conn.transport.value())  # asserts every answer is a whole frame
            self.clock.advance(2)  # a close after a failed login comes a moment later
            if conn.closed:
                conn.proto.connectionLost(None)
            self.assertEqual(self.flushLoggedErrors(), [])

        self._names = iter(range(10**6))
        check()
