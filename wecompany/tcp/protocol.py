"""
The desktop client's binary protocol over TCP: length-prefixed frames
(``Int32StringReceiver``) carrying QDataStream bodies.

Thin on purpose: decode a frame, call the domain, encode the domain's events.
Every decoding or domain error becomes an ERROR frame; nothing a client sends
can raise out of ``dataReceived``.
"""

from __future__ import annotations

import struct

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from zope.interface import implementer

from wecompany.backpressure import SendGate, tune_realtime
from wecompany.connections import AddressCounter, Refusal, address_key
from wecompany.domain import events as ev
from wecompany.domain.calls import NOT_IN_CALL
from wecompany.domain.interfaces import IClient
from wecompany.domain.ratelimit import ALLOW, CLOSE, WARN, FloodGuard
from wecompany.domain.sessions import Identity
from wecompany.errors import (
    Conflict, InternalError, MalformedMessage, RateLimited, TooLarge, Unauthenticated,
    Unavailable, WeCompanyError,
)
from wecompany.tcp import codec
from wecompany.tcp.codec import MsgType

_U32 = struct.Struct(">I")

# Room left in a frame for the headers the server adds when it forwards a
# client's payload (sender id, message id, call id...).
FORWARD_OVERHEAD = 512
MAX_ANONYMOUS_ID = 64
FILE_TYPE = MsgType.FILE
_FILE_CHUNK = bytes((codec.FILE_CHUNK,))
MEDIA_TYPE = MsgType.MEDIA_DATA
AUTH_TYPES = (MsgType.LOGIN, MsgType.REGISTER, MsgType.AUTH_TOKEN)


def _frame(body: bytes) -> bytes:
    """``body`` with its u32 length prefix, as it goes on the wire."""
    return _U32.pack(len(body)) + body


class LoginTimeout(Unauthenticated):
    code = 408
    default_message = "login timeout: authenticate within the login timeout"


class IdleTimeout(WeCompanyError):
    code = 408
    default_message = "idle timeout: no message received"


@implementer(IClient)
class WeCompanyProtocol(Int32StringReceiver):
    """One desktop client connection."""

    kind = "tcp"
    _log = Logger()

    identity: Identity | None = None
    address_key: str | None = ""  # what the factory's connection cap counts this connection by (None: not counted)
    _closing = False
    _lost = False
    _login_call = None
    _idle_call = None
    _close_call = None
    _malformed = 0
    _pending = 0
    _media_prefix: tuple[str, bytes] | None = None
    _not_in_call_warned = -1e18

    def __init__(self, factory: "WeCompanyFactory") -> None:
        self.factory = factory
        self.MAX_LENGTH = factory.max_frame
        self._clock = factory.clock
        self._flood = FloodGuard(factory.clock, factory.message_rate, factory.message_burst)

    # -- connection lifecycle ---------------------------------------------------
    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        tune_realtime(self.transport, self.factory.media_buffer)
        self._gate = SendGate(self.factory.max_send_buffer, self.writable)
        self._gate.attach(self.transport)
        self._last_seen = self._clock.seconds()
        self._login_call = self._clock.callLater(self.factory.login_timeout, self._login_timeout)
        if self.factory.shutting_down:
            self.disconnect(Unavailable("server is shutting down"))

    def connectionLost(self, reason=None) -> None:
        self._lost = True
        self._closing = True
        self.factory.connections.discard(self)
        for name in ("_login_call", "_idle_call", "_close_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        if self.identity is not None:
            self.factory.chat.close_session(self, "disconnected")
        self.factory.connection_closed(self)

    def _login_timeout(self) -> None:
        self._login_call = None
        if self.identity is None:
            self.disconnect(LoginTimeout())

    def _start_idle_timer(self) -> None:
        self._idle_call = self._clock.callLater(self.factory.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        # Cheaper than resetting a timer for every frame: remember when we last
        # heard from the client and look when the timer fires.
        idle = self._clock.seconds() - self._last_seen
        if idle >= self.factory.idle_timeout:
            self._idle_call = None
            self.disconnect(IdleTimeout())
        else:
            self._idle_call = self._clock.callLater(self.factory.idle_timeout - idle, self._idle_check)

    # -- IClient ----------------------------------------------------------------
    def send_event(self, event) -> None:
        encoder = _EVENT_ENCODERS.get(type(event))
        if encoder is None:
            return  # not something a desktop client is told about
        self.send_body(encoder(event))

    @property
    def write_blocked(self) -> bool:
        """The transport's send buffer is full (media is dropped, file streaming waits)."""
        return self._gate.blocked

    def send_media(self, call_id: str, data: bytes) -> bool:
        if self._gate.blocked or self._closing:
            return False
        prefix = self._media_prefix
        if prefix is None or prefix[0] != call_id:
            prefix = self._media_prefix = (call_id, codec.media_prefix(call_id))
        stats = self.factory.stats
        stats.tcp_frames_out[MEDIA_TYPE] += 1
        stats.tcp_bytes_out[MEDIA_TYPE] += len(prefix[1]) + len(data) + 4
        self.transport.writeSequence((_U32.pack(len(prefix[1]) + len(data)) + prefix[1], data))
        return True

    def disconnect(self, error: WeCompanyError) -> None:
        if self._closing:
            return
        self.send_error(error)
        self._closing = True
        self.transport.loseConnection()

    # -- sending ----------------------------------------------------------------
    def send_body(self, body: bytes) -> bool:
        """Frame and send ``body``; refuses bodies over the frame limit."""
        if self._lost:
            return False
        if len(body) > self.factory.max_frame:
            # Never drop silently: the client learns what it did not get.
            self._log.warn("not sending a {size}-byte frame of type {t}: over the frame limit",
                           size=len(body), t=body[0])
            body = codec.encode_error(TooLarge.code, f"a {len(body)}-byte answer exceeds the frame limit "
                                      f"of {self.factory.max_frame} bytes (ask for a smaller page)", body[0])
        if not self._gate.admit(len(body) + 4):
            self._log.info("dropping slow consumer {user}", user=self._who())
            self._closing = True
            self.transport.abortConnection()
            return False
        stats = self.factory.stats
        stats.tcp_frames_out[body[0]] += 1
        stats.tcp_bytes_out[body[0]] += len(body) + 4
        self.transport.write(_frame(body))
        return True

    def send_error(self, error: WeCompanyError, offending_type: int = codec.NO_TYPE) -> None:
        self.send_body(codec.encode_error(error.wire_code, error.message, offending_type))

    def writable(self) -> None:
        """The transport's buffer drained: let a file being streamed continue."""
        if self.factory.files is not None:
            self.factory.files.writable(self)

    # -- receiving --------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if not self._closing:  # once closing, whatever else arrives is ignored
            super().dataReceived(data)

    def lengthLimitExceeded(self, length: int) -> None:
        self.disconnect(TooLarge(f"frame of {length} bytes exceeds the limit of {self.MAX_LENGTH}"))
        # Nothing more is read from this connection.
        self._unprocessed = b""

    def stringReceived(self, frame: bytes) -> None:
        if self._closing:
            return
        self._last_seen = self._clock.seconds()
        if not frame:
            self._malformed_frame(MalformedMessage("empty message"), codec.NO_TYPE)
            return
        t = frame[0]
        stats = self.factory.stats
        stats.tcp_frames_in[t] += 1
        stats.tcp_bytes_in[t] += len(frame) + 4
        if t == MEDIA_TYPE and self.identity is not None:
            self._media(frame)
            return
        # Only the chunks of a logged-in client's uploads are exempt: each is
        # paced by the pause while it is written, and one that belongs to no
        # upload is charged when it fails (_file_op). Every other frame,
        # FILE offers, fetches and cancels included, draws on the budget.
        if t != FILE_TYPE or self.identity is None or frame[1:2] != _FILE_CHUNK:
            verdict = self._flood.check()
            if verdict != ALLOW:
                self._flooding(t, verdict)
                return
        try:
            if self.identity is None:
                self._unauthenticated(t, frame)
            elif t == FILE_TYPE:
                self._file(frame)
            else:
                msgtype, msg = codec.decode(frame)
                self._malformed = 0
                self._dispatch(msgtype, msg)
        except MalformedMessage as e:
            self._malformed_frame(e, t)
        except WeCompanyError as e:
            self.send_error(e, t)
        except Exception:
            self._log.failure("handling a message of type {t} failed", t=t)
            self.send_error(InternalError(), t)

    def _malformed_frame(self, error: MalformedMessage, t: int) -> None:
        self._malformed += 1
        self.factory.malformed_frames += 1
        if self._malformed >= self.factory.max_malformed:
            self.disconnect(MalformedMessage(f"too many malformed messages ({error.message})"))
        else:
            self.send_error(error, t)

    def _flooding(self, t: int, verdict: str) -> None:
        if verdict == CLOSE:
            self.disconnect(RateLimited("message rate limit exceeded"))
        elif verdict == WARN:
            self.send_error(RateLimited("message rate limit exceeded, messages dropped"), t)

    def _media(self, frame: bytes) -> None:
        if len(frame) > self.MAX_LENGTH - FORWARD_OVERHEAD:
            self.send_error(TooLarge("media packet too large"), MEDIA_TYPE)
            return
        if self.factory.calls.relay(self, frame[1:]) == NOT_IN_CALL:
            # Media is real time and arrives in bursts: warn at most every few seconds.
            now = self._clock.seconds()
            if now - self._not_in_call_warned >= 5.0:
                self._not_in_call_warned = now
                self.send_error(Conflict("media dropped: no active call"), MEDIA_TYPE)

    def _file(self, frame: bytes) -> None:
        if self.factory.files is None:
            raise Unavailable("file transfer is not enabled")
        msg = codec.decode_file(frame)
        self._malformed = 0
        self._run_async(self._file_op(msg), FILE_TYPE)

    async def _file_op(self, msg) -> None:
        files = self.factory.files
        if isinstance(msg, codec.FileFetch):
            await files.fetch(self, msg.file_id, msg.offset)
            return
        try:
            if isinstance(msg, codec.FileOffer):
                record = await files.offer(self, msg.transfer_id, msg.to, msg.name, msg.size, msg.sha256)
                self.send_body(codec.encode_file_accepted(msg.transfer_id, record.id, files.chunk_size))
                result = await files.finish_empty(self, msg.transfer_id) if record.size == 0 else None
            elif isinstance(msg, codec.FileChunkIn):
                result = await files.chunk(self, msg.transfer_id, msg.offset, msg.data)
            else:
                await files.cancel(self, msg.transfer_id)
                return
        except WeCompanyError as e:
            self.send_body(codec.encode_file_failed(msg.transfer_id, e.message))
            if isinstance(msg, codec.FileChunkIn):
                verdict = self._flood.check()  # a chunk of no upload costs what any frame does
                if verdict != ALLOW:
                    self._flooding(FILE_TYPE, verdict)
            return
        if result is not None:
            record, delivering = result
            self.send_body(codec.encode_file_complete(msg.transfer_id, record.id, delivering))

    # -- authentication ---------------------------------------------------------
    def _unauthenticated(self, t: int, frame: bytes) -> None:
        if t in AUTH_TYPES:
            _, msg = codec.decode(frame)
            self._run_async(self._authenticate(msg), t)
        elif self.factory.allow_anonymous and t <= MsgType.HEARTBEAT:
            self._run_async(self._anonymous(t, frame), t)
        else:
            raise Unauthenticated("authenticate first (LOGIN, REGISTER or AUTH_TOKEN)")

    async def _authenticate(self, msg) -> None:
        accounts = self.factory.accounts
        address = self._peer_host()
        try:
            # The REST auth routes' budget, shared with them: one address
            # gets the same number of auth requests whichever port it uses.
            await self.factory.auth_limiter.hit(address)
            if isinstance(msg, codec.Login):
                user = await accounts.authenticate(msg.username, msg.password, address)
            elif isinstance(msg, codec.Register):
                user = await accounts.register(msg.username, msg.password)
            else:
                user = await accounts.authenticate_token(msg.token)
        except Exception as e:
            if not isinstance(msg, codec.Register):
                self.factory.stats.login("tcp", ok=False)
            if isinstance(e, WeCompanyError):
                text = e.message
            else:
                self._log.failure("authentication failed unexpectedly")
                text = InternalError.default_message
            self.send_body(codec.encode_auth_failed(text))
            # The original client only retries on a fresh connection; give it a
            # moment to read the answer, then close.
            if not self._closing:
                self._closing = True
                self._close_call = self._clock.callLater(self.factory.auth_fail_delay, self._close_now)
            return
        if not isinstance(msg, codec.Register):
            self.factory.stats.login("tcp", ok=True)
        self._logged_in(Identity.of_user(user), accounts.issue_token(user))

    async def _anonymous(self, t: int, frame: bytes) -> None:
        r = codec.Reader(frame, 1)
        user_id = r.qstr("user id")
        if not user_id or len(user_id) > MAX_ANONYMOUS_ID or user_id.isdigit() or "*" in user_id:
            raise MalformedMessage("anonymous user id must be 1-64 characters, not all digits")
        if await self.factory.chat.store.get_user_by_username(user_id) is not None:
            raise Unauthenticated("that name belongs to an account: log in instead")
        if self.factory.chat.registry.find_online(user_id) is not None:
            # Anonymous sessions prove nothing, so they cannot displace each other.
            raise Conflict("that name is in use")
        self._logged_in(Identity(user_id, user_id, None), token=None)
        if not self._closing:
            # "The rest of that frame is handled as a normal message of that type."
            self.stringReceived(bytes((t,)) + frame[r.pos:])

    def _logged_in(self, identity: Identity, token: str | None) -> None:
        if self._closing:
            return
        self.identity = identity
        if self._login_call is not None and self._login_call.active():
            self._login_call.cancel()
        self._login_call = None
        self._start_idle_timer()
        if token is not None:
            self.send_body(codec.encode_auth_ok(token, identity.user_id))
        self._log.info("{user} logged in from {address}", user=identity.user_id, address=self._peer_host())
        self.factory.chat.open_session(self)

    def _close_now(self) -> None:
        self._close_call = None
        self.transport.loseConnection()

    # -- authenticated messages -------------------------------------------------
    def _dispatch(self, t: int, msg) -> None:
        handler = _HANDLERS.get(t)
        if handler is None:  # AUTH_* again, or a server-to-client type
            if t in AUTH_TYPES:
                raise Conflict("already authenticated")
            raise MalformedMessage(f"message type 0x{t:02x} is not sent by clients")
        result = handler(self, msg)
        if result is not None:
            self._run_async(result, t)

    def _on_text(self, msg: codec.Text):
        # The forwarded frame carries the text as UTF-16 plus headers: check
        # its real size here so it can always be delivered (and stored) whole.
        if codec.utf16_size(msg.text) > self.MAX_LENGTH - FORWARD_OVERHEAD:
            raise TooLarge("text too long to forward")
        return self._text(msg)

    async def _text(self, msg: codec.Text) -> None:
        ack = await self.factory.chat.send_text(self, msg.to, msg.text)
        self.send_body(codec.encode_text_ack(ack.message_id, ack.to, ack.status, ack.recipients))

    def _on_call_request(self, msg: codec.CallRequest):
        return self.factory.chat.place_call(self, msg.callee, msg.is_video)

    def _on_call_accept(self, msg: codec.CallAccept) -> None:
        self.factory.calls.accept(self, msg.call_id)

    def _on_call_reject(self, msg: codec.CallReject) -> None:
        self.factory.calls.reject(self, msg.call_id, msg.reason)

    def _on_call_end(self, msg: codec.CallEnd) -> None:
        self.factory.calls.end(self, msg.call_id)

    def _on_heartbeat(self, msg) -> None:
        self.send_body(codec.HEARTBEAT_BODY)

    def _on_online_list(self, msg: codec.OnlineListRequest) -> None:
        total, users = self.factory.chat.online_users(msg.offset, msg.limit)
        self.send_body(codec.encode_online_list(total, msg.offset, users))

    async def _on_contacts(self, msg: codec.ContactsRequest) -> None:
        chat = self.factory.chat
        if msg.op == codec.CONTACT_ADD:
            ident, online = await chat.add_contact(self, msg.user)
            self.send_body(codec.encode_contact(msg.op, ident.user_id, ident.username, online))
        elif msg.op == codec.CONTACT_REMOVE:
            ident = await chat.remove_contact(self, msg.user)
            self.send_body(codec.encode_contact(msg.op, ident.user_id, ident.username, False))
        else:
            total, page = await chat.list_contacts(self, msg.offset, msg.limit)
            self.send_body(codec.encode_contact_list(total, msg.offset, page))

    # -- helpers ----------------------------------------------------------------
    def _run_async(self, coro, t: int) -> None:
        """
        Run a handler coroutine. While it waits (database, hashing), stop
        reading from this connection so its messages are handled, and
        answered, strictly in order.
        """
        d = Deferred.fromCoroutine(coro)
        # The error answer goes out before any later message is handled.
        d.addErrback(self._async_failed, t)
        if not d.called:
            self._pending += 1
            if self._pending == 1:
                self.pauseProducing()
            d.addBoth(self._resume)

    def _resume(self, result):
        self._pending -= 1
        if not self._pending and not self._lost:
            self.resumeProducing()
        return result

    def _async_failed(self, failure, t: int) -> None:
        if failure.check(MalformedMessage):
            self._malformed_frame(failure.value, t)
        elif failure.check(WeCompanyError):
            self.send_error(failure.value, t)
        else:
            self._log.failure("handling a message of type {t} failed", failure, t=t)
            self.send_error(InternalError(), t)

    def _peer_host(self) -> str:
        peer = self.transport.getPeer()
        return getattr(peer, "host", str(peer))

    def _who(self) -> str:
        return self.identity.user_id if self.identity is not None else self._peer_host()


_HANDLERS = {
    MsgType.TEXT: WeCompanyProtocol._on_text,
    MsgType.CALL_REQUEST: WeCompanyProtocol._on_call_request,
    MsgType.CALL_ACCEPT: WeCompanyProtocol._on_call_accept,
    MsgType.CALL_REJECT: WeCompanyProtocol._on_call_reject,
    MsgType.CALL_END: WeCompanyProtocol._on_call_end,
    MsgType.HEARTBEAT: WeCompanyProtocol._on_heartbeat,
    MsgType.ONLINE_LIST: WeCompanyProtocol._on_online_list,
    MsgType.CONTACTS: WeCompanyProtocol._on_contacts,
}


def _text_flags(e: ev.TextMessage) -> int:
    return (codec.TEXT_FLAG_BROADCAST if e.broadcast else 0) | (codec.TEXT_FLAG_STORED if e.stored else 0)


_EVENT_ENCODERS = {
    ev.TextMessage: lambda e: codec.encode_text(e.sender_id, e.text, e.message_id, int(e.sent_at * 1000),
                                                _text_flags(e), e.sender_name),
    ev.PresenceChanged: lambda e: codec.encode_presence(e.user_id, e.username, e.online),
    ev.CallRinging: lambda e: codec.encode_call_ringing(e.call_id, e.callee_id, e.is_video),
    ev.CallIncoming: lambda e: codec.encode_call_incoming(e.call_id, e.caller_id, e.is_video, e.caller_name),
    ev.CallAccepted: lambda e: codec.encode_call_id(MsgType.CALL_ACCEPT, e.call_id),
    ev.CallRejected: lambda e: codec.encode_call_reject(e.call_id, e.reason),
    ev.CallEnded: lambda e: codec.encode_call_end(e.call_id, e.reason),
    ev.FileOffered: lambda e: codec.encode_file_incoming(e.file_id, e.sender_id, e.name, e.size, e.sha256,
                                                         e.sender_name),
    ev.FileChunk: lambda e: codec.encode_file_data(e.file_id, e.offset, e.data),
    ev.FileDone: lambda e: codec.encode_file_done(e.file_id),
    ev.FileUnavailable: lambda e: codec.encode_error(e.code, e.message, MsgType.FILE),
}


class WeCompanyFactory(ServerFactory):
    """
    Builds :class:`WeCompanyProtocol` s sharing one
    :class:`~wecompany.domain.core.Domain` (its chat, accounts, calls and
    files, and the per-address budget of auth requests the REST auth routes
    share).

    Limits and timeouts come from the :class:`~wecompany.config.Config` via
    the composition root; ``connections`` is every live protocol (for
    shutdown and metrics). ``connection_cap`` (an
    :class:`~wecompany.connections.AddressCounter`) bounds the connections
    of one address: one more is sent ERROR 503 and closed.
    """

    noisy = False  # no "Starting factory" / "Stopping factory" lines: the service logs its listeners

    _log = Logger()

    def __init__(self, domain, *, max_frame: int = 1 << 20, login_timeout: float = 10.0, idle_timeout: float = 90.0,
                 allow_anonymous: bool = False, max_malformed: int = 10,
                 message_rate: float = 100.0, message_burst: float = 200.0,
                 max_send_buffer: int | None = None, auth_fail_delay: float = 1.0,
                 media_buffer: int = 256 << 10, connection_cap: AddressCounter | None = None) -> None:
        self.chat = domain.chat
        self.accounts = domain.accounts
        self.calls = domain.calls
        self.files = domain.files
        self.auth_limiter = domain.auth_limiter
        self.stats = domain.stats  # frames, bytes and logins, for the metrics
        self.clock = domain.clock
        self.max_frame = max_frame
        self.login_timeout = login_timeout
        self.idle_timeout = idle_timeout
        self.allow_anonymous = allow_anonymous
        self.max_malformed = max_malformed
        self.message_rate = message_rate
        self.message_burst = message_burst
        self.max_send_buffer = max_send_buffer or max(4 * max_frame, 4 << 20)
        self.auth_fail_delay = auth_fail_delay
        self.media_buffer = media_buffer
        self.connection_cap = connection_cap
        self.connections: set[WeCompanyProtocol] = set()
        self.shutting_down = False
        self.malformed_frames = 0
        self._all_closed: list[Deferred] = []

    def buildProtocol(self, addr):
        key = self.connection_cap.key_for(addr) if self.connection_cap is not None else address_key(addr)
        if self.connection_cap is not None and not self.connection_cap.acquire(key):
            return Refusal(_frame(codec.encode_error(Unavailable.code, "too many connections from your address")))
        proto = WeCompanyProtocol(self)
        proto.address_key = key
        return proto

    def connection_closed(self, proto) -> None:
        if self.connection_cap is not None:
            self.connection_cap.release(proto.address_key)
        if not self.connections:
            waiters, self._all_closed = self._all_closed, []
            for d in waiters:
                d.callback(None)

    def shutdown(self, grace: float = 3.0) -> Deferred:
        """
        Tell every client the server is stopping (ERROR 503) and close.
        Connections still open after ``grace`` seconds are aborted. The
        Deferred fires when all are gone.
        """
        self.shutting_down = True
        d = Deferred()
        if not self.connections:
            d.callback(None)
            return d
        self._all_closed.append(d)
        for proto in list(self.connections):
            proto.disconnect(Unavailable("server is shutting down"))

        def abort_stragglers():
            for proto in list(self.connections):
                proto.transport.abortConnection()

        timer = self.clock.callLater(grace, abort_stragglers)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d
