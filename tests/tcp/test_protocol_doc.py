"""
``docs/protocol.rst`` is the contract of the binary protocol: keep it true.

The document marks its machine-checked parts (see the comment at its top):
hex wire examples after ``.. wire-example: NAME DIRECTION`` lines, the
error table and the limits table between begin/end comments. These tests
decode every client example with the real codec, compare every server
example with the real encoders called with explicit arguments, and check
type numbers, error codes, call reasons and limits against the code.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re

import attrs
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain
from wecompany import errors
from wecompany.config import Config
from wecompany.domain import calls as calls_module
from wecompany.domain import chat as chat_module
from wecompany.domain import files as files_module
from wecompany.domain.calls import CallService
from wecompany.domain.files import FileService
from wecompany.domain.recording import CallRecorder
from wecompany.domain.sessions import Identity
from wecompany.domain.tokens import TokenIssuer
from wecompany.tcp import codec
from wecompany.tcp import protocol as protocol_module
from wecompany.tcp.codec import MsgType
from wecompany.tcp.protocol import WeCompanyFactory

DOC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                        "docs", "protocol.rst")

DIRECTIONS = ("c2s", "s2c", "c2s-anonymous")

CALL_ID = "5f2a9c0e7b1d4e63"
MESSAGE_ID = 662082630451200000  # IdGenerator's id for 2025-01-01T00:00:00Z, node 0
SENT_AT_MS = 1735689600000  # 2025-01-01T00:00:00Z
HELLO_SHA256 = hashlib.sha256(b"hello").digest()
TOKEN = "aaa.bbb.ccc"


def read_doc() -> str:
    with open(DOC_PATH, encoding="utf-8") as f:
        return f.read()


class DocFormatError(Exception):
    pass


def parse_hex_block(lines: list[str]) -> bytes:
    """Hex bytes of a literal block; text after ``#`` on a line is a comment."""
    out = bytearray()
    for line in lines:
        data = line.split("#", 1)[0]
        for token in data.split():
            if not re.fullmatch(r"[0-9a-fA-F]{2}", token):
                raise DocFormatError(f"not a hex byte: {token!r} in line {line!r}")
            out.append(int(token, 16))
    return bytes(out)


def wire_examples(text: str) -> dict[str, tuple[str, bytes]]:
    """NAME -> (direction, whole frame) for every ``.. wire-example:`` marker."""
    lines = text.split("\n")
    examples: dict[str, tuple[str, bytes]] = {}
    marker = re.compile(r"^\.\. wire-example: (\S+) (\S+)\s*$")
    for i, line in enumerate(lines):
        m = marker.match(line)
        if m is None:
            continue
        name, direction = m.groups()
        if name in examples:
            raise DocFormatError(f"wire example {name!r} appears twice")
        if direction not in DIRECTIONS:
            raise DocFormatError(f"wire example {name!r}: unknown direction {direction!r}")
        j = i + 1
        while j < len(lines) and not lines[j].rstrip().endswith("::"):
            if marker.match(lines[j]):
                raise DocFormatError(f"wire example {name!r} has no literal block")
            j += 1
        if j == len(lines):
            raise DocFormatError(f"wire example {name!r} has no literal block")
        j += 1
        block: list[str] = []
        while j < len(lines) and (not lines[j].strip() or lines[j][0] in " \t"):
            block.append(lines[j])
            j += 1
        frame = parse_hex_block(block)
        if not frame:
            raise DocFormatError(f"wire example {name!r} has an empty literal block")
        examples[name] = (direction, frame)
    return examples


def table_lines(text: str, name: str) -> list[str]:
    """The lines between the comment lines ``.. NAME-begin`` and ``.. NAME-end``."""
    lines = text.split("\n")
    begin = [i for i, line in enumerate(lines) if line.strip() == f".. {name}-begin"]
    end = [i for i, line in enumerate(lines) if line.strip() == f".. {name}-end"]
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise DocFormatError(f"need exactly one '.. {name}-begin' line before one '.. {name}-end' line")
    return lines[begin[0] + 1:end[0]]


def split_frame(test: SynchronousTestCase, name: str, frame: bytes) -> bytes:
    test.assertGreaterEqual(len(frame), 4, f"{name}: no length prefix")
    length = int.from_bytes(frame[:4], "big")
    body = frame[4:]
    test.assertEqual(length, len(body), f"{name}: length prefix {length} but {len(body)} body bytes")
    test.assertLessEqual(length, 1 << 20, f"{name}: over the default frame limit")
    return body


# What each client-to-server example must decode to, stated here, not taken
# from the document.
CLIENT_EXAMPLES = {
    "text": (MsgType.TEXT, codec.Text("42", "hello")),
    "text-broadcast": (MsgType.TEXT, codec.Text("*", "hi all")),
    "login": (MsgType.LOGIN, codec.Login("alice", "S3cure!pw")),
    "register": (MsgType.REGISTER, codec.Register("alice", "S3cure!pw")),
    "auth-token": (MsgType.AUTH_TOKEN, codec.AuthToken(TOKEN)),
    "heartbeat": (MsgType.HEARTBEAT, codec.Heartbeat()),
    "call-request": (MsgType.CALL_REQUEST, codec.CallRequest("42", True)),
    "call-accept": (MsgType.CALL_ACCEPT, codec.CallAccept(CALL_ID)),
    "call-reject-legacy": (MsgType.CALL_REJECT, codec.CallReject(CALL_ID, "")),
    "call-reject": (MsgType.CALL_REJECT, codec.CallReject(CALL_ID, "in a meeting")),
    "call-end": (MsgType.CALL_END, codec.CallEnd(CALL_ID)),
    "online-list-request": (MsgType.ONLINE_LIST, codec.OnlineListRequest(offset=0, limit=100)),
    "contacts-add": (MsgType.CONTACTS, codec.ContactsRequest(codec.CONTACT_ADD, user="bob")),
    "contacts-list-request": (MsgType.CONTACTS,
                              codec.ContactsRequest(codec.CONTACT_LIST, offset=0, limit=50)),
}

# FILE bodies are decoded by codec.decode_file.
CLIENT_FILE_EXAMPLES = {
    "file-offer": codec.FileOffer("t1", "42", "hello.txt", 5, HELLO_SHA256),
    "file-chunk": codec.FileChunkIn("t1", 0, b"hello"),
    "file-cancel": codec.FileCancel("t1"),
    "file-fetch": codec.FileFetch(17, 0),
}

# MEDIA_DATA bodies are relayed, not decoded: [u8 0x06][raw media].
CLIENT_MEDIA_EXAMPLES = {
    "media": b"\xde\xad\xbe\xef",
}

# Anonymous first frames: [u8 type][qstr user_id][rest of a normal message].
ANONYMOUS_EXAMPLES = {
    "anonymous-text": ("guest", (MsgType.TEXT, codec.Text("42", "hi"))),
}

# What each server-to-client example must equal: the encoders' output.
SERVER_EXAMPLES = {
    "auth-ok": lambda: codec.encode_auth_ok(TOKEN, "7"),
    "auth-failed": lambda: codec.encode_auth_failed("invalid password"),
    "heartbeat-echo": lambda: codec.HEARTBEAT_BODY,
    "text-ack": lambda: codec.encode_text_ack(MESSAGE_ID, "42", chat_module.DELIVERED, 1),
    "text-incoming": lambda: codec.encode_text("7", "hello", MESSAGE_ID, SENT_AT_MS,
                                               codec.TEXT_FLAG_STORED, "alice"),
    "error": lambda: codec.encode_error(404, "unknown user 'carol'", MsgType.TEXT),
    "error-login-timeout": lambda: codec.encode_error(
        protocol_module.LoginTimeout().wire_code, protocol_module.LoginTimeout().message, codec.NO_TYPE),
    "call-ringing": lambda: codec.encode_call_ringing(CALL_ID, "42", True),
    "call-incoming": lambda: codec.encode_call_incoming(CALL_ID, "7", True, "alice"),
    "call-accepted": lambda: codec.encode_call_id(MsgType.CALL_ACCEPT, CALL_ID),
    "call-rejected-busy": lambda: codec.encode_call_reject("0c1d2e3f4a5b6c7d", "busy"),
    "call-ended": lambda: codec.encode_call_end(CALL_ID, "hangup"),
    "media-relayed": lambda: codec.media_prefix(CALL_ID) + b"\xde\xad\xbe\xef",
    "presence": lambda: codec.encode_presence("42", "bob", True),
    "online-list": lambda: codec.encode_online_list(
        2, 0, [Identity("7", "alice", 7), Identity("42", "bob", 42)]),
    "contacts-added": lambda: codec.encode_contact(codec.CONTACT_ADD, "42", "bob", True),
    "contacts-list": lambda: codec.encode_contact_list(1, 0, [(Identity("42", "bob", 42), False)]),
    "file-accepted": lambda: codec.encode_file_accepted("t1", 17, 65536),
    "file-complete": lambda: codec.encode_file_complete("t1", 17, True),
    "file-failed": lambda: codec.encode_file_failed("t1", "SHA-256 mismatch: file discarded"),
    "file-incoming": lambda: codec.encode_file_incoming(17, "7", "hello.txt", 5, HELLO_SHA256, "alice"),
    "file-data": lambda: codec.encode_file_data(17, 0, b"hello"),
    "file-done": lambda: codec.encode_file_done(17),
}


def expected_direction(name: str) -> str:
    if name in SERVER_EXAMPLES:
        return "s2c"
    if name in ANONYMOUS_EXAMPLES:
        return "c2s-anonymous"
    return "c2s"


class ParserTests(SynchronousTestCase):
    """The example parser itself, so a broken parser cannot hide a broken document."""

    def test_parses_marker_caption_and_block(self):
        text = "\n".join([
            ".. wire-example: hb c2s",
            "",
            ".. _ex-hb:",
            "",
            "HEARTBEAT::",
            "",
            "   00 00 00 01   # length",
            "   07            # type",
            "",
            "After.",
        ])
        self.assertEqual(wire_examples(text), {"hb": ("c2s", b"\x00\x00\x00\x01\x07")})

    def test_rejects_bad_hex_and_missing_blocks(self):
        self.assertRaises(DocFormatError, wire_examples, ".. wire-example: x c2s\n\nX::\n\n   00 0g\n")
        self.assertRaises(DocFormatError, wire_examples, ".. wire-example: x c2s\n\nno block\n")
        self.assertRaises(DocFormatError, wire_examples, ".. wire-example: x sideways\n\nX::\n\n   00\n")


class WireExampleTests(SynchronousTestCase):
    def setUp(self):
        self.doc = read_doc()
        self.examples = wire_examples(self.doc)

    def test_every_example_is_known_and_every_known_example_is_there(self):
        known = (set(CLIENT_EXAMPLES) | set(CLIENT_FILE_EXAMPLES) | set(CLIENT_MEDIA_EXAMPLES)
                 | set(ANONYMOUS_EXAMPLES) | set(SERVER_EXAMPLES))
        self.assertEqual(set(self.examples), known)

    def test_directions(self):
        for name, (direction, _) in self.examples.items():
            self.assertEqual(direction, expected_direction(name), name)

    def test_length_prefixes(self):
        for name, (_, frame) in self.examples.items():
            split_frame(self, name, frame)

    def test_client_examples_decode(self):
        for name, expected in CLIENT_EXAMPLES.items():
            body = split_frame(self, name, self.examples[name][1])
            self.assertEqual(codec.decode(body), expected, name)

    def test_client_file_examples_decode(self):
        for name, expected in CLIENT_FILE_EXAMPLES.items():
            body = split_frame(self, name, self.examples[name][1])
            self.assertEqual(body[0], MsgType.FILE, name)
            self.assertEqual(codec.decode_file(body), expected, name)

    def test_client_media_examples(self):
        for name, payload in CLIENT_MEDIA_EXAMPLES.items():
            body = split_frame(self, name, self.examples[name][1])
            self.assertEqual(body, bytes((MsgType.MEDIA_DATA,)) + payload, name)

    def test_anonymous_first_frames(self):
        for name, (user_id, expected) in ANONYMOUS_EXAMPLES.items():
            body = split_frame(self, name, self.examples[name][1])
            self.assertLessEqual(body[0], MsgType.HEARTBEAT, name)
            r = codec.Reader(body, 1)
            self.assertEqual(r.qstr("user id"), user_id, name)
            # What the server then handles as a normal message of that type.
            self.assertEqual(codec.decode(bytes((body[0],)) + body[r.pos:]), expected, name)

    def test_server_examples_match_the_encoders(self):
        for name, encode in SERVER_EXAMPLES.items():
            body = split_frame(self, name, self.examples[name][1])
            self.assertEqual(body.hex(" "), encode().hex(" "), name)

    def test_examples_cover_every_type_and_file_op(self):
        types = {frame[4] for _, frame in self.examples.values()}
        self.assertEqual(types, {int(t) for t in MsgType})
        ops = {frame[5] for _, frame in self.examples.values() if frame[4] == MsgType.FILE}
        self.assertEqual(ops, set(file_ops().values()))

    def test_required_examples_are_present(self):
        for name in ("text", "login", "call-request", "heartbeat", "error", "text-ack", "file-offer"):
            self.assertIn(name, self.examples)


def file_ops() -> dict[str, int]:
    return {name: value for name, value in vars(codec).items()
            if name.startswith("FILE_") and isinstance(value, int) and not isinstance(value, bool)}


class ConstantsTests(SynchronousTestCase):
    def setUp(self):
        self.lines = read_doc().split("\n")

    def assertRow(self, name: str, value: int) -> None:
        """Some line of the document names the constant and its hex value (0x0A)."""
        hex_value = f"0x{value:02X}"
        pattern = re.compile(rf"(?<![0-9A-Za-z_]){re.escape(hex_value)}(?![0-9A-Fa-f]).*\b{name}\b"
                             rf"|\b{name}\b.*(?<![0-9A-Za-z_]){re.escape(hex_value)}(?![0-9A-Fa-f])")
        self.assertTrue(any(pattern.search(line) for line in self.lines),
                        f"no line of the document has {name} with {hex_value}")

    def test_message_types(self):
        for t in MsgType:
            # The message type table: "0x0A  AUTH_RESULT  ..."
            row = re.compile(rf"^0x{t.value:02X}\s+{t.name}\s")
            self.assertTrue(any(row.match(line) for line in self.lines), t.name)
            self.assertRow(t.name, t.value)

    def test_file_ops(self):
        ops = file_ops()
        self.assertEqual(len(ops), 10)
        for name, value in ops.items():
            self.assertRow(name, value)

    def test_contacts_ops_and_text_flags(self):
        for name in ("CONTACT_ADD", "CONTACT_REMOVE", "CONTACT_LIST", "TEXT_FLAG_BROADCAST",
                     "TEXT_FLAG_STORED"):
            self.assertRow(name, getattr(codec, name))

    def test_no_type(self):
        self.assertEqual(codec.NO_TYPE, 0xFF)
        self.assertIn("0xFF", "\n".join(self.lines))

    def test_text_ack_statuses(self):
        doc = "\n".join(self.lines)
        self.assertEqual((chat_module.DELIVERED, chat_module.STORED), (0, 1))
        self.assertIn("0 = delivered", doc)
        self.assertIn("1 = stored", doc)

    def test_call_reasons(self):
        """Every reason the document lists is one the call code uses, and the reverse."""
        doc = "\n".join(self.lines)
        source = inspect.getsource(calls_module)
        reasons = ("busy", "offline", "not_found", "timeout", "self", "rejected", "hangup",
                   "cancelled", "declined", "disconnected", "max_duration", "shutdown", "replaced")
        # Every identifier-like string literal of the call service is a reason,
        # except the state names, the recording directions and the operations.
        used = set(re.findall(r'"([a-z_]+)"', source)) - {
            calls_module.RINGING, calls_module.ACTIVE, "caller", "callee", *calls_module.OPERATIONS}
        self.assertEqual(set(reasons) - {"replaced"}, used)
        # The chat service ends the old session's call with "replaced".
        self.assertIn('"replaced"', inspect.getsource(chat_module.ChatService.open_session))
        for reason in reasons:
            self.assertIn(f"``{reason}``", doc)


def error_classes():
    modules = {m.__name__ for m in (errors, protocol_module, chat_module, files_module, codec)}
    seen, todo = set(), [errors.WeCompanyError]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in seen if cls.__module__ in modules]


class ErrorTableTests(SynchronousTestCase):
    def setUp(self):
        rows = table_lines(read_doc(), "error-table")
        self.codes = {int(m.group(1)) for m in (re.match(r"^(\d{3,5})\s", line) for line in rows) if m}

    def test_codes_exist_in_the_code(self):
        producible = set()
        for cls in error_classes():
            producible.add(cls.code)
            if cls.error_code is not None:
                producible.add(cls.error_code)
        self.assertTrue(self.codes)
        self.assertEqual(self.codes - producible, set())

    def test_every_status_of_the_tcp_error_classes_is_listed(self):
        self.assertEqual({cls.code for cls in error_classes()} - self.codes, set())

    def test_specific_classes(self):
        self.assertEqual(protocol_module.LoginTimeout().wire_code, 408)
        self.assertEqual(protocol_module.IdleTimeout().wire_code, 408)
        self.assertEqual(chat_module.SessionReplaced().wire_code, 409)
        self.assertEqual(errors.MalformedMessage().wire_code, 400)
        self.assertEqual(errors.TooLarge().wire_code, 413)
        self.assertEqual(errors.RateLimited().wire_code, 429)
        self.assertEqual(errors.Unavailable().wire_code, 503)
        self.assertEqual(errors.InternalError().wire_code, 500)
        self.assertEqual(errors.InvalidCredentials(error_code=errors.USER_NOT_FOUND).wire_code, 1003)


def default(func, name):
    return inspect.signature(func).parameters[name].default


def config_default(name):
    return attrs.fields_dict(Config)[name].default


class LimitsTableTests(SynchronousTestCase):
    def setUp(self):
        self.rows = [line for line in table_lines(read_doc(), "limits-table") if line.strip()]

    def assertLimit(self, label: str, text: str) -> None:
        rows = [line for line in self.rows if line.startswith(label)]
        self.assertEqual(len(rows), 1, f"limits table: one row starting {label!r}")
        self.assertIn(text, rows[0], label)

    def test_protocol_limits(self):
        factory = WeCompanyFactory.__init__
        self.assertEqual(default(factory, "max_frame"), config_default("max_frame"))
        self.assertEqual(config_default("max_frame"), 1048576)
        self.assertLimit("Frame body size", "1048576 bytes")
        self.assertLimit("Frame body size", "``--max-frame``")
        self.assertEqual((default(factory, "login_timeout"), config_default("login_timeout")), (10.0, 10.0))
        self.assertLimit("Login timeout", "10 s")
        self.assertEqual((default(factory, "idle_timeout"), config_default("idle_timeout")), (90.0, 90.0))
        self.assertLimit("Idle timeout", "90 s")
        self.assertEqual(config_default("heartbeat_interval"), 30.0)
        self.assertLimit("Client heartbeat interval", "30 s")
        self.assertEqual(default(factory, "message_rate"), 100.0)
        self.assertLimit("Message rate per connection", "100 per second")
        self.assertEqual(default(factory, "message_burst"), 200.0)
        self.assertLimit("Message burst per connection", "200")
        self.assertLimit("Flood: dropped frames before close", "200 (burst), refilled 100/s")
        self.assertEqual(default(factory, "max_malformed"), 10)
        self.assertLimit("Malformed frames in a row before close", "10")
        self.assertEqual(default(factory, "auth_fail_delay"), 1.0)
        self.assertLimit("Close after a failed login", "1 s")
        self.assertEqual((config_default("auth_burst"), config_default("auth_rate")), (20.0, 1.0))
        self.assertLimit("Auth frames per address (with REST)", "20 at once, then 1 per second")
        self.assertEqual((config_default("login_failures_per_address"), config_default("login_failure_window")),
                         (20, 60.0))
        self.assertLimit("Wrong passwords per address", "20 in 60 s")
        self.assertEqual(config_default("login_failures_per_account"), 5)
        self.assertLimit("Wrong passwords per account", "5 in 60 s")
        self.assertEqual(protocol_module.FORWARD_OVERHEAD, 512)
        self.assertLimit("Forwarding overhead kept free", "512 bytes")
        self.assertLimit("Media packet", "``--max-frame`` − 512")
        self.assertLimit("Text length (UTF-16 bytes)", "``--max-frame`` − 512 bytes")
        self.assertEqual(codec.MAX_ERROR_TEXT, 1000)
        self.assertLimit("ERROR and FILE_FAILED text", "1000 characters")
        self.assertEqual(protocol_module.MAX_ANONYMOUS_ID, 64)
        self.assertLimit("Anonymous user id", "64 characters")
        self.assertEqual(chat_module.MAX_PAGE, 500)
        self.assertLimit("ONLINE_LIST / CONTACTS page", "500 entries")
        self.assertEqual(chat_module.DRAIN_BATCH, 100)
        self.assertLimit("Stored messages sent per batch", "100")
        self.assertEqual(default(WeCompanyFactory.shutdown, "grace"), 3.0)
        self.assertLimit("Shutdown grace", "3 s")

    def test_send_buffer(self):
        factory = WeCompanyFactory(make_domain(self))
        self.assertEqual(factory.max_send_buffer, 4 << 20)
        self.assertLimit("Queued bytes to a blocked connection", "4194304 bytes")

    def test_token_and_call_limits(self):
        self.assertEqual((default(TokenIssuer.__init__, "ttl"), config_default("token_ttl")), (86400.0, 86400.0))
        self.assertLimit("Access token lifetime", "86400 s")
        self.assertEqual((default(CallService.__init__, "ring_timeout"), config_default("ring_timeout")),
                         (30.0, 30.0))
        self.assertLimit("Ring timeout", "30 s")
        self.assertEqual((default(CallService.__init__, "max_duration"), config_default("max_call")),
                         (3600.0, 3600.0))
        self.assertLimit("Maximum call length", "3600 s")
        self.assertEqual(calls_module.MAX_REASON, 64)
        self.assertLimit("CALL_REJECT reason", "64 characters")
        self.assertEqual(default(CallRecorder.__init__, "max_queue"), 4096)
        self.assertLimit("Recorder queue", "4096 packets")

    def test_file_limits(self):
        self.assertEqual(default(FileService.__init__, "max_file_size"), 268435456)
        self.assertLimit("File size", "268435456 bytes")
        self.assertEqual(default(FileService.__init__, "chunk_size"), 65536)
        self.assertLimit("File chunk", "65536 bytes")
        self.assertEqual(default(FileService.__init__, "max_uploads_per_client"), 4)
        self.assertLimit("Concurrent uploads per connection", "4")
        self.assertEqual(files_module.MAX_TRANSFER_ID, 64)
        self.assertLimit("Transfer id", "64 characters")
        self.assertEqual(files_module.MAX_NAME, 255)
        self.assertLimit("File name", "255 characters")

    def test_every_option_named_exists(self):
        options = {name.replace("_", "-") for name in Config.option_names()} | {"config"}
        doc = read_doc()
        for option in set(re.findall(r"``--([a-z-]+)", doc)):
            self.assertIn(option, options)
