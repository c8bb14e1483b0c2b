"""The SFU's routes (/api/v1/webrtc) through the daemon's site, on an engine that answers at once."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import Api
from tests.helpers import FakeClient

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"}


class AnsweringEngine:
    """An IMediaEngine whose every call succeeds at once, with numbered SDPs."""

    def __init__(self):
        self.calls = []
        self.offers = 0

    def open_peer(self, room, peer_id, offer_sdp):
        self.calls.append(("open_peer", room, peer_id))
        return succeed(f"answer for {peer_id}")

    def add_candidate(self, peer_id, candidate):
        self.calls.append(("add_candidate", peer_id, candidate))
        return succeed(None)

    def renegotiate(self, peer_id, streams):
        self.offers += 1
        self.calls.append(("renegotiate", peer_id, tuple(streams)))
        return succeed(f"offer {self.offers}")

    def apply_answer(self, peer_id, answer_sdp):
        self.calls.append(("apply_answer", peer_id, answer_sdp))
        return succeed(None)

    def request_keyframe(self, peer_id):
        return succeed(None)

    def close_peer(self, peer_id):
        self.calls.append(("close_peer", peer_id))
        return succeed(None)


def run(coroutine):
    return Deferred.fromCoroutine(coroutine)


class WebRTCRouteTests(SynchronousTestCase):
    def setUp(self):
        self.engine = AnsweringEngine()
        self.api = Api(self, media_engine=self.engine)
        self.domain = self.api.domain
        self.tokens = {name: self.api.user(name) for name in ("alice", "bob", "mallory")}
        self.ids = {name: self.successResultOf(self.domain.store.get_user_by_username(name)).id
                    for name in self.tokens}
        code, body, _ = self.api.request("POST", "/api/v1/meetings",
                                         {"title": "standup", "start_time": "2030-01-01T10:00:00Z"},
                                         token=self.tokens["alice"])
        self.assertEqual(code, 201, body)
        self.meeting_id = body["data"]["meeting"]["id"]
        self.room_id = self.join("alice")
        self.join("bob")

    def join(self, name: str) -> str:
        """REST join, then a signaling session in the room -> the room id."""
        code, body, _ = self.api.request("POST", f"/api/v1/meetings/{self.meeting_id}/join", {},
                                         token=self.tokens[name])
        self.assertEqual(code, 200, body)
        user = self.successResultOf(self.domain.store.get_user(self.ids[name]))
        client = FakeClient(str(user.id), name, kind="ws")
        meeting = self.successResultOf(run(self.domain.rooms.admit(user.id, self.meeting_id, client)))
        self.domain.rooms.join(client, meeting, user, f"web_{name}")
        return body["data"]["room_id"]

    def post(self, path, body, name=None, **kw):
        return self.api.request("POST", "/api/v1/webrtc" + path, body,
                                token=self.tokens[name] if name else None, **kw)

    def get(self, path, name=None):
        return self.api.request("GET", "/api/v1/webrtc" + path, token=self.tokens[name] if name else None)

    def open(self, name: str) -> str:
        code, body, _ = self.post("/answer", {"room_id": self.room_id, "user_id": str(self.ids[name]),
                                              "offer": OFFER})
        self.assertEqual(code, 200, body)
        return body["peer_id"]

    def test_the_browser_session_order(self):
        code, body, response = self.post("/answer", {"room_id": self.room_id, "user_id": str(self.ids["alice"]),
                                                     "offer": OFFER})
        self.assertEqual(code, 200, body)
        # The bare shape the browser reads, not the envelope.
        self.assertEqual(set(body), {"peer_id", "answer"})
        peer = body["peer_id"]
        self.assertEqual(body["answer"], {"type": "answer", "sdp": f"answer for {peer}"})
        self.assertGreaterEqual(len(peer), 32)  # unguessable
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        code, body, _ = self.post("/ice-candidate", {"peer_id": peer, "candidate": {
            "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0",
            "sdpMLineIndex": 0, "usernameFragment": "abcd"}}, name="alice")  # the browser sends its token here
        self.assertEqual((code, body), (200, {"message": "candidate added", "peer_id": peer}))
        self.domain.sfu.candidate(peer, {"candidate": "candidate:2 1 udp 1 127.0.0.1 6000 typ host",
                                         "sdpMid": "0", "sdpMLineIndex": 0})
        self.domain.sfu.gathering_complete(peer)
        code, body, _ = self.get(f"/peer/{peer}/ice-candidates")
        self.assertEqual(code, 200, body)
        self.assertEqual((len(body["candidates"]), body["complete"]), (1, True))
        code, body, _ = self.get(f"/peer/{peer}/ice-candidates")
        self.assertEqual((body["candidates"], body["complete"]), ([], True))  # drained
        code, body, _ = self.get(f"/peer/{peer}/offer")
        self.assertEqual((code, body), (204, b""))  # nothing pending before it connects
        # Connected: it is offered what the room's others publish.
        bob = self.open("bob")
        self.domain.sfu.connection_state(bob, "connected")
        self.domain.sfu.track_added(bob, "bob-video", "video")
        self.domain.sfu.connection_state(peer, "connected")
        code, body, _ = self.get(f"/peer/{peer}/offer")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["peer_id"], peer)
        offered = body["offer"]
        self.assertEqual(offered["type"], "offer")
        self.assertEqual(self.get(f"/peer/{peer}/offer")[1]["offer"], offered)  # the same until answered
        streams = [c[2] for c in self.engine.calls if c[0] == "renegotiate" and c[1] == peer][-1]
        self.assertEqual([(s.publisher_peer_id, s.kind, s.stream_id) for s in streams],
                         [(bob, "video", "web_bob")])  # labelled with bob's signaling peer id
        code, body, _ = self.post(f"/peer/{peer}/answer", {"answer": {"type": "answer", "sdp": "v=0 answer"}})
        self.assertEqual((code, body), (200, {"message": "answer applied", "peer_id": peer}))
        self.assertIn(("apply_answer", peer, "v=0 answer"), self.engine.calls)
        self.assertEqual(self.get(f"/peer/{peer}/offer")[0], 204)

    def test_a_stale_peer_is_not_found_with_the_words_the_browser_reconnects_on(self):
        for path in ("/peer/nope/offer", "/peer/nope/ice-candidates"):
            code, body, _ = self.get(path)
            self.assertEqual(code, 404, body)
            self.assertIn("peer not found", body["message"])
        code, body, _ = self.post("/peer/nope/answer", {"answer": {"type": "answer", "sdp": "v=0"}})
        self.assertEqual(code, 404)
        self.assertIn("peer not found", body["message"])

    def test_admission(self):
        # No signaling session in the room: refused.
        code, body, _ = self.post("/answer", {"room_id": self.room_id, "user_id": str(self.ids["mallory"]),
                                              "offer": OFFER})
        self.assertEqual(code, 403, body)
        self.assertIn("signaling", body["message"])
        # A token is another user's: refused, whatever user_id says.
        code, body, _ = self.post("/answer", {"room_id": self.room_id, "user_id": str(self.ids["alice"]),
                                              "offer": OFFER}, name="mallory")
        self.assertEqual(code, 403, body)
        code, body, _ = self.post("/answer", {"room_id": "no-such-room", "user_id": str(self.ids["alice"]),
                                              "offer": OFFER})
        self.assertIn(code, (403, 404), body)
        # A bad token is an error, not ignored.
        code, body, _ = self.api.request("POST", "/api/v1/webrtc/answer",
                                         {"room_id": self.room_id, "user_id": "1", "offer": OFFER},
                                         headers={"Authorization": "Bearer not-a-token"})
        self.assertEqual(code, 401, body)
        self.assertEqual([c for c in self.engine.calls if c[0] == "open_peer"], [])

    def test_a_peer_acted_on_with_another_users_token(self):
        peer = self.open("alice")
        for method, path, body in (("GET", f"/peer/{peer}/offer", None),
                                   ("GET", f"/peer/{peer}/ice-candidates", None),
                                   ("POST", f"/peer/{peer}/answer", {"answer": {"type": "answer", "sdp": "x"}}),
                                   ("POST", "/ice-candidate", {"peer_id": peer, "candidate": None})):
            code, answer, _ = self.api.request(method, "/api/v1/webrtc" + path, body, token=self.tokens["bob"])
            self.assertEqual(code, 403, (path, answer))
        self.assertEqual(self.get(f"/peer/{peer}/offer", name="alice")[0], 204)  # her own token is fine

    def test_malformed_bodies(self):
        for body, words in (({"user_id": "1", "offer": OFFER}, "room_id is required"),
                            ({"room_id": self.room_id, "user_id": "one", "offer": OFFER}, "user_id"),
                            ({"room_id": self.room_id, "user_id": "1", "offer": {"type": "answer", "sdp": "x"}},
                             "offer.type"),
                            ({"room_id": self.room_id, "user_id": "1", "offer": {"type": "offer"}},
                             "offer.sdp is required")):
            code, answer, _ = self.post("/answer", body)
            self.assertEqual(code, 400, answer)
            self.assertIn(words, answer["message"])
        code, answer, _ = self.api.request("POST", "/api/v1/webrtc/answer", raw=b"{not json",
                                           headers={"Content-Type": "application/json"})
        self.assertEqual(code, 400, answer)
        # A user id as a number is accepted as well as its string.
        code, answer, _ = self.post("/answer", {"room_id": self.room_id, "user_id": self.ids["alice"],
                                                "offer": OFFER})
        self.assertEqual(code, 200, answer)

    def test_leave_without_a_token_closes_only_connections_whose_signaling_session_left(self):
        peer = self.open("alice")
        code, body, _ = self.post(f"/room/{self.room_id}/leave", {"user_id": str(self.ids["alice"])})
        self.assertEqual(code, 200, body)
        self.assertEqual((body["room_id"], body["user_id"], body["closed"]), (self.room_id, str(self.ids["alice"]), 0))
        self.assertEqual(self.get(f"/peer/{peer}/offer")[0], 204)  # a stranger cannot cut her off
        # With her token: closed.
        code, body, _ = self.post(f"/room/{self.room_id}/leave", {"user_id": str(self.ids["alice"])}, name="alice")
        self.assertEqual((code, body["closed"]), (200, 1))
        self.assertEqual(self.get(f"/peer/{peer}/offer")[0], 404)
        self.assertIn(("close_peer", peer), self.engine.calls)

    def test_the_meeting_ended_closes_its_connections(self):
        peer = self.open("bob")
        code, body, _ = self.api.request("POST", f"/api/v1/meetings/{self.meeting_id}/end", {},
                                         token=self.tokens["alice"])
        self.assertEqual(code, 200, body)
        self.assertEqual(self.get(f"/peer/{peer}/offer")[0], 404)
        self.assertIn(("close_peer", peer), self.engine.calls)

    def test_the_test_suite_routes(self):
        code, body, _ = self.post(f"/room/{self.room_id}/join", {"user_id": str(self.ids["alice"])})
        self.assertEqual(code, 200, body)
        self.assertEqual((body["room"]["id"], body["room"]["meeting_id"]), (self.room_id, str(self.meeting_id)))
        peer = self.open("alice")
        self.domain.sfu.connection_state(peer, "connected")
        self.domain.sfu.track_added(peer, "a", "audio")
        self.domain.sfu.track_added(peer, "v", "video")
        code, body, _ = self.get(f"/room/{self.room_id}/peers")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["count"], 1)
        self.assertEqual((body["peers"][0]["peer_id"], body["peers"][0]["user_id"], body["peers"][0]["status"]),
                         (peer, str(self.ids["alice"]), "connected"))
        code, body, _ = self.get(f"/room/{self.room_id}/stats")
        self.assertEqual(code, 200, body)
        self.assertEqual((body["total_peers"], body["connected_peers"], body["audio_streams"], body["video_streams"]),
                         (1, 1, 1, 1))
        self.assertEqual(self.get("/room/unknown/peers")[0], 404)

    def test_the_metrics_follow_the_peers(self):
        from prometheus_client.parser import text_string_to_metric_families

        def samples():
            found = {}
            for family in text_string_to_metric_families(self.api.metrics.render().decode()):
                for sample in family.samples:
                    found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            return found

        self.assertEqual(samples()[("wecompany_sfu_peers", ())], 0)
        peer = self.open("alice")
        self.domain.sfu.connection_state(peer, "connected")
        opened = samples()
        self.assertEqual((opened[("wecompany_sfu_peers", ())], opened[("wecompany_sfu_peers_connected", ())],
                          opened[("wecompany_sfu_peers_opened_total", ())], opened[("wecompany_sfu_rooms", ())]),
                         (1, 1, 1, 1))
        self.api.request("POST", f"/api/v1/meetings/{self.meeting_id}/end", {}, token=self.tokens["alice"])
        ended = samples()
        self.assertEqual(ended[("wecompany_sfu_peers", ())], 0)
        self.assertEqual(sum(v for (name, _), v in ended.items() if name == "wecompany_sfu_peers_closed_total"), 1)

    def test_answers_per_address_are_limited(self):
        # mallory is refused (403) each time; the 51st attempt is refused before that.
        body = {"room_id": self.room_id, "user_id": str(self.ids["mallory"]), "offer": OFFER}
        codes = [self.post("/answer", body)[0] for _ in range(51)]
        self.assertEqual((set(codes[:50]), codes[50]), ({403}, 429))


class NoSfuTests(SynchronousTestCase):
    def test_without_an_engine_the_routes_answer_503(self):
        api = Api(self)
        code, body, _ = api.request("POST", "/api/v1/webrtc/answer", {"room_id": "r", "user_id": "1", "offer": OFFER})
        self.assertEqual(code, 503, body)
        self.assertIn("SFU is off", body["message"])

    def test_a_token_required(self):
        api = Api(self, media_engine=AnsweringEngine(), sfu_require_token=True)
        code, body, _ = api.request("GET", "/api/v1/webrtc/peer/x/offer")
        self.assertEqual(code, 401, body)
        self.assertIn("bearer token", body["message"])
