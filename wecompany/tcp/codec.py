"""
Bodies of the binary protocol (``docs/protocol.rst`` is the contract).

A frame body is ``[u8 type][fields...]``; fields are QDataStream encodings
(big-endian): ``qstr`` = ``u32`` byte length + UTF-16BE (``0xFFFFFFFF`` is a
null string, decoded as empty), ``str16`` = ``u16`` byte length + UTF-8,
``raw`` = the rest of the frame. Pure functions: no I/O, no Twisted.
"""

from __future__ import annotations

import enum
import struct

import attrs

from wecompany.domain.ids import MAX_ID
from wecompany.errors import MalformedMessage

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
NULL_QSTR = 0xFFFFFFFF


class MsgType(enum.IntEnum):
    TEXT = 0x00
    FILE = 0x01
    CALL_REQUEST = 0x02
    CALL_ACCEPT = 0x03
    CALL_REJECT = 0x04
    CALL_END = 0x05
    MEDIA_DATA = 0x06
    HEARTBEAT = 0x07
    LOGIN = 0x08
    REGISTER = 0x09
    AUTH_RESULT = 0x0A
    AUTH_TOKEN = 0x0B
    CALL_RINGING = 0x0C
    ERROR = 0x0D
    PRESENCE = 0x0E
    ONLINE_LIST = 0x0F
    TEXT_ACK = 0x10
    CONTACTS = 0x11


NO_TYPE = 0xFF  # offending_type of an ERROR that is not about one message


class UnknownType(MalformedMessage):
    default_message = "unknown message type"


# -- reading --------------------------------------------------------------------

class Reader:
    """Reads QDataStream fields from a body; every shortfall is a MalformedMessage."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedMessage(f"message ends inside {what}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u8(self, what: str = "u8") -> int:
        if self.pos >= len(self.data):
            raise MalformedMessage(f"message ends before {what}")
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self, what: str = "u16") -> int:
        return _U16.unpack(self._take(2, what))[0]

    def u32(self, what: str = "u32") -> int:
        return _U32.unpack(self._take(4, what))[0]

    def u64(self, what: str = "u64") -> int:
        return _U64.unpack(self._take(8, what))[0]

    def id(self, what: str = "id") -> int:
        """A u64 that names something the server made: at most :data:`MAX_ID` (ids are 63-bit)."""
        value = self.u64(what)
        if value > MAX_ID:
            raise MalformedMessage(f"{what} out of range: ids are at most {MAX_ID}")
        return value

    def qstr(self, what: str = "string") -> str:
        n = self.u32(what)
        if n == NULL_QSTR:
            return ""
        if n % 2:
            raise MalformedMessage(f"{what}: odd UTF-16 byte length")
        try:
            return self._take(n, what).decode("utf-16-be")
        except UnicodeDecodeError:
            raise MalformedMessage(f"{what}: invalid UTF-16") from None

    def str16(self, what: str = "string") -> str:
        n = self.u16(what)
        try:
            return self._take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage(f"{what}: invalid UTF-8") from None

    def raw(self, n: int, what: str = "bytes") -> bytes:
        return self._take(n, what)

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedMessage(f"{len(self.data) - self.pos} unexpected trailing bytes")


# -- writing --------------------------------------------------------------------

def qstr(s: str) -> bytes:
    b = s.encode("utf-16-be")
    return _U32.pack(len(b)) + b


def utf16_size(s: str) -> int:
    """Bytes of ``s`` as a qstr body (UTF-16: two per BMP character, four per other)."""
    size = 2 * len(s)
    if not s.isascii():
        size += 2 * sum(1 for c in s if ord(c) > 0xFFFF)  # surrogate pairs
    return size


def str16(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        b = b[:0xFFFF].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(len(b)) + b


def u8(n: int) -> bytes:
    return bytes((n,))


def u16(n: int) -> bytes:
    return _U16.pack(n)


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


# -- client -> server messages ----------------------------------------------------

@attrs.frozen
class Text:
    to: str
    text: str


@attrs.frozen
class CallRequest:
    callee: str
    is_video: bool


@attrs.frozen
class CallAccept:
    call_id: str


@attrs.frozen
class CallReject:
    call_id: str
    reason: str


@attrs.frozen
class CallEnd:
    call_id: str


@attrs.frozen
class Heartbeat:
    pass


@attrs.frozen
class Login:
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class Register:
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class AuthToken:
    token: str = attrs.field(repr=False)


@attrs.frozen
class OnlineListRequest:
    offset: int = 0
    limit: int = 100


CONTACT_ADD, CONTACT_REMOVE, CONTACT_LIST = 1, 2, 3


@attrs.frozen
class ContactsRequest:
    op: int
    user: str = ""
    offset: int = 0
    limit: int = 50


def _text(r: Reader):
    return Text(r.qstr("recipient"), r.qstr("text"))


def _call_request(r: Reader):
    callee = r.qstr("callee")
    return CallRequest(callee, bool(r.u8("is_video")))


def _call_reject(r: Reader):
    call_id = r.qstr("call id")
    reason = "" if r.at_end() else r.qstr("reason")
    return CallReject(call_id, reason)


def _credentials(cls):
    def decode(r: Reader):
        return cls(r.str16("username"), r.str16("password"))
    return decode


def _online_list(r: Reader):
    if r.at_end():
        return OnlineListRequest()
    offset = r.u32("offset")
    limit = 100 if r.at_end() else r.u16("limit")
    return OnlineListRequest(offset, limit)


def _contacts(r: Reader):
    op = r.u8("op")
    if op in (CONTACT_ADD, CONTACT_REMOVE):
        return ContactsRequest(op, user=r.qstr("user"))
    if op == CONTACT_LIST:
        if r.at_end():
            return ContactsRequest(op)
        offset = r.u32("offset")
        limit = 50 if r.at_end() else r.u16("limit")
        return ContactsRequest(op, offset=offset, limit=limit)
    raise MalformedMessage(f"unknown contacts operation {op}")


# Decoders take a Reader positioned after the type byte and return a message.
# MEDIA_DATA and FILE are not here: the protocol handles their bodies itself.
DECODERS = {
    MsgType.TEXT: _text,
    MsgType.CALL_REQUEST: _call_request,
    MsgType.CALL_ACCEPT: lambda r: CallAccept(r.qstr("call id")),
    MsgType.CALL_REJECT: _call_reject,
    MsgType.CALL_END: lambda r: CallEnd(r.qstr("call id")),
    MsgType.HEARTBEAT: lambda r: Heartbeat(),
    MsgType.LOGIN: _credentials(Login),
    MsgType.REGISTER: _credentials(Register),
    MsgType.AUTH_TOKEN: lambda r: AuthToken(r.str16("token")),
    MsgType.ONLINE_LIST: _online_list,
    MsgType.CONTACTS: _contacts,
}


def decode(body: bytes, pos: int = 0):
    """
    Decode a client message starting at ``body[pos]`` (its type byte).

    Returns ``(type, message)``. Raises :class:`UnknownType` for a type the
    client may not send, :class:`MalformedMessage` for a bad body (short,
    over-long strings, invalid text, trailing bytes).
    """
    if pos >= len(body):
        raise MalformedMessage("empty message")
    t = body[pos]
    decoder = DECODERS.get(t)
    if decoder is None:
        raise UnknownType(f"unknown message type 0x{t:02x}")
    r = Reader(body, pos + 1)
    msg = decoder(r)
    r.end()
    return t, msg


# -- server -> client messages ----------------------------------------------------

def encode_text(sender_id: str, text: str, message_id: int, sent_at_ms: int, flags: int,
                sender_name: str) -> bytes:
    """TEXT: [qstr from][qstr text] + [u64 message_id][u64 sent_at_ms][u8 flags][qstr from_username]."""
    return b"".join((u8(MsgType.TEXT), qstr(sender_id), qstr(text), u64(message_id),
                     u64(sent_at_ms), u8(flags), qstr(sender_name)))


TEXT_FLAG_BROADCAST = 0x01
TEXT_FLAG_STORED = 0x02


def encode_call_incoming(call_id: str, caller_id: str, is_video: bool, caller_name: str) -> bytes:
    """CALL_REQUEST to the callee: [qstr call_id][qstr caller][u8 is_video] + [qstr caller_username]."""
    return b"".join((u8(MsgType.CALL_REQUEST), qstr(call_id), qstr(caller_id), u8(int(is_video)),
                     qstr(caller_name)))


def encode_call_id(t: int, call_id: str) -> bytes:
    """CALL_ACCEPT / CALL_END: [qstr call_id]."""
    return u8(t) + qstr(call_id)


def encode_call_end(call_id: str, reason: str) -> bytes:
    """CALL_END: [qstr call_id] + [qstr reason]."""
    return u8(MsgType.CALL_END) + qstr(call_id) + qstr(reason)


def encode_call_reject(call_id: str, reason: str) -> bytes:
    return u8(MsgType.CALL_REJECT) + qstr(call_id) + qstr(reason)


def encode_call_ringing(call_id: str, callee_id: str, is_video: bool) -> bytes:
    return u8(MsgType.CALL_RINGING) + qstr(call_id) + qstr(callee_id) + u8(int(is_video))


def media_prefix(call_id: str) -> bytes:
    """MEDIA_DATA to the other party: [qstr call_id][raw media]; this is everything but the media."""
    return u8(MsgType.MEDIA_DATA) + qstr(call_id)


HEARTBEAT_BODY = u8(MsgType.HEARTBEAT)


def encode_auth_ok(token: str, user_id: str) -> bytes:
    return u8(MsgType.AUTH_RESULT) + u8(1) + str16(token) + str16(user_id)


def encode_auth_failed(text: str) -> bytes:
    return u8(MsgType.AUTH_RESULT) + u8(0) + str16(text)


MAX_ERROR_TEXT = 1000


def encode_error(code: int, message: str, offending_type: int = NO_TYPE) -> bytes:
    return u8(MsgType.ERROR) + u16(code & 0xFFFF) + qstr(message[:MAX_ERROR_TEXT]) + u8(offending_type & 0xFF)


def encode_presence(user_id: str, username: str, online: bool) -> bytes:
    return u8(MsgType.PRESENCE) + qstr(user_id) + qstr(username) + u8(int(online))


def encode_online_list(total: int, offset: int, users) -> bytes:
    """ONLINE_LIST: [u32 total][u32 offset][u16 count] count x ([qstr user_id][qstr username])."""
    parts = [u8(MsgType.ONLINE_LIST), u32(total), u32(offset), u16(len(users))]
    for ident in users:
        parts.append(qstr(ident.user_id))
        parts.append(qstr(ident.username))
    return b"".join(parts)


def encode_text_ack(message_id: int, to: str, status: int, recipients: int) -> bytes:
    return u8(MsgType.TEXT_ACK) + u64(message_id) + qstr(to) + u8(status) + u32(recipients)


def encode_contact(op: int, user_id: str, username: str, online: bool) -> bytes:
    """CONTACTS add/remove result: [u8 op][qstr user_id][qstr username][u8 online]."""
    return u8(MsgType.CONTACTS) + u8(op) + qstr(user_id) + qstr(username) + u8(int(online))


def encode_contact_list(total: int, offset: int, page) -> bytes:
    """CONTACTS list: [u8 3][u32 total][u32 offset][u16 count] count x ([qstr id][qstr username][u8 online])."""
    parts = [u8(MsgType.CONTACTS), u8(CONTACT_LIST), u32(total), u32(offset), u16(len(page))]
    for ident, online in page:
        parts += [qstr(ident.user_id), qstr(ident.username), u8(int(online))]
    return b"".join(parts)


# -- FILE (0x01) ---------------------------------------------------------------------
# Body: [u8 0x01][u8 op][fields]. Client ops 0x01-0x0F, server ops 0x11-0x2F.

FILE_OFFER, FILE_CHUNK, FILE_CANCEL, FILE_FETCH = 0x01, 0x02, 0x03, 0x04
FILE_ACCEPTED, FILE_COMPLETE, FILE_FAILED = 0x11, 0x13, 0x14
FILE_INCOMING, FILE_DATA, FILE_DONE = 0x21, 0x22, 0x23
SHA256_LEN = 32


@attrs.frozen
class FileOffer:
    """Sender announces a file: it will send ``size`` bytes in order, checked against ``sha256``."""

    transfer_id: str
    to: str
    name: str
    size: int
    sha256: bytes


@attrs.frozen
class FileChunkIn:
    transfer_id: str
    offset: int
    data: bytes


@attrs.frozen
class FileCancel:
    transfer_id: str


@attrs.frozen
class FileFetch:
    """Recipient asks for (the rest of) a file addressed to it, from ``offset``."""

    file_id: int
    offset: int


def decode_file(body: bytes):
    """Decode a client FILE message (``body[0] == 0x01``)."""
    r = Reader(body, 1)
    op = r.u8("file op")
    if op == FILE_OFFER:
        msg = FileOffer(r.qstr("transfer id"), r.qstr("recipient"), r.qstr("file name"),
                        r.u64("size"), r.raw(SHA256_LEN, "sha256"))
    elif op == FILE_CHUNK:
        return FileChunkIn(r.qstr("transfer id"), r.u64("offset"), r.rest())
    elif op == FILE_CANCEL:
        msg = FileCancel(r.qstr("transfer id"))
    elif op == FILE_FETCH:
        msg = FileFetch(r.id("file id"), r.u64("offset"))
    else:
        raise MalformedMessage(f"unknown file operation 0x{op:02x}")
    r.end()
    return msg


def encode_file_accepted(transfer_id: str, file_id: int, chunk_size: int) -> bytes:
    return bytes((MsgType.FILE, FILE_ACCEPTED)) + qstr(transfer_id) + u64(file_id) + u32(chunk_size)


def encode_file_complete(transfer_id: str, file_id: int, delivered: bool) -> bytes:
    return bytes((MsgType.FILE, FILE_COMPLETE)) + qstr(transfer_id) + u64(file_id) + u8(int(delivered))


def encode_file_failed(transfer_id: str, reason: str) -> bytes:
    return bytes((MsgType.FILE, FILE_FAILED)) + qstr(transfer_id) + qstr(reason[:MAX_ERROR_TEXT])


def encode_file_incoming(file_id: int, sender_id: str, name: str, size: int, sha256: bytes,
                         sender_name: str) -> bytes:
    return b"".join((bytes((MsgType.FILE, FILE_INCOMING)), u64(file_id), qstr(sender_id), qstr(name),
                     u64(size), sha256, qstr(sender_name)))


def encode_file_data(file_id: int, offset: int, data: bytes) -> bytes:
    return bytes((MsgType.FILE, FILE_DATA)) + u64(file_id) + u64(offset) + data


def encode_file_done(file_id: int) -> bytes:
    return bytes((MsgType.FILE, FILE_DONE)) + u64(file_id)


# -- decoding what the server sends (for clients, tests and benchmarks) ----------------

@attrs.frozen
class ServerMessage:
    """A decoded server-to-client message: its type and its fields by name."""

    type: int
    fields: dict

    def __getitem__(self, name):
        return self.fields[name]


def _opt(r: Reader, read, *args):
    return None if r.at_end() else read(*args)


def decode_server(body: bytes) -> ServerMessage:
    """Decode any server-to-client body. Optional trailing fields are None when absent."""
    if not body:
        raise MalformedMessage("empty message")
    t, r = body[0], Reader(body, 1)
    f: dict = {}
    if t == MsgType.TEXT:
        f = {"from": r.qstr(), "text": r.qstr(), "message_id": _opt(r, r.u64),
             "sent_at_ms": _opt(r, r.u64), "flags": _opt(r, r.u8), "from_username": _opt(r, r.qstr)}
    elif t == MsgType.CALL_REQUEST:
        f = {"call_id": r.qstr(), "caller": r.qstr(), "is_video": bool(r.u8()), "caller_username": _opt(r, r.qstr)}
    elif t in (MsgType.CALL_ACCEPT,):
        f = {"call_id": r.qstr()}
    elif t in (MsgType.CALL_REJECT, MsgType.CALL_END):
        f = {"call_id": r.qstr(), "reason": _opt(r, r.qstr)}
    elif t == MsgType.MEDIA_DATA:
        f = {"call_id": r.qstr(), "media": r.rest()}
    elif t == MsgType.HEARTBEAT:
        pass
    elif t == MsgType.AUTH_RESULT:
        ok = r.u8()
        f = {"ok": True, "token": r.str16(), "user_id": r.str16()} if ok else {"ok": False, "error": r.str16()}
    elif t == MsgType.CALL_RINGING:
        f = {"call_id": r.qstr(), "callee": r.qstr(), "is_video": bool(r.u8())}
    elif t == MsgType.ERROR:
        f = {"code": r.u16(), "message": r.qstr(), "offending_type": r.u8()}
    elif t == MsgType.PRESENCE:
        f = {"user_id": r.qstr(), "username": r.qstr(), "online": bool(r.u8())}
    elif t == MsgType.ONLINE_LIST:
        f = {"total": r.u32(), "offset": r.u32()}
        f["users"] = [(r.qstr(), r.qstr()) for _ in range(r.u16())]
    elif t == MsgType.TEXT_ACK:
        f = {"message_id": r.u64(), "to": r.qstr(), "status": r.u8(), "recipients": r.u32()}
    elif t == MsgType.CONTACTS:
        op = r.u8()
        f = {"op": op}
        if op == CONTACT_LIST:
            f.update(total=r.u32(), offset=r.u32())
            f["contacts"] = [(r.qstr(), r.qstr(), bool(r.u8())) for _ in range(r.u16())]
        else:
            f.update(user_id=r.qstr(), username=r.qstr(), online=bool(r.u8()))
    elif t == MsgType.FILE:
        op = r.u8()
        f = {"op": op}
        if op == FILE_ACCEPTED:
            f.update(transfer_id=r.qstr(), file_id=r.u64(), chunk_size=r.u32())
        elif op == FILE_COMPLETE:
            f.update(transfer_id=r.qstr(), file_id=r.u64(), delivered=bool(r.u8()))
        elif op == FILE_FAILED:
            f.update(transfer_id=r.qstr(), reason=r.qstr())
        elif op == FILE_INCOMING:
            f.update(file_id=r.u64(), sender=r.qstr(), name=r.qstr(), size=r.u64(),
                     sha256=r.raw(SHA256_LEN), sender_username=r.qstr())
        elif op == FILE_DATA:
            f.update(file_id=r.u64(), offset=r.u64(), data=r.rest())
        elif op == FILE_DONE:
            f.update(file_id=r.u64())
        else:
            raise MalformedMessage(f"unknown file operation 0x{op:02x}")
    else:
        raise UnknownType(f"unknown server message type 0x{t:02x}")
    r.end()
    return ServerMessage(t, f)
