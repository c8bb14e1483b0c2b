"""
WebSocket signaling at ``/ws/signaling`` (Autobahn), both dialects.

The handshake is checked before the upgrade (bad parameters 400, bad token
401, wrong user, unknown or ended meeting, not a participant or room full
403). Each connection is answered in the dialect of the last message it sent:
``type`` as a string (seed dialect) or as a number (numeric dialect). Every
bad message gets an ``error`` message and the connection stays open; only a
sustained flood closes it.
"""

from __future__ import annotations

import json

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import wildcards2patterns
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from wecompany.times import rfc3339
from wecompany.backpressure import SendGate, no_delay
from wecompany.domain.interfaces import IClient
from wecompany.domain.ratelimit import ALLOW, CLOSE, WARN, FloodGuard
from wecompany.domain.rooms import SIGNALS, SignalEvent
from wecompany.domain.sessions import Identity
from wecompany.proxies import NO_PROXIES, host_of
from wecompany.jsontext import decode_json
from wecompany.errors import (
    Forbidden, InternalError, InvalidInput, RateLimited, TooLarge, Unauthenticated, WeCompanyError,
)

SEED, NUMERIC = "seed", "numeric"
NUMBERS = {"offer": 1, "answer": 2, "ice-candidate": 3, "join": 4, "leave": 5, "user-joined": 6,
           "user-left": 7, "chat": 8, "screen-share": 9, "media-state": 10, "ping": 11, "pong": 12,
           "error": 13, "room-info": 14, "recording": 15}
KINDS = {number: kind for kind, number in NUMBERS.items()}
CLIENT_KINDS = {"offer", "answer", "ice-candidate", "join", "leave", "chat", "screen-share", "media-state", "ping"}

MESSAGE_COST_BYTES = 16 << 10  # each this many bytes of a message cost one more message of the rate limit

# Close codes (4000-4999 are the application's).
CLOSE_FLOOD = 4029
CLOSE_REPLACED = 4009
CLOSE_SHUTDOWN = 4503  # 4000 + the HTTP status, as the others; Autobahn sends no 1001 for an application
CLOSE_KICKED = 4003


def _int_param(params: dict, name: str) -> int:
    values = params.get(name)
    if not values or not values[0].isdigit() or len(values[0]) > 18:
        raise ConnectionDeny(400, f"{name} is required and must be a positive integer")
    value = int(values[0])
    if value <= 0:
        raise ConnectionDeny(400, f"{name} must be a positive integer")
    return value


@implementer(IClient)
class SignalingProtocol(WebSocketServerProtocol):
    """One signaling connection of one user to one meeting."""

    kind = "ws"
    _log = Logger()

    identity: Identity | None = None
    user = None
    meeting = None
    peer_id: str | None = None
    #: The client's address: the peer's, or what a trusted proxy's X-Forwarded-For names.
    client_address: str = "-"
    dialect: str = SEED
    _open = False
    _closing = False
    _gone = False

    # -- handshake --------------------------------------------------------------
    def onConnect(self, request):
        peer = host_of(self.transport.getPeer()) if self.transport is not None else None
        if peer is not None:
            # Autobahn joins repeated headers with ", ", as one list.
            forwarded = request.headers.get("x-forwarded-for")
            self.client_address = self.factory.trusted_proxies.forwarded_client(peer, [forwarded] if forwarded else [])
        if not self.factory.origin_allowed(request.origin):
            raise ConnectionDeny(403, f"origin {request.origin!r} is not allowed")
        params = request.params
        meeting_id = _int_param(params, "meeting_id")
        user_id = _int_param(params, "user_id")
        peer = (params.get("peer_id") or [""])[0]
        if not 1 <= len(peer) <= 128:
            raise ConnectionDeny(400, "peer_id is required (1-128 characters)")
        token = (params.get("token") or [""])[0]
        if not token:
            scheme, _, rest = request.headers.get("authorization", "").partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else ""
        if not token:
            raise ConnectionDeny(401, "token is required (query parameter or Authorization: Bearer)")
        d = Deferred.fromCoroutine(self._admit(meeting_id, user_id, peer, token))
        d.addErrback(self._deny)
        return d

    async def _admit(self, meeting_id: int, user_id: int, peer: str, token: str):
        factory = self.factory
        try:
            user = await factory.accounts.authenticate_token(token)
        except Forbidden as e:
            factory.stats.login("ws", ok=False)
            raise ConnectionDeny(403, e.message) from None
        except Unauthenticated as e:
            factory.stats.login("ws", ok=False)
            raise ConnectionDeny(401, e.message) from None
        factory.stats.login("ws", ok=True)
        if user.id != user_id:
            raise ConnectionDeny(403, "the token belongs to another user")
        try:
            meeting = await factory.rooms.admit(user.id, meeting_id, self)
        except WeCompanyError as e:
            raise ConnectionDeny(403, e.message) from None
        if self._gone:  # the connection was lost while it was being admitted
            factory.rooms.release(self)
            return None
        self.user, self.meeting, self.peer_id = user, meeting, peer
        self.identity = Identity.of_user(user)
        self._log.info("{user} opened the signaling of meeting {meeting} from {address}", user=user.id,
                       meeting=meeting_id, address=self.client_address)
        return None  # accept, no subprotocol

    def _deny(self, failure):
        if not failure.check(ConnectionDeny):
            self._log.failure("signaling handshake failed", failure)
            raise ConnectionDeny(500, "internal error")
        return failure

    # -- life cycle -------------------------------------------------------------
    def onOpen(self) -> None:
        factory = self.factory
        self._open = True
        self._flood = FloodGuard(factory.clock, factory.message_rate, factory.message_burst)
        self._gate = SendGate(factory.max_send_buffer)
        if self.transport is not None:
            self._gate.attach(self.transport)
            no_delay(self.transport)  # signaling and chat are interactive
        factory.connections.add(self)
        factory.stats.ws_opened += 1
        factory.chat.open_session(self)
        if factory.shutting_down:
            self.disconnect(WeCompanyError("server is shutting down", code=503))

    def onClose(self, wasClean, code, reason) -> None:
        factory = self.factory
        factory.connections.discard(self)
        self._gone = True
        factory.rooms.release(self)  # leaves the room, and stops following it if no one here is in it
        if self._open:
            self._open = False
            factory.stats.ws_closed += 1
            factory.chat.close_session(self)

    # -- receiving --------------------------------------------------------------
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._closing:
            return
        factory = self.factory
        factory.stats.ws_messages_in += 1
        # A large message costs more: decoding it on the reactor thread takes
        # time in proportion to its size (one token per 16 KiB).
        verdict = self._flood.check(1 + len(payload) // MESSAGE_COST_BYTES)
        if verdict != ALLOW:
            self._flooding(verdict)
            return
        try:
            message = self._decode(payload, isBinary)
            kind = message["kind"]
            if kind == "join":
                factory.rooms.join(self, self.meeting, self.user, self.peer_id)
            elif kind == "leave":
                factory.rooms.leave(self, "leave")
            elif kind in SIGNALS:
                factory.rooms.signal(self, kind, message["payload"], message["to_peer_id"], message["to_user_id"])
            elif kind == "chat":
                factory.rooms.chat(self, message["payload"]).addErrback(self._failed)
            elif kind == "media-state":
                factory.rooms.media_state(self, message["payload"])
            elif kind == "screen-share":
                factory.rooms.screen_share(self, message["payload"])
            else:  # ping
                factory.rooms.pong(self, message["payload"])
        except WeCompanyError as e:
            self.send_error(e)
        except Exception:
            self._log.failure("handling a signaling message failed")
            self.send_error(InternalError())

    def _decode(self, payload: bytes, is_binary: bool) -> dict:
        if is_binary:
            raise InvalidInput("binary messages are not supported: send JSON text")
        if len(payload) > self.factory.max_message:
            raise TooLarge(f"message larger than {self.factory.max_message} bytes")
        obj = decode_json(payload, "message")
        if not isinstance(obj, dict):
            raise InvalidInput("message must be a JSON object")
        t = obj.get("type")
        if isinstance(t, str):
            self.dialect, kind = SEED, t
        elif isinstance(t, int) and not isinstance(t, bool):
            self.dialect, kind = NUMERIC, KINDS.get(t, "")
        else:
            raise InvalidInput("type must be a string or a number")
        if kind not in CLIENT_KINDS:
            raise InvalidInput(f"unknown or server-only message type {t!r}")
        to_peer = obj.get("to_peer_id")
        to_user = obj.get("to_user_id")
        if to_peer is not None and not isinstance(to_peer, str):
            raise InvalidInput("to_peer_id must be a string")
        if to_user is not None:
            if isinstance(to_user, str) and to_user.isdigit():
                to_user = int(to_user)
            if not isinstance(to_user, int) or isinstance(to_user, bool):
                raise InvalidInput("to_user_id must be an integer")
        return {"kind": kind, "payload": obj.get("payload"), "to_peer_id": to_peer or None, "to_user_id": to_user}

    def _flooding(self, verdict: str) -> None:
        if verdict == CLOSE:
            self._closing = True
            self.send_error(RateLimited("message rate limit exceeded"))
            self.sendClose(CLOSE_FLOOD, "message rate limit exceeded")
        elif verdict == WARN:
            self.send_error(RateLimited("message rate limit exceeded, messages dropped"))

    def _failed(self, failure) -> None:
        if failure.check(WeCompanyError):
            self.send_error(failure.value)
        else:
            self._log.failure("handling a signaling message failed", failure)
            self.send_error(InternalError())

    # -- IClient ----------------------------------------------------------------
    def send_event(self, event) -> None:
        # Never raises: a peer that is closing (its close handshake under way)
        # simply gets nothing, and whoever is notifying the room goes on.
        if not isinstance(event, SignalEvent) or not self._open or self._closing or self.state != self.STATE_OPEN:
            return
        message = self._prepared(event)
        if not self._gate.admit(len(message.payloadHybi)):
            # The client stopped reading: cut it off before its backlog grows further.
            self._log.info("dropping slow signaling client {user} ({address})",
                           user=self.user.id if self.user else "?", address=self.client_address)
            self._closing = True
            self.transport.abortConnection()
            return
        self.factory.stats.ws_messages_out += 1
        self._send_prepared(message)

    def _prepared(self, event: SignalEvent) -> PreparedMessage:
        """
        The event as a WebSocket frame of JSON in this connection's dialect.
        An event from a member reads the same for every recipient of one
        dialect, so it is encoded and framed once per dialect, not once per
        recipient.
        """
        shared = event.from_session_id is not None
        key = self.dialect
        if shared and key in event.encoded:
            return event.encoded[key]
        data = json.dumps(self.encode(event), separators=(",", ":"), ensure_ascii=False).encode()
        message = self.factory.prepareMessage(data)
        if shared:
            event.encoded[key] = message
        return message

    def _send_prepared(self, message: PreparedMessage) -> None:
        self.sendPreparedMessage(message)

    def send_media(self, call_id, data) -> bool:
        return False  # media goes peer to peer (WebRTC), not through signaling

    def disconnect(self, error: WeCompanyError) -> None:
        if self._closing:
            return
        self.send_error(error)
        self._closing = True
        code = CLOSE_REPLACED if error.code == 409 else CLOSE_SHUTDOWN if error.code == 503 else CLOSE_KICKED
        self.sendClose(code, error.message[:100])

    def send_error(self, error: WeCompanyError) -> None:
        member = self.factory.rooms.member_of(self)
        meeting_id = member.meeting_id if member is not None else (self.meeting.id if self.meeting else 0)
        details = {"error_code": error.error_code} if error.error_code is not None else {}
        self.send_event(SignalEvent("error", meeting_id, {"code": error.code, "message": error.message,
                                                          "details": details}, self.factory.clock.seconds()))

    def encode(self, event: SignalEvent) -> dict:
        """The server envelope, in this connection's dialect."""
        out = {"type": event.kind if self.dialect == SEED else NUMBERS[event.kind], "id": event.id}
        if event.from_user_id is not None:
            out["from_user_id"] = event.from_user_id
            out["from_peer_id"] = event.from_peer_id
        if event.to_user_id is not None:
            out["to_user_id"] = event.to_user_id
        if event.to_peer_id is not None:
            out["to_peer_id"] = event.to_peer_id
        out["meeting_id"] = event.meeting_id
        member = self.factory.rooms.member_of(self)
        out["session_id"] = event.from_session_id or (member.session_id if member is not None else None)
        out["payload"] = event.payload
        out["timestamp"] = rfc3339(event.timestamp)
        return out


class SignalingFactory(WebSocketServerFactory):
    """
    :param domain: the :class:`~wecompany.domain.core.Domain`: its accounts
        (the token check), rooms, and chat (presence: a signaling user is
        online). Limits from config.
    :param trusted_proxies: a :class:`~wecompany.proxies.TrustedProxies`:
        the peers whose X-Forwarded-For names the client.
    :param fast_path: serve :class:`~wecompany.signaling.fastpath.FastPathProtocol`,
        which relies on Autobahn internals, while its checks hold; otherwise
        (or when they fail) plain, public Autobahn serves.

    Autobahn's timers (pings, their timeouts, handshake timeouts) run on
    txaio's loop, which the composition root sets (``txaio.config.loop``).
    """

    protocol = SignalingProtocol
    noisy = False
    log = Logger()

    def __init__(self, domain, *, max_message: int = 1 << 20,
                 message_rate: float = 50.0, message_burst: float = 100.0, ping_interval: float = 30.0,
                 ping_timeout: float = 60.0, allowed_origins=("*",), max_send_buffer: int | None = None,
                 reactor=None, fast_path: bool = True, trusted_proxies=NO_PROXIES) -> None:
        super().__init__(reactor=reactor)
        self.stats = domain.stats  # connections, messages and logins, for the metrics
        self.trusted_proxies = trusted_proxies  # whose X-Forwarded-For names the client
        self.fast_path = fast_path
        self.fast_path_checked = False
        if fast_path:
            from wecompany.signaling import fastpath  # it builds on this module
            self.protocol = fastpath.FastPathProtocol
            fastpath.check_at_start(self)
        self.accounts = domain.accounts
        self.rooms = domain.rooms
        self.chat = domain.chat
        self.clock = domain.clock
        self.max_message = max_message
        self.message_rate = message_rate
        self.message_burst = message_burst
        self.connections: set[SignalingProtocol] = set()
        self.shutting_down = False
        self.max_send_buffer = max_send_buffer or max(4 * max_message, 4 << 20)
        # Origins are checked in onConnect (403; Autobahn's own check answers 400).
        self._origins = None if "*" in allowed_origins else wildcards2patterns(list(allowed_origins))
        # Autobahn closes (1009) past its own limit; up to ours, a message is
        # answered with an error instead and the connection stays open.
        self.setProtocolOptions(maxMessagePayloadSize=max_message * 4, maxFramePayloadSize=max_message * 4,
                                autoPingInterval=ping_interval or None, autoPingTimeout=ping_timeout or None,
                                openHandshakeTimeout=10)

    def disable_fast_path(self, problems: list[str]) -> None:
        """An Autobahn internal the fast path uses has changed: serve plain Autobahn from now on."""
        if self.fast_path:
            self.fast_path = False
            self.log.error("signaling fast path off, plain Autobahn serves instead: {problems}",
                           problems="; ".join(problems))

    def origin_allowed(self, origin: str | None) -> bool:
        """
        Browsers always send Origin; clients that send none (desktop, tests)
        are not browsers and cannot be used for cross-site requests.
        """
        if self._origins is None or not origin:
            return True
        return any(pattern.match(origin) for pattern in self._origins)

    def shutdown(self) -> None:
        """Tell every signaling client the server is stopping and close."""
        self.shutting_down = True
        for proto in list(self.connections):
            proto.disconnect(WeCompanyError("server is shutting down", code=503))
