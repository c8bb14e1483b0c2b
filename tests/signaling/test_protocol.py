"""
Signaling over its real protocol class, with the handshake and every message
type in both dialects; no sockets, no wall time. The protocol's hooks
(``onConnect``, ``onOpen``, ``onMessage``, ``onClose``) are driven directly and
what it sends is captured; the real WebSocket framing is covered end to end.
"""

from __future__ import annotations

import json

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.address import IPv4Address

from tests.api.harness import Api
from wecompany.signaling.protocol import NUMBERS, SignalingFactory, SignalingProtocol


class Captured(SignalingProtocol):
    """The protocol with its output captured instead of framed onto a socket."""

    def __init__(self):
        super().__init__()
        self.sent: list[dict] = []
        self.closed = None
        self.state = self.STATE_OPEN  # as after a real handshake

    def _send_prepared(self, message):
        assert self.state == self.STATE_OPEN, "sent on a connection that is not open"
        self.sent.append(json.loads(message.payload))

    # Below Autobahn's sendClose, so that its checks of the code and reason run.
    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        self.closed = (code, reasonUtf8.decode() if reasonUtf8 is not None else None)

    def take(self) -> list[dict]:
        sent, self.sent = self.sent, []
        return sent

    def kinds(self) -> list:
        return [m["type"] for m in self.take()]

    def send(self, obj) -> None:
        self.onMessage(json.dumps(obj).encode(), False)


class SignalingTestCase(SynchronousTestCase):
    factory_options: dict = {}

    def setUp(self):
        self.api = Api(self)
        self.factory = SignalingFactory(self.api.domain, ping_interval=0, ping_timeout=0, **self.factory_options)
        self.users: dict[str, tuple[int, str]] = {}
        self.host_token = self.token("host")
        code, body, _ = self.api.request("POST", "/api/v1/meetings", {"title": "standup", "max_participants": 5},
                                         token=self.host_token)
        self.meeting_id = body["data"]["meeting"]["id"]

    def token(self, name: str) -> str:
        if name not in self.users:
            token = self.api.user(name)
            self.users[name] = (self.api.domain.tokens.verify(token)["user_id"], token)
        return self.users[name][1]

    def uid(self, name: str) -> int:
        self.token(name)
        return self.users[name][0]

    def rest_join(self, name: str, meeting_id: int | None = None) -> None:
        code, body, _ = self.api.request("POST", f"/api/v1/meetings/{meeting_id or self.meeting_id}/join", {},
                                         token=self.token(name))
        self.assertEqual(code, 200, body)

    def request(self, params: dict, headers: dict | None = None) -> ConnectionRequest:
        return ConnectionRequest("tcp4:127.0.0.1:50000", headers or {}, "localhost", "/ws/signaling",
                                 {k: [str(v)] for k, v in params.items()}, 13, None, [], [])

    def handshake(self, name: str, peer: str | None = None, meeting_id: int | None = None, **override):
        proto = Captured()
        proto.factory = self.factory
        params = {"meeting_id": meeting_id or self.meeting_id, "user_id": self.uid(name),
                  "peer_id": peer or f"peer-{name}", "token": self.token(name), **override}
        params = {k: v for k, v in params.items() if v is not None}
        return proto, proto.onConnect(self.request(params))

    def connect(self, name: str, peer: str | None = None, meeting_id: int | None = None, join_rest=True,
                dialect: str = "seed", join=True) -> Captured:
        if join_rest:
            self.rest_join(name, meeting_id)
        proto, d = self.handshake(name, peer, meeting_id)
        self.assertIsNone(self.successResultOf(d))
        proto.onOpen()
        if join:
            proto.send({"type": "join" if dialect == "seed" else NUMBERS["join"]})
        return proto

    def denied(self, d) -> int:
        return self.failureResultOf(d, ConnectionDeny).value.code


class HandshakeTests(SignalingTestCase):
    def client_address_of(self, trusted: str | None, forwarded: str | None) -> str:
        from wecompany.config import parse_networks
        from wecompany.proxies import TrustedProxies

        networks = parse_networks("trusted-proxies", trusted) if trusted else None
        factory = SignalingFactory(self.api.domain, ping_interval=0, ping_timeout=0,
                                   trusted_proxies=TrustedProxies.of(networks))
        self.rest_join("alice")
        proto = Captured()
        proto.factory = factory
        proto.transport = FakeTransport()  # its peer is 192.0.2.7
        params = {"meeting_id": self.meeting_id, "user_id": self.uid("alice"), "peer_id": "p",
                  "token": self.token("alice")}
        headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
        self.assertIsNone(self.successResultOf(proto.onConnect(self.request(params, headers))))
        return proto.client_address

    def test_the_client_address_behind_a_trusted_proxy(self):
        self.assertEqual(self.client_address_of("192.0.2.0/24", "203.0.113.4, 192.0.2.9"), "203.0.113.4")
        self.assertEqual(self.client_address_of("192.0.2.0/24", None), "192.0.2.7")
        self.assertEqual(self.client_address_of("192.0.2.0/24", "bogus"), "192.0.2.7")
        # From a peer that is not trusted, the header is ignored.
        self.assertEqual(self.client_address_of(None, "203.0.113.4"), "192.0.2.7")
        self.assertEqual(self.client_address_of("10.0.0.0/8", "203.0.113.4"), "192.0.2.7")

    def test_missing_or_bad_parameters_are_400(self):
        self.rest_join("alice")
        for override in ({"meeting_id": None}, {"meeting_id": "abc"}, {"user_id": "-1"}, {"peer_id": None},
                         {"user_id": "0"}):
            proto = Captured()
            proto.factory = self.factory
            params = {"meeting_id": self.meeting_id, "user_id": self.uid("alice"), "peer_id": "p",
                      "token": self.token("alice"), **override}
            params = {k: v for k, v in params.items() if v is not None}
            error = self.assertRaises(ConnectionDeny, proto.onConnect, self.request(params))
            self.assertEqual(error.code, 400, override)

    def test_token_checks(self):
        self.rest_join("alice")
        _, d = self.handshake("alice", token="garbage")
        self.assertEqual(self.denied(d), 401)
        proto = Captured()
        proto.factory = self.factory
        error = self.assertRaises(ConnectionDeny, proto.onConnect, self.request(
            {"meeting_id": self.meeting_id, "user_id": self.uid("alice"), "peer_id": "p"}))
        self.assertEqual(error.code, 401)
        _, d = self.handshake("alice", user_id=self.uid("host"))
        self.assertEqual(self.denied(d), 403)

    def test_token_in_authorization_header(self):
        self.rest_join("alice")
        proto = Captured()
        proto.factory = self.factory
        d = proto.onConnect(self.request({"meeting_id": self.meeting_id, "user_id": self.uid("alice"),
                                          "peer_id": "p"}, {"authorization": f"Bearer {self.token('alice')}"}))
        self.assertIsNone(self.successResultOf(d))

    def test_membership_and_meeting_state(self):
        _, d = self.handshake("stranger")  # never joined through REST
        self.assertEqual(self.denied(d), 403)
        _, d = self.handshake("host", meeting_id=999)
        self.assertEqual(self.denied(d), 403)
        self.rest_join("alice")
        self.api.request("POST", f"/api/v1/meetings/{self.meeting_id}/end", token=self.host_token)
        _, d = self.handshake("alice")
        self.assertEqual(self.denied(d), 403)

    def test_room_full(self):
        code, body, _ = self.api.request("POST", "/api/v1/meetings", {"title": "pair", "max_participants": 2},
                                         token=self.host_token)
        small = body["data"]["meeting"]["id"]
        self.connect("host", meeting_id=small, join_rest=False)
        self.connect("alice", meeting_id=small)
        # A third person cannot even join through REST (2003); the room check is the second line.
        self.rest_join("host", small)
        self.assertEqual(self.api.rooms.room_count(), 1)
        _, d = self.handshake("bob", meeting_id=small)
        self.assertEqual(self.denied(d), 403)

    def test_nothing_sent_before_join(self):
        proto = self.connect("alice", join=False)
        self.assertEqual(proto.sent, [])


class RoomTests(SignalingTestCase):
    def test_join_sends_room_info_then_user_joined_and_fresh_room_info(self):
        alice = self.connect("alice")
        info = alice.take()
        self.assertEqual([m["type"] for m in info], ["room-info"])
        payload = info[0]["payload"]
        self.assertEqual((payload["meeting_id"], payload["peer_id"], payload["participant_count"]),
                         (self.meeting_id, "peer-alice", 1))
        self.assertTrue(payload["participants"][0]["is_self"])
        self.assertTrue(payload["ice_servers"])
        self.assertEqual(info[0]["session_id"], payload["session_id"])
        bob = self.connect("bob")
        self.assertEqual(bob.kinds(), ["room-info"])
        got = alice.take()
        self.assertEqual([m["type"] for m in got], ["user-joined", "room-info"])
        self.assertEqual((got[0]["from_user_id"], got[0]["payload"]["peer_id"]), (self.uid("bob"), "peer-bob"))
        self.assertEqual(got[1]["payload"]["participant_count"], 2)
        self.assertEqual([p["is_self"] for p in got[1]["payload"]["participants"]], [True, False])

    def test_rest_record_follows_the_socket(self):
        alice = self.connect("alice")
        participant = self.api.domain.store.get_participant(self.meeting_id, self.uid("alice")).result
        self.assertEqual(participant.status, "joined")
        alice.send({"type": "leave"})
        participant = self.api.domain.store.get_participant(self.meeting_id, self.uid("alice")).result
        self.assertEqual(participant.status, "left")

    def test_leave_then_close_sends_one_user_left(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        alice.take()
        bob.send({"type": "leave"})
        bob.onClose(True, 1000, "bye")
        self.assertEqual([m["type"] for m in alice.take()], ["user-left", "room-info"])
        self.assertEqual(self.api.rooms.room_view(self.meeting_id)["participant_count"], 1)
        alice.onClose(False, 1006, None)
        self.assertEqual(self.api.rooms.room_count(), 0)

    def test_offer_answer_ice_addressed_never_broadcast(self):
        alice, bob, carol = self.connect("alice"), self.connect("bob"), self.connect("carol")
        for p in (alice, bob, carol):
            p.take()
        sdp = {"sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "type": "offer"}
        alice.send({"type": "offer", "to_peer_id": "peer-bob", "payload": sdp,
                    "from_peer_id": "forged", "user_id": 999})
        got = bob.take()
        self.assertEqual(len(got), 1)
        self.assertEqual((got[0]["type"], got[0]["payload"], got[0]["from_user_id"], got[0]["from_peer_id"],
                          got[0]["to_peer_id"]), ("offer", sdp, self.uid("alice"), "peer-alice", "peer-bob"))
        self.assertEqual(carol.take(), [])
        bob.send({"type": "answer", "to_user_id": self.uid("alice"), "payload": {"sdp": "answer"}})
        self.assertEqual([m["type"] for m in alice.take()], ["answer"])
        alice.send({"type": "ice-candidate", "to_peer_id": "peer-carol", "payload": {"candidate": "c"}})
        self.assertEqual(carol.take()[0]["payload"], {"candidate": "c"})
        for bad in ({"type": "offer", "payload": {}}, {"type": "offer", "to_peer_id": "nobody", "payload": {}},
                    {"type": "offer", "to_user_id": 12345, "payload": {}}):
            alice.send(bad)
            error = alice.take()[0]
            self.assertEqual(error["type"], "error")
            self.assertIn(error["payload"]["code"], (400, 404))
        self.assertEqual((bob.take(), carol.take()), ([], []))

    def test_chat_reaches_everyone_including_sender_and_is_stored(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        alice.take(), bob.take()
        alice.send({"type": "chat", "payload": {"content": "hello room"}})
        for p in (alice, bob):
            got = p.take()
            self.assertEqual((got[0]["type"], got[0]["payload"]["content"], got[0]["from_user_id"]),
                             ("chat", "hello room", self.uid("alice")))
            self.assertIsInstance(got[0]["payload"]["message_id"], int)
        code, body, _ = self.api.request("GET", f"/api/v1/messages/history/{self.meeting_id}",
                                         token=self.token("bob"))
        self.assertEqual([m["content"] for m in body["data"]["list"]], ["hello room"])
        alice.send({"type": "chat", "payload": {"content": "   "}})
        self.assertEqual(alice.take()[0]["type"], "error")

    def test_the_room_gets_only_what_the_protocol_defines(self):
        # Whatever else a sender adds is not relayed: not made-up identities, not padding.
        alice, bob = self.connect("alice"), self.connect("bob")
        alice.take(), bob.take()
        forged = {"user_id": 999, "username": "root", "nickname": "System", "is_system": True, "pad": "x" * 500_000}
        alice.onMessage(json.dumps({"type": "chat", "payload": {"content": "hi", **forged}}).encode(), False)
        alice.send({"type": "media-state", "payload": {"video_enabled": False, **forged}})
        alice.send({"type": "screen-share", "payload": {"sharing": True, **forged}})
        chat, media, screen = bob.take()
        alice_id = self.uid("alice")
        self.assertEqual(set(chat["payload"]), {"message_id", "content", "message_type", "user_id", "username",
                                                "nickname", "created_at"})
        self.assertEqual((chat["payload"]["user_id"], chat["payload"]["username"], chat["payload"]["nickname"],
                          chat["payload"]["content"], chat["payload"]["message_type"]),
                         (alice_id, "alice", "alice", "hi", "text"))
        self.assertEqual(media["payload"], {"audio_enabled": True, "video_enabled": False})
        self.assertEqual(screen["payload"], {"enabled": True, "sharing": True})
        for message in (chat, media, screen):
            self.assertEqual(message["from_user_id"], alice_id)

    def test_media_state_and_screen_share(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        alice.take(), bob.take()
        alice.send({"type": "media-state", "payload": {"audio_enabled": False}})
        alice.send({"type": "screen-share", "payload": {"enabled": True}})
        self.assertEqual([m["type"] for m in bob.take()], ["media-state", "screen-share"])
        self.assertEqual(alice.take(), [])
        carol = self.connect("carol")
        me = {p["peer_id"]: p for p in carol.take()[0]["payload"]["participants"]}
        self.assertEqual((me["peer-alice"]["audio_enabled"], me["peer-alice"]["screen_sharing"]), (False, True))
        record = self.api.domain.store.get_participant(self.meeting_id, self.uid("alice")).result
        self.assertFalse(record.audio_enabled)
        alice.take()
        alice.send({"type": "media-state", "payload": {"audio_enabled": "no"}})
        alice.send({"type": "screen-share", "payload": {}})
        self.assertEqual([m["type"] for m in alice.take()], ["error", "error"])

    def test_ping_pong_even_before_join(self):
        alice = self.connect("alice", join=False)
        alice.send({"type": "ping", "payload": {"t": 1}})
        self.assertEqual([(m["type"], m["payload"]) for m in alice.take()], [("pong", {"t": 1})])

    def test_rooms_are_isolated(self):
        code, body, _ = self.api.request("POST", "/api/v1/meetings", {"title": "other"}, token=self.host_token)
        other = body["data"]["meeting"]["id"]
        alice = self.connect("alice")
        bob = self.connect("bob", meeting_id=other)
        alice.take(), bob.take()
        alice.send({"type": "chat", "payload": {"content": "only here"}})
        alice.send({"type": "offer", "to_peer_id": "peer-bob", "payload": {}})
        self.assertEqual(bob.take(), [])
        self.assertEqual([m["type"] for m in alice.take()], ["chat", "error"])

    def test_reconnect_with_same_peer_replaces_old_session(self):
        old = self.connect("alice", peer="p1")
        new = self.connect("alice", peer="p1", join_rest=False)
        self.assertEqual(old.closed[0], 4009)
        view = self.api.rooms.room_view(self.meeting_id)
        self.assertEqual(view["participant_count"], 1)
        self.assertEqual(new.take()[0]["type"], "room-info")


class MeetingFollowsRestTests(SignalingTestCase):
    """A live room follows what happens to its meeting through the REST API."""

    def rest(self, method, path, body=None, who="host"):
        code, answer, _ = self.api.request(method, f"/api/v1/meetings/{self.meeting_id}{path}", body,
                                           token=self.token(who))
        self.assertEqual(code, 200, answer)

    def assertKicked(self, proto, error_code=None, code=None):
        error = proto.take()[-1]
        self.assertEqual(error["type"], "error")
        if error_code is not None:
            self.assertEqual(error["payload"]["details"]["error_code"], error_code)
        if code is not None:
            self.assertEqual(error["payload"]["code"], code)
        self.assertEqual(proto.closed[0], 4003)

    def test_ending_the_meeting_closes_its_room(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        self.rest("POST", "/end")
        for proto in (alice, bob):
            self.assertKicked(proto, error_code=2002)
        self.assertEqual((self.api.rooms.room_count(), len(self.api.rooms.sessions)), (0, 0))
        for proto in (alice, bob):
            proto.onClose(True, 4003, "the meeting has ended")
            self.assertEqual(proto.take(), [])
        for name in ("alice", "bob"):
            record = self.api.domain.store.get_participant(self.meeting_id, self.uid(name)).result
            self.assertEqual(record.status, "left")

    def test_deleting_the_meeting_closes_its_room(self):
        alice = self.connect("alice")
        self.rest("DELETE", "")
        self.assertKicked(alice, code=404)
        self.assertEqual(self.api.rooms.room_count(), 0)

    def test_chat_settings_apply_to_the_live_room(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        alice.take(), bob.take()
        self.rest("PUT", "", {"settings": {"enable_chat": False}})
        alice.send({"type": "chat", "payload": {"content": "anyone?"}})
        self.assertEqual(alice.take()[0]["payload"]["code"], 403)
        self.assertEqual(bob.take(), [])
        self.rest("PUT", "", {"settings": {"enable_chat": True}})
        alice.send({"type": "chat", "payload": {"content": "back on"}})
        self.assertEqual(bob.take()[0]["payload"]["content"], "back on")

    def test_leaving_through_rest_disconnects_the_users_sessions(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        alice.take()
        self.rest("POST", "/leave", who="bob")
        self.assertKicked(bob, code=403)
        got = alice.take()
        self.assertEqual([m["type"] for m in got], ["user-left", "room-info"])
        self.assertEqual(got[0]["payload"]["reason"], "left")
        self.assertEqual(got[1]["payload"]["participant_count"], 1)
        bob.onClose(True, 4003, "you left the meeting")
        self.assertEqual(alice.take(), [])  # one user-left, not two

    def test_a_removed_participant_is_disconnected(self):
        alice, bob = self.connect("alice"), self.connect("bob")
        alice.take()
        self.rest("DELETE", f"/participants/{self.uid('bob')}")
        self.assertKicked(bob, code=403)
        self.assertEqual(alice.take()[0]["payload"]["reason"], "removed")
        _, d = self.handshake("bob")
        self.assertEqual(self.denied(d), 403)  # and cannot come back without joining again


class DialectTests(SignalingTestCase):
    def test_numeric_dialect_and_mixed_room(self):
        seed = self.connect("alice")
        seed.take()
        numeric = self.connect("bob", dialect="numeric")
        info = numeric.take()
        self.assertEqual([m["type"] for m in info], [14])
        self.assertEqual([m["type"] for m in seed.take()], ["user-joined", "room-info"])
        numeric.send({"id": "m1", "type": 1, "peer_id": "peer-bob", "to_user_id": self.uid("alice"),
                      "payload": {"sdp": "x"}, "timestamp": "2025-10-02T10:00:00Z"})
        got = seed.take()
        self.assertEqual((got[0]["type"], got[0]["from_peer_id"]), ("offer", "peer-bob"))
        seed.send({"type": "answer", "to_peer_id": "peer-bob", "payload": {"sdp": "y"}})
        got = numeric.take()
        self.assertEqual((got[0]["type"], got[0]["payload"]), (2, {"sdp": "y"}))
        seed.send({"type": "chat", "payload": {"content": "hi"}})
        self.assertEqual(numeric.take()[0]["type"], 8)
        numeric.send({"type": 11})
        self.assertEqual(numeric.take()[0]["type"], 12)
        numeric.send({"type": 99})
        self.assertEqual(numeric.take()[0]["type"], 13)

    def test_every_client_type_in_both_dialects(self):
        for dialect in ("seed", "numeric"):
            alice = self.connect("alice" + dialect, dialect=dialect)
            bob = self.connect("bob" + dialect)
            alice.take(), bob.take()

            def t(kind):
                return kind if dialect == "seed" else NUMBERS[kind]
            for kind, extra in (("offer", {"to_peer_id": "peer-bob" + dialect}),
                                ("answer", {"to_peer_id": "peer-bob" + dialect}),
                                ("ice-candidate", {"to_peer_id": "peer-bob" + dialect}),
                                ("chat", {}), ("media-state", {}), ("screen-share", {})):
                payload = {"content": "x"} if kind == "chat" else {"video_enabled": False} if kind == "media-state" \
                    else {"enabled": True} if kind == "screen-share" else {"sdp": kind}
                alice.send({"type": t(kind), "payload": payload, **extra})
                got = bob.take()
                self.assertEqual(got[-1]["type"], kind, (dialect, kind))
            alice.send({"type": t("ping")})
            self.assertEqual(alice.take()[-1]["type"], t("pong"))
            alice.send({"type": t("leave")})
            self.assertEqual([m["type"] for m in bob.take()], ["user-left", "room-info"])
            bob.send({"type": "leave"})


class BadInputTests(SignalingTestCase):
    def test_errors_keep_the_connection(self):
        alice = self.connect("alice", join=False)
        cases = [b"{not json", b"[1]", json.dumps({"type": None}).encode(), json.dumps({"type": "nope"}).encode(),
                 json.dumps({"type": "room-info"}).encode(), json.dumps({"type": "offer", "to_peer_id": "x"}).encode(),
                 json.dumps({"type": "chat", "payload": {"content": "x"}}).encode()]
        for raw in cases:
            alice.onMessage(raw, False)
            got = alice.take()
            self.assertEqual(got[0]["type"], "error", raw)
            self.assertEqual(set(got[0]["payload"]), {"code", "message", "details"})
        alice.onMessage(b"\x00\x01", True)
        self.assertEqual(alice.take()[0]["payload"]["code"], 400)
        self.assertIsNone(alice.closed)
        alice.send({"type": "join"})
        alice.send({"type": "join"})
        self.assertEqual([m["type"] for m in alice.take()], ["room-info", "error"])

    def test_json_the_server_could_not_use_is_an_error(self):
        # Each of these once raised out of the decoder or the encoder of the reply.
        alice = self.connect("alice")
        alice.take()
        for raw in (b"[" * 100_000 + b"]" * 100_000,
                    b'{"type":"media-state","payload":{"audio_enabled":true,"x":' + b"[" * 40 + b"]" * 40 + b"}}",
                    b'{"type":"chat","payload":{"content":"\ud800"}}',
                    b'{"type":"media-state","payload":{"audio_enabled":true,"n":NaN}}'):
            alice.onMessage(raw, False)
            got = alice.take()
            self.assertEqual([(m["type"], m["payload"]["code"]) for m in got], [("error", 400)], raw[:60])
        self.assertIsNone(alice.closed)
        self.assertEqual(self.api.domain.store.list_meeting_messages(self.meeting_id, 0, 10).result[0], 0)

    def test_oversized_message_is_an_error(self):
        self.factory.max_message = 100
        alice = self.connect("alice")
        alice.take()
        alice.send({"type": "chat", "payload": {"content": "x" * 200}})
        error = alice.take()[0]
        self.assertEqual((error["type"], error["payload"]["code"]), ("error", 413))
        self.assertIsNone(alice.closed)


class RateLimitTests(SignalingTestCase):
    factory_options = {"message_rate": 10, "message_burst": 5}

    def test_flood_gets_one_error_then_close(self):
        alice = self.connect("alice")  # the join took one token
        alice.take()
        for _ in range(4):
            alice.send({"type": "ping"})
        self.assertEqual(alice.kinds(), ["pong"] * 4)
        for _ in range(3):
            alice.send({"type": "ping"})
        errors = alice.take()
        self.assertEqual([(m["type"], m["payload"]["code"]) for m in errors], [("error", 429)])
        self.assertIsNone(alice.closed)
        for _ in range(5):
            alice.send({"type": "ping"})
        self.assertEqual(alice.closed[0], 4029)


class ByteCostTests(SignalingTestCase):
    factory_options = {"message_rate": 50, "message_burst": 100}

    def test_large_messages_cost_in_proportion_to_their_size(self):
        # 1 MiB at 50 messages a second was 50 MiB/s of JSON for the reactor to decode.
        alice = self.connect("alice")
        alice.take()
        big = {"type": "ping", "payload": "x" * (256 << 10)}  # 256 KiB: 17 messages' worth
        for _ in range(6):
            alice.send(big)
        self.assertEqual(alice.kinds(), ["pong"] * 5 + ["error"])  # 5 x 17 of the 99 tokens left; then 429
        self.api.clock.advance(1)  # 50 tokens back: three more of these, not fifty
        for _ in range(5):
            alice.send(big)
        self.assertEqual([m["type"] for m in alice.take()].count("pong"), 3)
        alice.send({"type": "ping"})  # small messages still cost one
        self.api.clock.advance(0.1)
        alice.send({"type": "ping"})
        self.assertIn("pong", alice.kinds())


class ShutdownAndPresenceTests(SignalingTestCase):
    def test_shutdown_closes_with_4503(self):
        alice = self.connect("alice")
        alice.take()
        self.factory.shutdown()  # it raised once: Autobahn lets no application send 1001
        self.assertEqual(alice.take()[0]["payload"]["code"], 503)
        self.assertEqual(alice.closed[0], 4503)

    def test_signaling_user_is_online_for_tcp_contacts(self):
        self.connect("alice", join=False)
        self.assertTrue(self.api.domain.registry.is_online(str(self.uid("alice"))))

    def test_rest_session_routes(self):
        alice = self.connect("alice")
        session_id = alice.take()[0]["payload"]["session_id"]
        code, body, _ = self.api.request("GET", f"/api/v1/sessions/{session_id}", token=self.token("host"))
        self.assertEqual((code, body["data"]["peer_id"]), (200, "peer-alice"))
        code, body, _ = self.api.request("GET", f"/api/v1/sessions/room/{self.meeting_id}", token=self.host_token)
        self.assertEqual([s["user_id"] for s in body["data"]["sessions"]], [self.uid("alice")])
        code, _, _ = self.api.request("GET", f"/api/v1/sessions/{session_id}", token=self.token("stranger"))
        self.assertEqual(code, 403)
        code, body, _ = self.api.request("GET", "/api/v1/stats/rooms", token=self.token("stranger"))
        self.assertEqual((code, body["data"]["total"], body["data"]["rooms"][0]["participant_count"]), (200, 1, 1))


class OriginTests(SignalingTestCase):
    factory_options = {"allowed_origins": ("https://meet.example.com", "https://*.corp.example.com")}

    def test_origin_allow_list(self):
        self.rest_join("alice")
        for origin, allowed in (("https://meet.example.com", True), ("https://a.corp.example.com", True),
                                ("https://evil.example.com", False), (None, True)):
            proto = Captured()
            proto.factory = self.factory
            request = self.request({"meeting_id": self.meeting_id, "user_id": self.uid("alice"), "peer_id": "p",
                                    "token": self.token("alice")})
            request.origin = origin
            if allowed:
                self.assertIsNone(self.successResultOf(proto.onConnect(request)), origin)
            else:
                self.assertEqual(self.assertRaises(ConnectionDeny, proto.onConnect, request).code, 403)


class FakeTransport:
    """Enough of a TCP transport for the send gate: a producer slot and abort."""

    def __init__(self):
        self.producer = object()  # as left behind by the HTTP channel before the upgrade
        self.aborted = False

    def unregisterProducer(self):
        self.producer = None

    def registerProducer(self, producer, streaming):
        assert self.producer is None, "a producer is already registered"
        self.producer = producer

    def abortConnection(self):
        self.aborted = True

    def getPeer(self):
        return IPv4Address("TCP", "192.0.2.7", 40000)


class SlowConsumerTests(SignalingTestCase):
    factory_options = {"max_send_buffer": 3000}

    def test_a_client_that_stops_reading_is_cut_off(self):
        slow = Captured()
        slow.factory = self.factory
        slow.transport = FakeTransport()
        self.rest_join("slowpoke")
        self.assertIsNone(self.successResultOf(slow.onConnect(self.request(
            {"meeting_id": self.meeting_id, "user_id": self.uid("slowpoke"), "peer_id": "slow",
             "token": self.token("slowpoke")}))))
        slow.onOpen()
        slow.send({"type": "join"})
        talker = self.connect("talker")
        slow.transport.producer.pauseProducing()  # its send buffer is full
        for i in range(30):
            talker.send({"type": "chat", "payload": {"content": f"message {i} " + "x" * 80}})
            if slow.transport.aborted:
                break
        self.assertTrue(slow.transport.aborted)
        self.assertLess(i, 29)
        sent_before = len(slow.sent)
        talker.send({"type": "chat", "payload": {"content": "after"}})
        self.assertEqual(len(slow.sent), sent_before)  # nothing more is queued for it


class SimultaneousCloseTests(SignalingTestCase):
    """Found by bench/signaling.py: members closing at once leaked sessions."""

    def test_leave_completes_when_a_peer_is_already_closing(self):
        members = [self.connect(name) for name in ("alice", "bob", "carol")]
        for m in members:
            m.take()
        # bob's close handshake has begun (Autobahn state CLOSING), his onClose not yet run.
        members[1].state = members[1].STATE_CLOSING
        members[0].onClose(True, 1000, "bye")  # alice leaves: bob cannot be told, carol must be
        self.assertEqual([m["type"] for m in members[2].take()], ["user-left", "room-info"])
        members[1].onClose(True, 1000, "bye")
        members[2].onClose(True, 1000, "bye")
        registry = self.api.domain.registry
        self.assertEqual((self.api.rooms.room_count(), len(self.api.rooms.sessions), registry.session_count),
                         (0, 0, 0))
        for name in ("alice", "bob", "carol"):
            record = self.api.domain.store.get_participant(self.meeting_id, self.uid(name)).result
            self.assertEqual(record.status, "left", name)

    def test_one_encoding_per_dialect(self):
        alice, bob, carol = self.connect("alice"), self.connect("bob"), self.connect("carol", dialect="numeric")
        for m in (alice, bob, carol):
            m.take()
        alice.send({"type": "chat", "payload": {"content": "once"}})
        events = []
        original = self.api.rooms._deliver

        def spy(member, event):
            events.append(event)
            original(member, event)
        self.api.rooms._deliver = spy
        alice.send({"type": "chat", "payload": {"content": "twice"}})
        self.assertEqual(set(events[0].encoded), {"seed", "numeric"})
        self.assertEqual(bob.take()[-1]["payload"]["content"], "twice")
        self.assertEqual(carol.take()[-1]["type"], 8)


class PeerConflictTests(SignalingTestCase):
    def test_another_users_peer_id_is_refused(self):
        self.connect("alice", peer="shared")
        bob = self.connect("bob", peer="shared")
        self.assertEqual(bob.take()[-1]["payload"]["code"], 409)
        self.assertEqual([m.peer_id for m in self.api.rooms.rooms[self.meeting_id].members.values()], ["shared"])


def client_frame(payload: bytes, opcode: int = 1, mask: bytes = b"\x01\x02\x03\x04", fin: bool = True,
                 masked: bool = True) -> bytes:
    """A client frame, masked as RFC 6455 requires of clients (unless ``masked`` is false)."""
    n = len(payload)
    b0, bit = (0x80 if fin else 0) | opcode, 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 65536:
        head = bytes((b0, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse unmasked server frames -> [(opcode, payload)]; asserts they are whole."""
    frames, pos = [], 0
    while pos < len(data):
        opcode, n, pos = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
        assert not data[pos - 1] & 0x80, "servers must not mask"
        if n == 126:
            n, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        assert pos + n <= len(data), "truncated frame"
        frames.append((opcode, data[pos:pos + n]))
        pos += n
    return frames


class WireTests(SignalingTestCase):
    """The real protocol on a StringTransport: handshake bytes in, WebSocket frames out."""

    def open(self, name: str, record: bool = False):
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        self.rest_join(name)
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        if record:
            recording(proto)

        class TCPTransport(StringTransport):
            no_delay = False

            def setTcpNoDelay(self, enabled):
                self.no_delay = enabled

        transport = TCPTransport()
        proto.makeConnection(transport)
        query = (f"meeting_id={self.meeting_id}&user_id={self.uid(name)}&peer_id=peer-{name}"
                 f"&token={self.token(name)}")
        proto.dataReceived(f"GET /ws/signaling?{query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:200])
        self.assertTrue(transport.no_delay)  # small messages must not wait for the peer's delayed ACK
        transport.clear()
        return proto, transport

    def messages(self, transport) -> list[dict]:
        frames = server_frames(transport.value())
        transport.clear()
        self.assertEqual({opcode for opcode, _ in frames} - {1}, set())
        return [json.loads(payload) for _, payload in frames]

    def test_frames_in_one_byte_at_a_time_and_many_at_once(self):
        alice, alice_wire = self.open("alice")
        for byte in client_frame(b'{"type":"join"}'):
            alice.dataReceived(bytes((byte,)))
        self.assertEqual([m["type"] for m in self.messages(alice_wire)], ["room-info"])
        bob, bob_wire = self.open("bob")
        bob.dataReceived(client_frame(b'{"type":4}') + client_frame(b'{"type":11,"payload":"p"}')
                         + client_frame(json.dumps({"type": 8, "payload": {"content": "x" * 300}}).encode()))
        self.assertEqual([m["type"] for m in self.messages(bob_wire)], [14, 12, 8])
        got = self.messages(alice_wire)
        self.assertEqual([m["type"] for m in got], ["user-joined", "room-info", "chat"])
        self.assertEqual(got[2]["payload"]["content"], "x" * 300)  # a 16-bit length, framed once per dialect
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        for proto in (alice, bob):
            proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.api.rooms.room_count(), 0)


def recording(proto):
    """The real receiving path of ``proto``, with the messages it delivers recorded in ``proto.got``."""
    proto.got = []
    proto.onMessage = lambda payload, isBinary: proto.got.append((payload, isBinary))
    return proto


class ReceivingTests(WireTests):
    """
    Whole text frames are taken by the protocol itself, everything else by
    Autobahn: every mix of the two must deliver every message, in order.
    """

    def payloads(self):
        # Every length modulo 4 (the mask), the 7-bit/16-bit boundary, non-ASCII text.
        sizes = [0, 1, 2, 3, 4, 5, 7, 8, 124, 125, 126, 127, 128, 1000, 65535]
        return [("é€" * size)[:size].encode()[:size].decode("utf-8", "ignore").encode() for size in sizes]

    def test_text_frames_of_every_length(self):
        proto, wire = self.open("alice", record=True)
        payloads = self.payloads()
        frames = [client_frame(p, mask=bytes((i, 255 - i, 7, i * 3 % 256))) for i, p in enumerate(payloads)]
        proto.dataReceived(b"".join(frames))  # all at once
        for frame in frames:  # one at a time
            proto.dataReceived(frame)
        for frame in frames[:4] + frames[-2:]:  # byte by byte
            for byte in frame:
                proto.dataReceived(bytes((byte,)))
        self.assertEqual(proto.got, [(p, False) for p in payloads + payloads + payloads[:4] + payloads[-2:]])
        self.assertFalse(wire.disconnecting)

    def test_mixed_with_what_autobahn_handles(self):
        proto, wire = self.open("alice", record=True)
        big = b"x" * 70_000  # a 64-bit length
        stream = (client_frame(b"one") + client_frame(b"ping!", opcode=9) + client_frame(b"two")
                  + client_frame(b"frag", fin=False) + client_frame(b"ment", opcode=0)
                  + client_frame(b"three") + client_frame(b"\x00\x01", opcode=2) + client_frame(big)
                  + client_frame(b"four"))
        proto.dataReceived(stream[:7])  # a partial first frame: Autobahn holds it ...
        proto.dataReceived(stream[7:])  # ... and the rest
        proto.dataReceived(client_frame(b"five"))  # its buffer empty again: the fast path
        self.assertEqual(proto.got, [(b"one", False), (b"two", False), (b"fragment", False), (b"three", False),
                                     (b"\x00\x01", True), (big, False), (b"four", False), (b"five", False)])
        self.assertEqual([(op, p) for op, p in server_frames(wire.value())], [(10, b"ping!")])  # the pong

    def test_invalid_utf8_fails_the_connection(self):
        proto, wire = self.open("alice", record=True)
        proto.dataReceived(client_frame(b"fine") + client_frame(b"\xff\xfe bad") + client_frame(b"never"))
        self.assertEqual(proto.got, [(b"fine", False)])
        # Autobahn fails the connection (by dropping it, its default for a server).
        self.assertTrue(wire.disconnecting)

    def test_unmasked_client_frame_is_a_protocol_violation(self):
        proto, wire = self.open("alice", record=True)
        proto.dataReceived(client_frame(b"unmasked", masked=False))
        self.assertEqual(proto.got, [])
        self.assertTrue(wire.disconnecting)


class PingTimeoutTests(WireTests):
    """Protocol-level pings on the injected clock: a silent client is dropped, a live one is not."""

    def setUp(self):
        import txaio
        super().setUp()
        # Autobahn's timers run on txaio's loop: the daemon sets its reactor there, this test its clock.
        previous, txaio.config.loop = txaio.config.loop, self.api.clock
        self.addCleanup(setattr, txaio.config, "loop", previous)
        self.factory = SignalingFactory(self.api.domain, reactor=self.api.clock, ping_interval=30, ping_timeout=60,
                                        **self.factory_options)

    def pings(self, transport) -> list[bytes]:
        frames = server_frames(transport.value())
        transport.clear()
        return [payload for opcode, payload in frames if opcode == 9]

    def test_a_client_that_never_answers_is_dropped(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        alice, alice_wire = self.open("alice")
        alice.dataReceived(client_frame(b'{"type":"join"}'))
        bob, bob_wire = self.open("bob")
        bob.dataReceived(client_frame(b'{"type":"join"}'))
        alice_wire.clear(), bob_wire.clear()
        bob_pings, dropped_at, alice_text = 0, None, []
        for second in range(5, 125, 5):  # alice answers every ping; bob never does
            self.api.clock.advance(5)
            frames = server_frames(alice_wire.value())
            alice_wire.clear()
            alice_text += [json.loads(p)["type"] for op, p in frames if op == 1]
            for payload in (p for op, p in frames if op == 9):
                alice.dataReceived(client_frame(payload, opcode=0xA))
            if dropped_at is None:
                bob_pings += len(self.pings(bob_wire))
                if bob_wire.disconnecting:
                    dropped_at = second
                    bob.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((bob_pings, dropped_at), (1, 90))  # pinged at 30 s, given up on 60 s later
        self.assertFalse(alice_wire.disconnecting)
        self.assertEqual(alice_text, ["user-left", "room-info"])
        alice.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.api.rooms.room_count(), 0)


class PlainAutobahnReceivingTests(ReceivingTests):
    """The same, with the fast path off: Autobahn's public path alone."""

    factory_options = {"fast_path": False}


class PlainAutobahnPingTimeoutTests(PingTimeoutTests):
    factory_options = {"fast_path": False}


class FastPathTakenTests(WireTests):
    """The fast path is really taken when it is on, and never when it is off."""

    def autobahn_calls(self):
        proto, wire = self.open("alice", record=True)
        calls = []
        real = proto._dataReceived
        proto._dataReceived = lambda data: (calls.append(data), real(data))
        proto.dataReceived(client_frame(b'{"type":"ping"}') + client_frame(b'{"type":"ping"}'))
        self.assertEqual(len(proto.got), 2)
        return calls

    def test_whole_text_frames_skip_autobahn(self):
        self.assertEqual(self.autobahn_calls(), [])

    def test_with_it_off_autobahn_parses_everything(self):
        self.factory.fast_path = False
        self.assertEqual(len(self.autobahn_calls()), 1)


# Every other case above again with the fast path off (--no-ws-fast-path): the
# plain Autobahn path must behave the same in each.
def _with_plain_autobahn(case):
    return type(f"PlainAutobahn{case.__name__}", (case,), {
        "__module__": __name__, "__doc__": f"{case.__name__}, with the fast path off.",
        "factory_options": {**case.factory_options, "fast_path": False}})


for _case in (HandshakeTests, RoomTests, MeetingFollowsRestTests, DialectTests, BadInputTests, RateLimitTests,
              ByteCostTests, ShutdownAndPresenceTests, OriginTests, SlowConsumerTests, SimultaneousCloseTests,
              PeerConflictTests, WireTests):
    globals()[f"PlainAutobahn{_case.__name__}"] = _with_plain_autobahn(_case)
del _case


class CountTests(SignalingTestCase):
    """The counts the metrics read (wecompany_ws_connections, _messages)."""

    def test_connections_and_messages_are_counted(self):
        stats = self.api.domain.stats
        alice, bob = self.connect("alice"), self.connect("bob")
        self.assertEqual((stats.ws_opened, stats.ws_closed), (2, 0))
        self.assertEqual(stats.ws_messages_in, 2)  # the two joins
        sent_before = stats.ws_messages_out
        delivered = len(alice.take()) + len(bob.take())
        self.assertEqual(sent_before, delivered)  # room-info, user-joined... each message once
        alice.send({"type": "ping"})
        self.assertEqual((stats.ws_messages_in, [m["type"] for m in alice.take()]), (3, ["pong"]))
        self.assertEqual(stats.ws_messages_out, sent_before + 1)
        bob.onClose(True, 1000, "bye")
        bob.onClose(True, 1000, "bye")  # told twice: counted once
        self.assertEqual((stats.ws_opened, stats.ws_closed), (2, 1))
        alice.onClose(False, 1006, None)
        self.assertEqual((stats.ws_opened, stats.ws_closed), (2, 2))
