"""
Signaling through the real daemon: real WebSocket clients (Autobahn's) join a
meeting created over REST and exchange every message type.
"""

from __future__ import annotations

import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue

from tests.e2e.test_daemon import DaemonTestCase
from tests.e2e.test_rest import Http

TIMEOUT = 10


class WSClient(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.inbox.put(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        self.factory.closed.callback((code, reason))

    def send(self, obj):
        self.sendMessage(json.dumps(obj).encode())


async def ws_connect(testcase, port: int, meeting_id: int, user_id: int, peer_id: str, token: str):
    url = f"ws://127.0.0.1:{port}/ws/signaling?meeting_id={meeting_id}&user_id={user_id}&peer_id={peer_id}&token={token}"
    factory = WebSocketClientFactory(url)
    factory.protocol = WSClient
    factory.opened, factory.closed, factory.inbox = Deferred(), Deferred(), DeferredQueue()
    connector = connectWS(factory)
    testcase.addCleanup(connector.disconnect)
    timer = reactor.callLater(TIMEOUT, lambda: factory.opened.called or factory.opened.errback(
        TimeoutError("websocket did not open")))
    client = await factory.opened
    if timer.active():
        timer.cancel()
    client.inbox = factory.inbox
    client.closed = factory.closed
    return client


async def next_message(client, kind: str) -> dict:
    """The next message of ``kind`` (others before it are skipped)."""
    while True:
        d = client.inbox.get()
        timer = reactor.callLater(TIMEOUT, d.cancel)
        message = await d
        if timer.active():
            timer.cancel()
        if message["type"] == kind:
            return message


class MeetingPeople:
    """Mixin of daemon test cases: people in a meeting."""

    async def meeting_of(self, http, title: str, names=("alice", "bob")):
        """Register and log in ``names``, the first creates a meeting, all join it over REST.
        -> ({name: (user_id, token)}, meeting_id)"""
        people = {}
        for name in names:
            await http.register(name)
            data = await http.login(name)
            people[name] = (data["user"]["id"], data["token"])
        code, body = await http.call("POST", "/api/v1/meetings", {"title": title}, token=people[names[0]][1])
        mid = body["data"]["meeting"]["id"]
        for _, token in people.values():
            code, body = await http.call("POST", f"/api/v1/meetings/{mid}/join", {}, token=token)
            self.assertEqual(code, 200, body)
        return people, mid


class SignalingEndToEndTests(MeetingPeople, DaemonTestCase):

    async def test_two_clients_exchange_every_message_type(self) -> None:
        daemon = await self.start_daemon()
        http = Http(self, daemon)
        people, mid = await self.meeting_of(http, "signal")
        clients = {}
        for name, (uid, token) in people.items():
            clients[name] = await ws_connect(self, daemon.http_port, mid, uid, f"peer-{name}", token)
        alice, bob = clients["alice"], clients["bob"]
        alice.send({"type": "join"})
        info = await next_message(alice, "room-info")
        self.assertEqual(info["payload"]["participant_count"], 1)
        bob.send({"type": 4})  # join, numeric dialect
        self.assertEqual((await next_message(bob, 14))["payload"]["participant_count"], 2)
        joined = await next_message(alice, "user-joined")
        self.assertEqual(joined["from_peer_id"], "peer-bob")
        alice.send({"type": "offer", "to_peer_id": "peer-bob", "payload": {"sdp": "v=0 offer"}})
        self.assertEqual((await next_message(bob, 1))["payload"], {"sdp": "v=0 offer"})
        bob.send({"type": 2, "to_user_id": people["alice"][0], "payload": {"sdp": "v=0 answer"}})
        self.assertEqual((await next_message(alice, "answer"))["from_user_id"], people["bob"][0])
        alice.send({"type": "ice-candidate", "to_peer_id": "peer-bob", "payload": {"candidate": "candidate:1"}})
        self.assertEqual((await next_message(bob, 3))["payload"]["candidate"], "candidate:1")
        bob.send({"type": 8, "payload": {"content": "hello"}})
        for client, kind in ((alice, "chat"), (bob, 8)):
            self.assertEqual((await next_message(client, kind))["payload"]["content"], "hello")
        alice.send({"type": "media-state", "payload": {"audio_enabled": False}})
        self.assertEqual((await next_message(bob, 10))["payload"], {"audio_enabled": False, "video_enabled": True})
        alice.send({"type": "screen-share", "payload": {"enabled": True}})
        self.assertEqual((await next_message(bob, 9))["payload"], {"enabled": True, "sharing": True})
        bob.send({"type": 11})
        await next_message(bob, 12)
        alice.send({"type": "nonsense"})
        self.assertEqual((await next_message(alice, "error"))["payload"]["code"], 400)
        code, body = await http.call("GET", "/api/v1/stats/rooms", token=people["alice"][1])
        self.assertEqual(body["data"]["rooms"][0]["participant_count"], 2)
        bob.send({"type": 5})  # leave
        left = await next_message(alice, "user-left")
        self.assertEqual(left["from_peer_id"], "peer-bob")
        code, body = await http.call("GET", f"/api/v1/meetings/{mid}/messages", token=people["bob"][1])
        self.assertEqual([m["content"] for m in body["data"]["list"]], ["hello"])
        code, body = await http.call("GET", f"/api/v1/meetings/{mid}/participants", token=people["alice"][1])
        states = {p["username"]: p["status"] for p in body["data"]}
        self.assertEqual(states["bob"], "left")
        self.assertNotIn("fast path off", daemon.log_text())  # its checks passed on this Autobahn

    async def test_chat_survives_a_crash_and_the_room_follows_its_meeting(self) -> None:
        daemon = await self.start_daemon()
        http = Http(self, daemon)
        people, mid = await self.meeting_of(http, "durable")
        bob = await ws_connect(self, daemon.http_port, mid, people["bob"][0], "peer-bob", people["bob"][1])
        bob.send({"type": "join"})
        await next_message(bob, "room-info")
        sent = [f"message {i}" for i in range(20)]
        for text in sent:  # without waiting: they are committed in groups
            bob.send({"type": "chat", "payload": {"content": text}})
        echoed = [(await next_message(bob, "chat"))["payload"]["content"] for _ in sent]
        self.assertEqual(echoed, sent)
        # Echoed means committed: not even SIGKILL right after loses one.
        await daemon.kill()
        await daemon.start()
        http = Http(self, daemon)
        code, body = await http.call("GET", f"/api/v1/meetings/{mid}/messages?page_size=50", token=people["bob"][1])
        self.assertEqual([m["content"] for m in body["data"]["list"]], sent)

        clients = {}
        for name, (uid, token) in people.items():
            clients[name] = await ws_connect(self, daemon.http_port, mid, uid, f"peer-{name}", token)
            clients[name].send({"type": "join"})
            await next_message(clients[name], "room-info")
        code, body = await http.call("POST", f"/api/v1/meetings/{mid}/end", {}, token=people["alice"][1])
        self.assertEqual(code, 200, body)
        for client in clients.values():
            error = await next_message(client, "error")
            self.assertEqual(error["payload"]["details"]["error_code"], 2002)
            code, _ = await client.closed
            self.assertEqual(code, 4003)

    async def test_handshake_rejected_before_upgrade(self) -> None:
        daemon = await self.start_daemon()
        http = Http(self, daemon)
        await http.register("carol")
        data = await http.login("carol")
        code, body = await http.call("POST", "/api/v1/meetings", {"title": "x"}, token=data["token"])
        mid = body["data"]["meeting"]["id"]
        import treq
        for query, status in ((f"meeting_id={mid}&user_id=abc&peer_id=p&token=t", 400),
                              (f"meeting_id={mid}&user_id={data['user']['id']}&peer_id=p&token=bad", 401),
                              (f"meeting_id=999&user_id={data['user']['id']}&peer_id=p&token={data['token']}", 403)):
            response = await treq.get(f"http://127.0.0.1:{daemon.http_port}/ws/signaling?{query}",
                                      headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                               "Sec-WebSocket-Version": "13",
                                               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
                                      pool=http.pool, timeout=10)
            await response.content()
            self.assertEqual(response.code, status, query)


class SilentClient(__import__("twisted.internet.protocol", fromlist=["Protocol"]).Protocol):
    """Completes the WebSocket handshake, then never reads a frame or answers a ping."""

    def __init__(self, request: bytes):
        self.request = request
        self.received = b""
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(None)


class SignalingLimitsEndToEndTests(DaemonTestCase):
    async def _member(self, daemon):
        http = Http(self, daemon)
        await http.register("dana")
        data = await http.login("dana")
        code, body = await http.call("POST", "/api/v1/meetings", {"title": "limits"}, token=data["token"])
        mid = body["data"]["meeting"]["id"]
        await http.call("POST", f"/api/v1/meetings/{mid}/join", {}, token=data["token"])
        return http, mid, data

    def _upgrade(self, daemon, mid, data, origin: str) -> bytes:
        return (f"GET /ws/signaling?meeting_id={mid}&user_id={data['user']['id']}&peer_id=p&token={data['token']} "
                f"HTTP/1.1\r\nHost: 127.0.0.1:{daemon.http_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: {origin}\r\n\r\n").encode()

    async def _open(self, daemon, request: bytes) -> SilentClient:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        client = SilentClient(request)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.http_port), client)
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport.connected else None)
        return client

    async def test_origin_allow_list(self) -> None:
        daemon = await self.start_daemon("--allowed-origins", "https://meet.example.com")
        http, mid, data = await self._member(daemon)
        refused = await self._open(daemon, self._upgrade(daemon, mid, data, "https://evil.example.com"))
        timer = reactor.callLater(TIMEOUT, refused.lost.cancel)
        await refused.lost
        timer.cancel()
        self.assertTrue(refused.received.startswith(b"HTTP/1.1 403"), refused.received[:80])
        accepted = await self._open(daemon, self._upgrade(daemon, mid, data, "https://meet.example.com"))
        while b"\r\n\r\n" not in accepted.received:
            await __import__("twisted.internet.task", fromlist=["deferLater"]).deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(accepted.received.startswith(b"HTTP/1.1 101"), accepted.received[:80])

    async def test_client_that_does_not_answer_pings_is_dropped(self) -> None:
        daemon = await self.start_daemon("--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.6")
        http, mid, data = await self._member(daemon)
        silent = await self._open(daemon, self._upgrade(daemon, mid, data, "http://127.0.0.1"))
        started = reactor.seconds()
        timer = reactor.callLater(TIMEOUT, silent.lost.cancel)
        await silent.lost
        timer.cancel()
        elapsed = reactor.seconds() - started
        self.assertTrue(silent.received.startswith(b"HTTP/1.1 101"), silent.received[:80])
        # A ping frame (opcode 0x9) reached the client before it was dropped.
        self.assertIn(b"\x89", silent.received.split(b"\r\n\r\n", 1)[1])
        self.assertLess(elapsed, 5.0)


class SignOutEndToEndTests(MeetingPeople, DaemonTestCase):
    async def test_a_password_change_ends_every_token_and_session_at_once(self) -> None:
        """The user's live TCP and WebSocket sessions close, and its old access token stops working."""
        from tests.e2e.client import PASSWORD as TCP_PASSWORD
        from wecompany.tcp import codec
        from wecompany.tcp.codec import MsgType

        daemon = await self.start_daemon()
        http = Http(self, daemon)
        people, mid = await self.meeting_of(http, "sign-out")
        alice_id, old_token = people["alice"]
        ws = await ws_connect(self, daemon.http_port, mid, alice_id, "peer-alice", old_token)
        ws.send({"type": "join"})
        await next_message(ws, "room-info")
        tcp = await self.connect(daemon, "alice-desktop")
        await tcp.login_token(old_token)
        code, body = await http.call("POST", "/api/v1/users/change-password",
                                     {"old_password": TCP_PASSWORD, "new_password": "Another-pass2"}, token=old_token)
        self.assertEqual(code, 200, body)
        error = await tcp.expect_error(401)
        self.assertIn("password was changed", error["message"])
        await tcp.wait_closed()
        code, _ = await ws.closed
        self.assertEqual(code, 4003)
        self.assertEqual((await http.call("GET", "/api/v1/users/profile", token=old_token))[0], 401)
        again = await self.connect(daemon, "alice-again")
        again.send(codec.u8(MsgType.AUTH_TOKEN) + codec.str16(old_token))
        result = await again.expect(MsgType.AUTH_RESULT)
        self.assertEqual((result["ok"], result["error"]), (False, "token revoked: log in again"))
        # The tokens the answer carried work at once, on both ports.
        fresh = body["data"]["token"]
        self.assertEqual((await http.call("GET", "/api/v1/users/profile", token=fresh))[0], 200)
        await (await self.connect(daemon, "alice-new")).login_token(fresh)


class PlainAutobahnEndToEndTests(SignalingEndToEndTests):
    """The same, with the signaling fast path off: plain Autobahn serves."""

    daemon_args = ("--no-ws-fast-path",)
