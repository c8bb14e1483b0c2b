"""The recording routes through the daemon's site, on a fake media engine that writes a small WebM."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import Api
from tests.domain.test_meetingrecordings import OFFER, SAMPLE, RecordingEngine
from tests.helpers import FakeClient


def run(coroutine):
    return Deferred.fromCoroutine(coroutine)


class RecordingRouteTests(SynchronousTestCase):
    def setUp(self):
        self.engine = RecordingEngine()
        self.api = Api(self, media_engine=self.engine)
        self.domain = self.api.domain
        self.tokens = {name: self.api.user(name) for name in ("alice", "bob", "mallory")}
        self.ids = {name: self.successResultOf(self.domain.store.get_user_by_username(name)).id
                    for name in self.tokens}
        code, body, _ = self.api.request("POST", "/api/v1/meetings",
                                         {"title": "standup", "start_time": "2030-01-01T10:00:00Z",
                                          "settings": {"enable_recording": True}},
                                         token=self.tokens["alice"])
        self.assertEqual(code, 201, body)
        self.meeting_id = body["data"]["meeting"]["id"]
        self.clients = {}
        self.room_id = self.join("alice")
        self.join("bob")
        sfu = self.domain.sfu
        self.bob_peer = self.successResultOf(sfu.answer(self.room_id, self.ids["bob"], OFFER))["peer_id"]
        sfu.connection_state(self.bob_peer, "connected")
        sfu.track_added(self.bob_peer, "bob-video", "video")
        self.engine.tracks = [{"peer_id": self.bob_peer, "track_id": "bob-video", "kind": "video"}]

    def join(self, name: str) -> str:
        code, body, _ = self.api.request("POST", f"/api/v1/meetings/{self.meeting_id}/join", {},
                                         token=self.tokens[name])
        self.assertEqual(code, 200, body)
        user = self.successResultOf(self.domain.store.get_user(self.ids[name]))
        client = self.clients[name] = FakeClient(str(user.id), name, kind="ws")
        meeting = self.successResultOf(run(self.domain.rooms.admit(user.id, self.meeting_id, client)))
        self.domain.rooms.join(client, meeting, user, f"web_{name}")
        return body["data"]["room_id"]

    def call(self, method, path, body=None, name="alice", **kw):
        return self.api.request(method, "/api/v1" + path, body, token=self.tokens[name] if name else None, **kw)

    def test_start_list_stop_download_delete(self):
        path = f"/meetings/{self.meeting_id}/recording"
        code, body, _ = self.call("POST", path + "/start", {"title": "weekly"}, name="bob")
        self.assertEqual(code, 403, body)
        code, body, _ = self.call("POST", path + "/start", {}, name="mallory")
        self.assertEqual(code, 404, body)
        code, body, _ = self.call("POST", path + "/start", {"title": "weekly"})
        self.assertEqual(code, 200, body)
        started = body["data"]
        self.assertEqual((started["status"], started["title"], started["started_by"], started["media_id"],
                          started["download_url"]), ("recording", "weekly", self.ids["alice"], None, None))
        self.assertEqual(started["participants"], sorted([self.ids["alice"], self.ids["bob"]]))  # so far
        code, body, _ = self.call("POST", path + "/start", {})
        self.assertEqual(code, 409, body)
        code, body, _ = self.call("GET", f"/meetings/{self.meeting_id}/recordings", name="bob")
        self.assertEqual(code, 200, body)
        self.assertEqual([r["id"] for r in body["data"]["list"]], [started["id"]])
        self.domain.clock.advance(10)
        code, body, _ = self.call("POST", path + "/stop")
        self.assertEqual(code, 200, body)
        stopped = body["data"]
        self.assertEqual(set(stopped), {"id", "media_id", "status", "title", "started_at", "ended_at", "duration",
                                        "size", "participants", "download_url", "started_by"})
        self.assertEqual((stopped["status"], stopped["size"], stopped["duration"]), ("completed", len(SAMPLE), 1.0))
        self.assertEqual(stopped["participants"], sorted([self.ids["alice"], self.ids["bob"]]))
        self.assertEqual(stopped["download_url"], f"/api/v1/media/download/{stopped['media_id']}")
        # Participants download it with Range through the media API.
        code, data, response = self.api.request("GET", stopped["download_url"], token=self.tokens["bob"],
                                                headers={"Range": "bytes=0-9"})
        self.assertEqual((code, data), (206, SAMPLE[:10]))
        code, _, _ = self.api.request("GET", stopped["download_url"], token=self.tokens["mallory"])
        self.assertEqual(code, 404)
        code, body, _ = self.call("GET", f"/meetings/{self.meeting_id}/recordings", name="mallory")
        self.assertEqual(code, 404, body)
        code, body, _ = self.call("GET", f"/meetings/{self.meeting_id}/recordings?page=1&page_size=5", name="bob")
        self.assertEqual((body["data"]["total"], body["data"]["list"][0]["status"]), (1, "completed"))
        # The host deletes it through the media API.
        code, body, _ = self.call("DELETE", f"/media/{stopped['media_id']}", name="bob")
        self.assertEqual(code, 403, body)
        code, body, _ = self.call("DELETE", f"/media/{stopped['media_id']}")
        self.assertEqual(code, 200, body)
        code, body, _ = self.call("GET", f"/meetings/{self.meeting_id}/recordings", name="bob")
        self.assertEqual(body["data"]["total"], 0)

    def test_told_over_signaling(self):
        for client in self.clients.values():
            client.take()
        self.call("POST", f"/meetings/{self.meeting_id}/recording/start", {})
        self.call("POST", f"/meetings/{self.meeting_id}/recording/stop")
        actions = [(e.kind, e.payload["action"]) for e in self.clients["bob"].take() if e.kind == "recording"]
        self.assertEqual(actions, [("recording", "started"), ("recording", "stopped")])

    def test_disabled_and_no_media(self):
        code, body, _ = self.call("PUT", f"/meetings/{self.meeting_id}", {"settings": {"enable_recording": False}})
        self.assertEqual(code, 200, body)
        code, body, _ = self.call("POST", f"/meetings/{self.meeting_id}/recording/start", {})
        self.assertEqual(code, 403, body)
        self.assertIn("enable_recording", body["message"])
        self.call("PUT", f"/meetings/{self.meeting_id}", {"settings": {"enable_recording": True}})
        self.domain.sfu.leave(self.room_id, self.ids["bob"], identity=self.ids["bob"])  # the room goes
        code, body, _ = self.call("POST", f"/meetings/{self.meeting_id}/recording/start", {})
        self.assertEqual((code, body["message"]), (409, "nobody is sending media in this meeting yet"))

    def test_the_media_service_routes(self):
        code, body, _ = self.call("POST", "/recording/start", {"meeting_id": str(self.meeting_id),
                                                                "room_id": self.room_id,
                                                                "user_id": str(self.ids["bob"]), "title": "x"})
        self.assertEqual(code, 403, body)
        code, body, _ = self.call("POST", "/recording/start", {"meeting_id": str(self.meeting_id),
                                                                "room_id": "another", "title": "x"})
        self.assertEqual(code, 400, body)
        code, body, _ = self.call("POST", "/recording/start", {"meeting_id": str(self.meeting_id),
                                                                "room_id": self.room_id, "title": "board",
                                                                "user_id": str(self.ids["alice"]),
                                                                "quality": "720p", "format": "mp4"})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["message"], "Recording started")  # bare, as the media service answers
        recording = body["recording"]
        self.assertEqual(set(recording), {"recording_id", "meeting_id", "room_id", "user_id", "title", "status",
                                          "start_time", "end_time", "duration", "file_size", "file_path",
                                          "thumbnail_path", "quality", "format", "participants", "created_at",
                                          "updated_at"})
        rid = recording["recording_id"]
        self.assertEqual((recording["meeting_id"], recording["room_id"], recording["status"]),
                         (str(self.meeting_id), self.room_id, "recording"))
        code, body, _ = self.call("GET", f"/recording/download/{rid}")
        self.assertEqual(code, 404, body)  # not stored yet
        code, body, _ = self.call("POST", "/recording/stop", {"recording_id": rid})
        self.assertEqual((code, body), (200, {"message": "Recording stopped", "recording_id": rid}))
        code, body, _ = self.call("GET", f"/recording/status/{rid}", name="bob")
        self.assertEqual(code, 200, body)
        self.assertEqual((body["recording"]["status"], body["recording"]["file_size"]), ("completed", len(SAMPLE)))
        self.assertEqual(self.call("GET", f"/recording/status/{rid}", name="mallory")[0], 404)
        self.assertEqual(self.call("GET", "/recording/status/nonsense")[0], 404)
        code, body, _ = self.call("GET", f"/recording/list?user_id={self.ids['bob']}&page=1&page_size=10",
                                  name="bob")
        self.assertEqual(code, 200, body)
        self.assertEqual(([r["recording_id"] for r in body["recordings"]], body["pagination"]),
                         ([rid], {"total": 1, "page": 1, "page_size": 10, "pages": 1}))
        self.assertEqual(self.call("GET", f"/recording/list?user_id={self.ids['alice']}", name="bob")[0], 403)
        code, data, _ = self.api.request("GET", f"/api/v1/recording/download/{rid}", token=self.tokens["bob"])
        self.assertEqual((code, data), (200, SAMPLE))
        self.assertEqual(self.call("DELETE", f"/recording/{rid}", name="bob")[0], 403)
        code, body, _ = self.call("DELETE", f"/recording/{rid}")
        self.assertEqual((code, body["recording_id"]), (200, rid))
        self.assertEqual(self.call("GET", f"/recording/status/{rid}")[0], 404)
        self.assertEqual(self.api.request("GET", f"/api/v1/recording/status/{rid}")[0], 401)  # Bearer required
