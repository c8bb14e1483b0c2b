"""
``wecompany send``, ``online`` and ``call-test``: a client of the TCP port.

For trying a server without the desktop client: each logs in over the real
binary protocol (``docs/protocol.rst``; frames cut and decoded by
:mod:`wecompany.tcp.codec`), on the reactor (:func:`twisted.internet.task.react`).
The server is the command's ``--host`` (default 127.0.0.1) and ``--port``
(default: the port of the daemon option ``--port``, as configured). Passwords come one a line from
standard input with ``--password-stdin``, or from a prompt.

``call-test`` logs in two accounts, places a call from the first to the
second, which accepts, then each side sends ``--packets`` media packets
(every ``--interval`` seconds) that the other echoes back: the round trip
of each is measured by its sender, and a packet not back within
``--timeout`` counts as lost. Then the caller hangs up.
"""

from __future__ import annotations

import struct

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import deferLater
from twisted.protocols.basic import Int32StringReceiver
from twisted.python import usage

from wecompany.cli.common import Command, CommandFailed, read_passwords, run_on_reactor
from wecompany.config import split_endpoint
from wecompany.tcp import codec
from wecompany.tcp.codec import MsgType

TIMEOUT = 10.0
#: The media packets of call-test: a marker, ping (0) or echo (1), the sender (0 caller, 1 callee),
#: a sequence number and the sender's clock in seconds.
_PROBE = struct.Struct(">4sBBId")
_MAGIC = b"WCct"
_PING, _ECHO = 0, 1


class _Frames(Int32StringReceiver):
    MAX_LENGTH = 64 << 20  # the server bounds what it sends by --max-frame; this bounds nothing it may send

    def __init__(self, session: "Session") -> None:
        self.session = session

    def stringReceived(self, body: bytes) -> None:
        self.session.received(body)

    def connectionLost(self, reason=None) -> None:
        self.session.lost(reason)


class Session:
    """One connection to the TCP port: typed waits for the server's messages, each with a timeout."""

    def __init__(self, reactor, name: str, timeout: float = TIMEOUT) -> None:
        self.reactor = reactor
        self.name = name
        self.timeout = timeout
        self.protocol = _Frames(self)
        self.user_id: str | None = None
        self.on_media = None  # f(call_id, payload) for MEDIA_DATA
        self.closed = False
        self._unread: list[codec.ServerMessage] = []
        self._waiters: list[tuple[tuple[int, ...], Deferred]] = []

    async def connect(self, host: str, port: int) -> "Session":
        from twisted.internet.endpoints import HostnameEndpoint, connectProtocol

        try:
            await connectProtocol(HostnameEndpoint(self.reactor, host, port, timeout=self.timeout), self.protocol)
        except Exception as error:
            raise CommandFailed(f"cannot connect to {host}:{port}: {error}") from None
        return self

    def received(self, body: bytes) -> None:
        if body[:1] == bytes((MsgType.MEDIA_DATA,)):
            if self.on_media is not None:
                message = codec.decode_server(body)
                self.on_media(message["call_id"], message["media"])
            return
        try:
            message = codec.decode_server(body)
        except Exception:
            return  # a newer server's message this client does not know
        for i, (types, d) in enumerate(self._waiters):
            if message.type in types or message.type == MsgType.ERROR:
                del self._waiters[i]
                d.callback(message)
                return
        self._unread.append(message)

    def lost(self, reason) -> None:
        self.closed = True
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(CommandFailed(f"{self.name}: the server closed the connection"))

    async def expect(self, *types: int) -> codec.ServerMessage:
        """The next message of one of ``types``; an ERROR instead is a CommandFailed."""
        for i, message in enumerate(self._unread):
            if message.type in types or message.type == MsgType.ERROR:
                del self._unread[i]
                return self._checked(message, types)
        if self.closed:
            raise CommandFailed(f"{self.name}: the server closed the connection")
        d = Deferred()
        entry = (types, d)
        self._waiters.append(entry)
        d.addTimeout(self.timeout, self.reactor)
        try:
            message = await d
        except TimeoutError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            names = "/".join(MsgType(t).name for t in types)
            raise CommandFailed(f"{self.name}: no {names} from the server within {self.timeout:g} s") from None
        return self._checked(message, types)

    def _checked(self, message, types):
        if message.type == MsgType.ERROR and MsgType.ERROR not in types:
            raise CommandFailed(f"{self.name}: the server answered ERROR {message['code']}: {message['message']}")
        return message

    def send(self, body: bytes) -> None:
        self.protocol.sendString(body)

    async def login(self, username: str, password: str) -> str:
        self.send(codec.u8(MsgType.LOGIN) + codec.str16(username) + codec.str16(password))
        result = await self.expect(MsgType.AUTH_RESULT)
        if not result["ok"]:
            raise CommandFailed(f"{username} cannot log in: {result['error']}")
        self.user_id = result["user_id"]
        return self.user_id

    def close(self) -> None:
        if not self.closed and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()


def default_port(config) -> int | None:
    """The port number of the configuration's ``--port`` (inside ``haproxy:`` too), if it names one."""
    description = config.port
    if description.startswith("haproxy:"):
        description = description[len("haproxy:"):]
    kind, args, kwargs = split_endpoint(description)
    value = kwargs.get("port", args[0] if args else None)
    return int(value) if kind in ("tcp", "tcp6", "ssl") and value and value.isdigit() and value != "0" else None


class _ClientOptions(Command):
    optParameters = [["host", None, "127.0.0.1", "the server's address"],
                     ["port", "p", None, "the server's TCP port [default: the port of the daemon option --port]", int],
                     ["timeout", None, TIMEOUT, "seconds to wait for each answer", float]]
    optFlags = [["password-stdin", None, "read the password(s) from standard input, one a line"]]

    def server(self, config) -> tuple[str, int]:
        port = self["port"] or default_port(config)
        if port is None:
            raise usage.UsageError(f"{self.command}: --port: which port? (the daemon's --port {config.port} names none)")
        return self["host"], port

    def passwords(self, users: list[str]) -> list[str]:
        return read_passwords(len(users), self["password-stdin"], [f"Password of {user}" for user in users])


class SendOptions(_ClientOptions):
    """``send --user A TO TEXT``: one text message; says whether it was delivered or stored."""

    command = "send"
    optParameters = [["user", "u", None, "who sends (username)"]]

    def getSynopsis(self) -> str:
        return "Usage: wecompany [daemon options] send --user A [--host H] [--port P] [--password-stdin] TO TEXT"

    def parseArgs(self, to=None, *text):
        if not self["user"]:
            raise usage.UsageError("send: --user is required")
        if not to or not text:
            raise usage.UsageError("send: TO and TEXT are required")
        self.to, self.text = to, " ".join(text)

    def run(self, config, environ) -> int:
        host, port = self.server(config)
        [password] = self.passwords([self["user"]])

        async def send(reactor):
            session = await Session(reactor, self["user"], self["timeout"]).connect(host, port)
            try:
                await session.login(self["user"], password)
                session.send(codec.u8(MsgType.TEXT) + codec.qstr(self.to) + codec.qstr(self.text))
                return await session.expect(MsgType.TEXT_ACK)
            finally:
                session.close()

        ack = run_on_reactor(send)
        how = "delivered" if ack["status"] == 0 else "stored for later delivery"
        print(f"message {ack['message_id']} to {ack['to']}: {how} ({ack['recipients']} recipient(s))")
        return 0


class OnlineOptions(_ClientOptions):
    """``online --user A``: who is online, as that user's client sees it."""

    command = "online"
    optParameters = [["user", "u", None, "who asks (username)"]]
    optFlags = [["json", None, "print a JSON array"]]

    def getSynopsis(self) -> str:
        return "Usage: wecompany [daemon options] online --user A [--host H] [--port P] [--password-stdin]"

    def postOptions(self) -> None:
        if not self["user"]:
            raise usage.UsageError("online: --user is required")

    def run(self, config, environ) -> int:
        host, port = self.server(config)
        [password] = self.passwords([self["user"]])

        async def online(reactor):
            session = await Session(reactor, self["user"], self["timeout"]).connect(host, port)
            try:
                await session.login(self["user"], password)
                users, offset = [], 0
                while True:
                    session.send(codec.u8(MsgType.ONLINE_LIST) + codec.u32(offset) + codec.u16(100))
                    page = await session.expect(MsgType.ONLINE_LIST)
                    users.extend(page["users"])
                    offset += len(page["users"])
                    if not page["users"] or offset >= page["total"]:
                        return users
            finally:
                session.close()

        users = run_on_reactor(online)
        if self["json"]:
            import json
            print(json.dumps([{"user_id": user_id, "username": name} for user_id, name in users]))
        else:
            print(f"{len(users)} online")
            for user_id, name in users:
                print(f"{user_id}\t{name}")
        return 0


class CallTestOptions(_ClientOptions):
    """``call-test --user A --user B``: see the module docstring."""

    command = "call-test"
    optParameters = [["packets", "n", 50, "media packets each side sends", int],
                     ["interval", None, 0.02, "seconds between two packets of a side", float],
                     ["size", None, 160, "bytes of each media packet (at least 22)", int]]

    def __init__(self) -> None:
        super().__init__()
        self.users: list[str] = []

    def opt_user(self, name: str) -> None:
        """a username: give it twice, the caller first"""
        self.users.append(name)

    opt_u = opt_user

    def getSynopsis(self) -> str:
        return ("Usage: wecompany [daemon options] call-test --user A --user B [--host H] [--port P] "
                "[--password-stdin] [--packets N]")

    def postOptions(self) -> None:
        if len(self.users) != 2:
            raise usage.UsageError("call-test: --user twice: the caller, then the callee")
        if self["packets"] < 1 or not 0 < self["interval"] <= 10 or not _PROBE.size <= self["size"] <= 60000:
            raise usage.UsageError(f"call-test: --packets at least 1, --interval in (0, 10], --size "
                                   f"{_PROBE.size} to 60000")

    def run(self, config, environ) -> int:
        host, port = self.server(config)
        passwords = self.passwords(self.users)
        report = run_on_reactor(lambda reactor: call_test(reactor, host, port, self.users, passwords,
                                                          packets=self["packets"], interval=self["interval"],
                                                          size=self["size"], timeout=self["timeout"]))
        caller, callee = self.users
        print(f"call {report['call_id']}: {caller} -> {callee}, accepted in {report['setup_ms']:.1f} ms")
        for who, direction in ((caller, "caller"), (callee, "callee")):
            stats = report[direction]
            line = (f"{who}: {stats['sent']} sent, {stats['back']} back, {stats['lost']} lost"
                    + (f"; round trip p50 {stats['p50_ms']:.1f} ms, max {stats['max_ms']:.1f} ms"
                       if stats["back"] else ""))
            print(line)
        lost = report["caller"]["lost"] + report["callee"]["lost"]
        return 1 if lost == report["caller"]["sent"] + report["callee"]["sent"] else 0


async def call_test(reactor, host: str, port: int, users, passwords, *, packets: int, interval: float, size: int,
                    timeout: float) -> dict:
    """The call, the media both ways, the hang-up -> the measurements (see :class:`CallTestOptions`)."""
    caller = await Session(reactor, users[0], timeout).connect(host, port)
    callee = await Session(reactor, users[1], timeout).connect(host, port)
    try:
        await caller.login(users[0], passwords[0])
        callee_id = await callee.login(users[1], passwords[1])
        started = reactor.seconds()
        caller.send(codec.u8(MsgType.CALL_REQUEST) + codec.qstr(callee_id) + codec.u8(0))
        ringing = await caller.expect(MsgType.CALL_RINGING, MsgType.CALL_REJECT)
        if ringing.type == MsgType.CALL_REJECT:
            raise CommandFailed(f"the call was refused: {ringing['reason']}")
        incoming = await callee.expect(MsgType.CALL_REQUEST)
        call_id = incoming["call_id"]
        callee.send(codec.u8(MsgType.CALL_ACCEPT) + codec.qstr(call_id))
        await caller.expect(MsgType.CALL_ACCEPT)
        await callee.expect(MsgType.CALL_ACCEPT)
        setup_ms = (reactor.seconds() - started) * 1000
        sides = (caller, callee)
        sent_at: list[dict[int, float]] = [{}, {}]
        trips: list[list[float]] = [[], []]
        filler = b"\0" * (size - _PROBE.size)

        def receiving(me: int):
            def on_media(media_call_id, payload):
                if media_call_id != call_id or len(payload) < _PROBE.size:
                    return
                magic, kind, origin, sequence, _ = _PROBE.unpack_from(payload)
                if magic != _MAGIC:
                    return
                if kind == _PING and origin != me:  # the other's packet: back it goes
                    sides[me].send(codec.u8(MsgType.MEDIA_DATA) + _PROBE.pack(_MAGIC, _ECHO, origin, sequence, 0)
                                   + payload[_PROBE.size:])
                elif kind == _ECHO and origin == me and sequence in sent_at[me]:
                    trips[me].append(reactor.seconds() - sent_at[me].pop(sequence))
            return on_media

        caller.on_media, callee.on_media = receiving(0), receiving(1)
        for sequence in range(packets):
            for me, side in enumerate(sides):
                sent_at[me][sequence] = reactor.seconds()
                side.send(codec.u8(MsgType.MEDIA_DATA) + _PROBE.pack(_MAGIC, _PING, me, sequence, 0) + filler)
            await deferLater(reactor, interval, lambda: None)
        deadline = reactor.seconds() + timeout
        while any(sent_at) and reactor.seconds() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        caller.send(codec.u8(MsgType.CALL_END) + codec.qstr(call_id))
        await caller.expect(MsgType.CALL_END)
        await callee.expect(MsgType.CALL_END)
        return {"call_id": call_id, "setup_ms": setup_ms,
                "caller": _stats(packets, trips[0]), "callee": _stats(packets, trips[1])}
    finally:
        caller.close()
        callee.close()


def _stats(sent: int, trips: list[float]) -> dict:
    ordered = sorted(trips)
    return {"sent": sent, "back": len(trips), "lost": sent - len(trips),
            "p50_ms": ordered[len(ordered) // 2] * 1000 if ordered else None,
            "max_ms": ordered[-1] * 1000 if ordered else None}

