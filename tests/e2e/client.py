"""
A desktop client for the end-to-end tests: real TCP to the daemon, frames
built with the codec's helpers and every server frame parsed with
:func:`wecompany.tcp.codec.decode_server`.

``expect(type)`` hands out the next unread message of a type and leaves the
others for later ``expect`` calls; ``received`` keeps every message in
arrival order for assertions about ordering. Every wait has a timeout that
fails the test with what did arrive.
"""

from __future__ import annotations

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import Int32StringReceiver

from wecompany.tcp import codec
from wecompany.tcp.codec import MsgType

DEFAULT_TIMEOUT = 5.0
PASSWORD = "Secret-pass1"


def type_name(t: int) -> str:
    try:
        return MsgType(t).name
    except ValueError:
        return f"0x{t:02x}"


class _Frames(Int32StringReceiver):
    # Larger than any frame the daemon may send: the tests check its limits,
    # not this client's.
    MAX_LENGTH = 128 << 20

    def __init__(self, client: "Client") -> None:
        self.client = client

    def stringReceived(self, body: bytes) -> None:
        self.client._frame(body)

    def connectionLost(self, reason=None) -> None:
        self.client._lost(reason)


class Client:
    """
    One connection to the daemon's TCP port. Use :func:`connect`.

    :ivar received: every decoded :class:`codec.ServerMessage`, in order.
    :ivar user_id: the id from the last successful AUTH_RESULT.
    :ivar token: the token from the last successful AUTH_RESULT.
    """

    def __init__(self, testcase, name: str = "client", reactor=None) -> None:
        self.testcase = testcase
        self.name = name
        self.reactor = reactor or global_reactor
        self.received: list[codec.ServerMessage] = []
        self.user_id: str | None = None
        self.token: str | None = None
        self.closed = False
        self.close_reason = None
        self._unread: list[codec.ServerMessage] = []
        self._waiters: list[tuple[int, Deferred]] = []
        self._closed_waiters: list[Deferred] = []
        self.protocol = _Frames(self)

    def __repr__(self) -> str:
        return f"<Client {self.name} user={self.user_id}>"

    # -- receiving --------------------------------------------------------------
    def _frame(self, body: bytes) -> None:
        try:
            msg = codec.decode_server(body)
        except Exception as error:  # the test fails in expect(); keep the evidence
            msg = codec.ServerMessage(-1, {"undecodable": body, "error": repr(error)})
        self.received.append(msg)
        for i, (t, d) in enumerate(self._waiters):
            if t == msg.type:
                del self._waiters[i]
                d.callback(msg)
                return
        self._unread.append(msg)

    def _lost(self, reason) -> None:
        self.closed = True
        self.close_reason = reason
        waiters, self._waiters = self._waiters, []
        for t, d in waiters:
            d.errback(self.testcase.failureException(
                f"{self.name}: connection closed while waiting for {type_name(t)}; "
                f"received {self.describe()}"))
        closed, self._closed_waiters = self._closed_waiters, []
        for d in closed:
            d.callback(None)

    def describe(self) -> str:
        return "[" + ", ".join(f"{type_name(m.type)} {m.fields}" for m in self.received) + "]"

    async def _wait(self, d: Deferred, timeout: float, what: str):
        d.addTimeout(timeout, self.reactor)
        try:
            return await d
        except TimeoutError:
            self.testcase.fail(f"{self.name}: no {what} within {timeout} s; received {self.describe()}")

    async def expect(self, t: int, timeout: float = DEFAULT_TIMEOUT) -> codec.ServerMessage:
        """The next unread message of type ``t``; others stay unread for later."""
        for i, msg in enumerate(self._unread):
            if msg.type == t:
                del self._unread[i]
                return msg
        if self.closed:
            self.testcase.fail(f"{self.name}: connection closed, no {type_name(t)}; "
                               f"received {self.describe()}")
        d = Deferred(lambda d: self._waiters.remove((t, d)) if (t, d) in self._waiters else None)
        self._waiters.append((t, d))
        return await self._wait(d, timeout, type_name(t))

    async def expect_error(self, code: int, timeout: float = DEFAULT_TIMEOUT) -> codec.ServerMessage:
        """The next ERROR, which must carry ``code``."""
        error = await self.expect(MsgType.ERROR, timeout)
        self.testcase.assertEqual(error["code"], code, f"{self.name}: unexpected ERROR {error.fields}")
        return error

    def unread(self, t: int | None = None) -> list[codec.ServerMessage]:
        """Messages not handed out by :meth:`expect` yet (of type ``t``)."""
        return [m for m in self._unread if t is None or m.type == t]

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the connection is closed (by either side)."""
        if self.closed:
            return
        d = Deferred()
        self._closed_waiters.append(d)
        await self._wait(d, timeout, "connection close")

    # -- sending ----------------------------------------------------------------
    def send(self, body: bytes) -> None:
        """Send one frame with this body."""
        self.protocol.sendString(body)

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are, framing included (or not)."""
        self.protocol.transport.write(data)

    async def _authenticate(self, t: int, *fields: bytes) -> codec.ServerMessage:
        self.send(codec.u8(t) + b"".join(fields))
        result = await self.expect(MsgType.AUTH_RESULT, timeout=10)
        if not result["ok"]:
            self.testcase.fail(f"{self.name}: {type_name(t)} failed: {result['error']}")
        self.user_id, self.token = result["user_id"], result["token"]
        return result

    async def register(self, username: str, password: str = PASSWORD) -> codec.ServerMessage:
        """REGISTER, which must succeed; returns the AUTH_RESULT."""
        return await self._authenticate(MsgType.REGISTER, codec.str16(username), codec.str16(password))

    async def login(self, username: str, password: str = PASSWORD) -> codec.ServerMessage:
        """LOGIN, which must succeed; returns the AUTH_RESULT."""
        return await self._authenticate(MsgType.LOGIN, codec.str16(username), codec.str16(password))

    async def login_token(self, token: str) -> codec.ServerMessage:
        """AUTH_TOKEN, which must succeed; returns the AUTH_RESULT."""
        return await self._authenticate(MsgType.AUTH_TOKEN, codec.str16(token))

    def text(self, to: str, text: str) -> None:
        self.send(codec.u8(MsgType.TEXT) + codec.qstr(to) + codec.qstr(text))

    def call(self, callee: str, is_video: bool = False) -> None:
        self.send(codec.u8(MsgType.CALL_REQUEST) + codec.qstr(callee) + codec.u8(int(is_video)))

    def accept(self, call_id: str) -> None:
        self.send(codec.u8(MsgType.CALL_ACCEPT) + codec.qstr(call_id))

    def hang_up(self, call_id: str) -> None:
        self.send(codec.u8(MsgType.CALL_END) + codec.qstr(call_id))

    def media(self, payload: bytes) -> None:
        self.send(codec.u8(MsgType.MEDIA_DATA) + payload)

    async def close(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Close the connection and wait until it is gone."""
        if not self.closed:
            self.protocol.transport.loseConnection()
        await self.wait_closed(timeout)

    async def abort(self) -> None:
        """Cleanup: drop the connection at once and wait until it is gone."""
        if not self.closed:
            self.protocol.transport.abortConnection()
        await self.wait_closed()


async def connect(testcase, port: int, name: str = "client", reactor=None,
                  timeout: float = DEFAULT_TIMEOUT) -> Client:
    """Connect a :class:`Client` to 127.0.0.1:``port``; it is aborted in the test's cleanup."""
    reactor = reactor or global_reactor
    client = Client(testcase, name, reactor)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    await connectProtocol(endpoint, client.protocol)
    testcase.addCleanup(client.abort)
    return client
