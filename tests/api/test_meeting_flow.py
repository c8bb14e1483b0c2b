"""The issue's main meeting scenario through the API, start to end."""

from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import Api
from wecompany.times import rfc3339


class MeetingFlowTests(SynchronousTestCase):
    def test_create_join_chat_end(self):
        api = Api(self)
        host = api.user("hostuser")
        guests = [api.user(f"guest{i}") for i in range(3)]
        start = rfc3339(api.clock.seconds() + 120)
        code, body, _ = api.request("POST", "/api/v1/meetings", {
            "title": "Weekly sync", "description": "status", "start_time": start, "max_participants": 10,
            "meeting_type": "video", "settings": {"enable_chat": True, "mute_on_join": True}}, token=host)
        self.assertEqual(code, 201, body)
        meeting = body["data"]["meeting"]
        self.assertEqual((meeting["status"], meeting["has_password"], meeting["settings"]["mute_on_join"]),
                         ("scheduled", False, True))
        mid = meeting["id"]
        rooms = set()
        for token in guests:
            code, body, _ = api.request("POST", f"/api/v1/meetings/{mid}/join", {}, token=token)
            self.assertEqual(code, 200, body)
            rooms.add(body["data"]["room_id"])
            self.assertEqual(body["data"]["role"], "participant")
            self.assertTrue(body["data"]["ice_servers"])
        self.assertEqual(len(rooms), 1)
        # Joining twice does not add a row.
        api.request("POST", f"/api/v1/meetings/{mid}/join", {}, token=guests[0])
        code, body, _ = api.request("GET", f"/api/v1/meetings/{mid}/participants", token=host)
        self.assertEqual((code, len(body["data"])), (200, 4))
        self.assertEqual(sorted(p["role"] for p in body["data"]),
                         ["host", "participant", "participant", "participant"])
        code, body, _ = api.request("GET", f"/api/v1/meetings/{mid}", token=host)
        self.assertEqual(body["data"]["status"], "ongoing")
        for i, token in enumerate((host, guests[1])):
            code, body, _ = api.request("POST", f"/api/v1/meetings/{mid}/messages", {"content": f"hello {i}"},
                                        token=token)
            self.assertEqual(code, 201, body)
        code, body, _ = api.request("GET", f"/api/v1/meetings/{mid}/messages?page=1&page_size=10", token=guests[2])
        self.assertEqual([m["content"] for m in body["data"]["list"]], ["hello 0", "hello 1"])
        self.assertEqual(body["data"]["list"][1]["username"], "guest1")
        # A guest cannot end it; the host can; then a late join is refused with 2002.
        code, body, _ = api.request("POST", f"/api/v1/meetings/{mid}/end", token=guests[0])
        self.assertEqual(code, 403)
        code, body, _ = api.request("POST", f"/api/v1/meetings/{mid}/end", token=host)
        self.assertEqual((code, body["data"]["status"]), (200, "ended"))
        late = api.user("lateuser")
        code, body, _ = api.request("POST", f"/api/v1/meetings/{mid}/join", {}, token=late)
        self.assertEqual((code, body["error_code"]), (400, 2002))
        code, body, _ = api.request("GET", "/api/v1/my/meetings/history", token=guests[0])
        self.assertEqual([m["id"] for m in body["data"]["list"]], [mid])
