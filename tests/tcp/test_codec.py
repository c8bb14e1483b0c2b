"""The binary codec against hand-written byte strings."""

from twisted.trial.unittest import SynchronousTestCase

from wecompany.errors import MalformedMessage
from wecompany.tcp import codec
from wecompany.tcp.codec import MsgType


def q(s: str) -> bytes:
    """QDataStream << QString, written out by hand."""
    b = s.encode("utf-16-be")
    return len(b).to_bytes(4, "big") + b


def s16(s: str) -> bytes:
    b = s.encode("utf-8")
    return len(b).to_bytes(2, "big") + b


class FieldTests(SynchronousTestCase):
    def test_qstr_bytes(self):
        self.assertEqual(codec.qstr("ab"), b"\x00\x00\x00\x04\x00a\x00b")
        self.assertEqual(codec.qstr(""), b"\x00\x00\x00\x00")
        # Outside the BMP: a surrogate pair, 4 bytes.
        self.assertEqual(codec.qstr("\U0001F600"), b"\x00\x00\x00\x04\xd8\x3d\xde\x00")

    def test_null_qstr_decodes_empty(self):
        r = codec.Reader(b"\xff\xff\xff\xff")
        self.assertEqual(r.qstr(), "")
        self.assertTrue(r.at_end())

    def test_str16_bytes(self):
        self.assertEqual(codec.str16("héllo"), b"\x00\x06h\xc3\xa9llo")

    def test_integers(self):
        r = codec.Reader(b"\x01\x02\x03\x00\x00\x00\x04" + (5).to_bytes(8, "big"))
        self.assertEqual((r.u8(), r.u16(), r.u32(), r.u64()), (1, 0x203, 4, 5))
        r.end()

    def test_short_reads(self):
        for data, read in [(b"", "u8"), (b"\x00", "u16"), (b"\x00\x00\x00", "u32"),
                           (b"\x00" * 7, "u64"), (b"\x00\x00\x00\x04\x00a", "qstr"),
                           (b"\x00\x05abc", "str16")]:
            r = codec.Reader(data)
            self.assertRaises(MalformedMessage, getattr(r, read))

    def test_invalid_text(self):
        self.assertRaises(MalformedMessage, codec.Reader(b"\x00\x00\x00\x03abc").qstr)  # odd length
        self.assertRaises(MalformedMessage, codec.Reader(b"\x00\x00\x00\x02\xdc\x00").qstr)  # lone surrogate
        self.assertRaises(MalformedMessage, codec.Reader(b"\x00\x02\xc3\x28").str16)  # bad UTF-8

    def test_huge_length_does_not_allocate(self):
        r = codec.Reader(b"\x7f\xff\xff\xfe" + b"ab")
        self.assertRaises(MalformedMessage, r.qstr)


class DecodeTests(SynchronousTestCase):
    def test_text(self):
        self.assertEqual(codec.decode(b"\x00" + q("42") + q("hi")), (MsgType.TEXT, codec.Text("42", "hi")))

    def test_text_broadcast(self):
        self.assertEqual(codec.decode(b"\x00" + q("*") + q("all"))[1], codec.Text("*", "all"))

    def test_call_request(self):
        self.assertEqual(codec.decode(b"\x02" + q("bob") + b"\x01")[1], codec.CallRequest("bob", True))
        self.assertEqual(codec.decode(b"\x02" + q("bob") + b"\x00")[1], codec.CallRequest("bob", False))

    def test_call_accept_end(self):
        self.assertEqual(codec.decode(b"\x03" + q("c1"))[1], codec.CallAccept("c1"))
        self.assertEqual(codec.decode(b"\x05" + q("c1"))[1], codec.CallEnd("c1"))

    def test_call_reject_reason_optional(self):
        self.assertEqual(codec.decode(b"\x04" + q("c1") + q("no"))[1], codec.CallReject("c1", "no"))
        self.assertEqual(codec.decode(b"\x04" + q("c1"))[1], codec.CallReject("c1", ""))

    def test_heartbeat(self):
        self.assertEqual(codec.decode(b"\x07"), (MsgType.HEARTBEAT, codec.Heartbeat()))

    def test_login_register_token(self):
        self.assertEqual(codec.decode(b"\x08" + s16("alice") + s16("pw"))[1], codec.Login("alice", "pw"))
        self.assertEqual(codec.decode(b"\x09" + s16("alice") + s16("pw"))[1], codec.Register("alice", "pw"))
        self.assertEqual(codec.decode(b"\x0b" + s16("tok"))[1], codec.AuthToken("tok"))

    def test_password_not_in_repr(self):
        self.assertNotIn("secret", repr(codec.Login("a", "secret")))
        self.assertNotIn("tok", repr(codec.AuthToken("tok")))

    def test_online_list(self):
        self.assertEqual(codec.decode(b"\x0f")[1], codec.OnlineListRequest(0, 100))
        self.assertEqual(codec.decode(b"\x0f\x00\x00\x00\x0a\x00\x14")[1], codec.OnlineListRequest(10, 20))

    def test_contacts(self):
        self.assertEqual(codec.decode(b"\x11\x01" + q("bob"))[1], codec.ContactsRequest(1, user="bob"))
        self.assertEqual(codec.decode(b"\x11\x02" + q("bob"))[1], codec.ContactsRequest(2, user="bob"))
        self.assertEqual(codec.decode(b"\x11\x03")[1], codec.ContactsRequest(3))
        self.assertEqual(codec.decode(b"\x11\x03\x00\x00\x00\x32\x00\x0a")[1],
                         codec.ContactsRequest(3, offset=50, limit=10))
        self.assertRaises(MalformedMessage, codec.decode, b"\x11\x09")

    def test_malformed_bodies_of_each_type(self):
        bad = [
            b"",  # empty
            b"\x00" + q("42"),  # TEXT without text
            b"\x00" + q("42") + q("hi") + b"x",  # trailing byte
            b"\x02" + q("bob"),  # CALL_REQUEST without is_video
            b"\x03",  # CALL_ACCEPT without id
            b"\x04\x00\x00",  # CALL_REJECT truncated length
            b"\x05" + q("c") + b"\x00",  # CALL_END trailing
            b"\x07\x00",  # HEARTBEAT with a body
            b"\x08" + s16("alice"),  # LOGIN without password
            b"\x09\x00",  # REGISTER truncated
            b"\x0b\x00\x09abc",  # AUTH_TOKEN past the end
            b"\x0f\x00\x00",  # ONLINE_LIST truncated offset
            b"\x11",  # CONTACTS without op
        ]
        for body in bad:
            self.assertRaises(MalformedMessage, codec.decode, body)

    def test_server_types_and_unknown_are_unknown(self):
        for t in (0x0A, 0x0C, 0x0D, 0x0E, 0x10, 0x12, 0x7F, 0xFF):
            self.assertRaises(codec.UnknownType, codec.decode, bytes((t,)))


class EncodeTests(SynchronousTestCase):
    def test_text(self):
        self.assertEqual(
            codec.encode_text("7", "hi", 9, 1000, codec.TEXT_FLAG_STORED, "bob"),
            b"\x00" + q("7") + q("hi") + (9).to_bytes(8, "big") + (1000).to_bytes(8, "big") + b"\x02" + q("bob"))

    def test_calls(self):
        self.assertEqual(codec.encode_call_incoming("c", "7", True, "bob"), b"\x02" + q("c") + q("7") + b"\x01" + q("bob"))
        self.assertEqual(codec.encode_call_id(MsgType.CALL_ACCEPT, "c"), b"\x03" + q("c"))
        self.assertEqual(codec.encode_call_reject("c", "busy"), b"\x04" + q("c") + q("busy"))
        self.assertEqual(codec.encode_call_end("c", "hangup"), b"\x05" + q("c") + q("hangup"))
        self.assertEqual(codec.encode_call_ringing("c", "8", False), b"\x0c" + q("c") + q("8") + b"\x00")
        self.assertEqual(codec.media_prefix("c") + b"DATA", b"\x06" + q("c") + b"DATA")

    def test_auth(self):
        self.assertEqual(codec.encode_auth_ok("tok", "12"), b"\x0a\x01" + s16("tok") + s16("12"))
        self.assertEqual(codec.encode_auth_failed("nope"), b"\x0a\x00" + s16("nope"))

    def test_error(self):
        self.assertEqual(codec.encode_error(400, "bad", 0x02), b"\x0d\x01\x90" + q("bad") + b"\x02")
        self.assertEqual(codec.encode_error(1003, "x")[-1], 0xFF)

    def test_presence_list_ack(self):
        from wecompany.domain.sessions import Identity
        self.assertEqual(codec.encode_presence("7", "bob", True), b"\x0e" + q("7") + q("bob") + b"\x01")
        self.assertEqual(codec.encode_online_list(3, 1, [Identity("7", "bob", 7)]),
                         b"\x0f\x00\x00\x00\x03\x00\x00\x00\x01\x00\x01" + q("7") + q("bob"))
        self.assertEqual(codec.encode_text_ack(5, "7", 1, 1),
                         b"\x10" + (5).to_bytes(8, "big") + q("7") + b"\x01\x00\x00\x00\x01")
        self.assertEqual(codec.encode_contact(1, "7", "bob", False), b"\x11\x01" + q("7") + q("bob") + b"\x00")
        self.assertEqual(codec.encode_contact_list(1, 0, [(Identity("7", "bob", 7), True)]),
                         b"\x11\x03\x00\x00\x00\x01\x00\x00\x00\x00\x00\x01" + q("7") + q("bob") + b"\x01")

    def test_roundtrip_client_messages(self):
        self.assertEqual(codec.decode(b"\x00" + codec.qstr("x") + codec.qstr("y"))[1], codec.Text("x", "y"))


class DecodeServerTests(SynchronousTestCase):
    """decode_server inverts every encode_* function."""

    def test_every_server_message(self):
        from wecompany.domain.sessions import Identity
        cases = [
            (codec.encode_text("7", "hi", 9, 10, 2, "bob"),
             {"from": "7", "text": "hi", "message_id": 9, "sent_at_ms": 10, "flags": 2, "from_username": "bob"}),
            (b"\x00" + q("7") + q("legacy"), {"from": "7", "text": "legacy", "message_id": None,
                                              "sent_at_ms": None, "flags": None, "from_username": None}),
            (codec.encode_call_incoming("c", "7", True, "bob"),
             {"call_id": "c", "caller": "7", "is_video": True, "caller_username": "bob"}),
            (codec.encode_call_id(MsgType.CALL_ACCEPT, "c"), {"call_id": "c"}),
            (codec.encode_call_reject("c", "busy"), {"call_id": "c", "reason": "busy"}),
            (codec.encode_call_end("c", "hangup"), {"call_id": "c", "reason": "hangup"}),
            (codec.media_prefix("c") + b"xyz", {"call_id": "c", "media": b"xyz"}),
            (codec.HEARTBEAT_BODY, {}),
            (codec.encode_auth_ok("t", "7"), {"ok": True, "token": "t", "user_id": "7"}),
            (codec.encode_auth_failed("no"), {"ok": False, "error": "no"}),
            (codec.encode_call_ringing("c", "8", False), {"call_id": "c", "callee": "8", "is_video": False}),
            (codec.encode_error(404, "x", 2), {"code": 404, "message": "x", "offending_type": 2}),
            (codec.encode_presence("7", "bob", True), {"user_id": "7", "username": "bob", "online": True}),
            (codec.encode_online_list(5, 1, [Identity("7", "bob", 7)]),
             {"total": 5, "offset": 1, "users": [("7", "bob")]}),
            (codec.encode_text_ack(5, "7", 1, 1), {"message_id": 5, "to": "7", "status": 1, "recipients": 1}),
            (codec.encode_contact(1, "7", "bob", True), {"op": 1, "user_id": "7", "username": "bob", "online": True}),
            (codec.encode_contact_list(1, 0, [(Identity("7", "bob", 7), False)]),
             {"op": 3, "total": 1, "offset": 0, "contacts": [("7", "bob", False)]}),
            (codec.encode_file_accepted("t", 3, 100), {"op": 0x11, "transfer_id": "t", "file_id": 3, "chunk_size": 100}),
            (codec.encode_file_complete("t", 3, True), {"op": 0x13, "transfer_id": "t", "file_id": 3, "delivered": True}),
            (codec.encode_file_failed("t", "bad"), {"op": 0x14, "transfer_id": "t", "reason": "bad"}),
            (codec.encode_file_incoming(3, "7", "a.txt", 5, b"h" * 32, "bob"),
             {"op": 0x21, "file_id": 3, "sender": "7", "name": "a.txt", "size": 5, "sha256": b"h" * 32,
              "sender_username": "bob"}),
            (codec.encode_file_data(3, 10, b"dd"), {"op": 0x22, "file_id": 3, "offset": 10, "data": b"dd"}),
            (codec.encode_file_done(3), {"op": 0x23, "file_id": 3}),
        ]
        for body, fields in cases:
            msg = codec.decode_server(body)
            self.assertEqual((msg.type, msg.fields), (body[0], fields))

    def test_bad_server_bodies(self):
        for body in (b"", b"\x42", b"\x0d\x00", b"\x01\x99", b"\x07x"):
            self.assertRaises(MalformedMessage, codec.decode_server, body)


class FuzzTests(SynchronousTestCase):
    """
    The frame decoder fuzzed (a bounded, derandomized number of cases, in
    CI too): whatever a client sends, the answer is a message or a
    MalformedMessage, never another exception.
    """

    def test_any_body_of_any_type(self):
        from hypothesis import given, settings, strategies as st

        types = st.sampled_from(sorted(codec.DECODERS) + [0x00, 0x20, 0xFF])

        @settings(max_examples=2000)
        @given(types, st.binary(max_size=120))
        def check(t, rest):
            try:
                codec.decode(bytes((t,)) + rest)
            except MalformedMessage:
                pass

        check()

    def test_file_bodies(self):
        from hypothesis import given, settings, strategies as st

        @settings(max_examples=1000)
        @given(st.binary(max_size=120))
        def check(rest):
            try:
                codec.decode_file(bytes((MsgType.FILE,)) + rest)
            except MalformedMessage:
                pass

        check()

    def test_plausible_bodies(self):
        # Fields of the right kinds in random order and number reach further into each decoder.
        from hypothesis import given, settings, strategies as st
        fields = st.one_of(st.text(max_size=10).map(q), st.text(max_size=10).map(s16),
                           st.integers(0, 255).map(lambda n: bytes((n,))),
                           st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
                           st.integers(0, 2**64 - 1).map(lambda n: n.to_bytes(8, "big")),
                           st.just(b"\xff\xff\xff\xff"), st.binary(min_size=32, max_size=32))

        @settings(max_examples=2000)
        @given(st.sampled_from(sorted(codec.DECODERS) + [MsgType.FILE]), st.lists(fields, max_size=6))
        def check(t, parts):
            body = bytes((t,)) + b"".join(parts)
            try:
                codec.decode_file(body) if t == MsgType.FILE else codec.decode(body)
            except MalformedMessage:
                pass

        check()
