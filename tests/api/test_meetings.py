"""
/api/v1/meetings/* and /api/v1/my/meetings*: every route's success, each
validation rule, each permission rule and each error code, through the real
site and resource tree (StubTreq, MemoryStore, a fake clock).
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import Api
from wecompany.times import rfc3339

MEETINGS = "/api/v1/meetings"
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
MEETING_KEYS = {"id", "title", "description", "creator_id", "start_time", "end_time", "max_participants",
                "meeting_type", "status", "has_password", "settings", "created_at", "updated_at"}
SETTINGS_KEYS = {"enable_video", "enable_audio", "enable_screen_share", "enable_chat", "enable_recording",
                 "enable_ai", "mute_on_join", "require_approval"}
PARTICIPANT_KEYS = {"id", "user_id", "username", "nickname", "meeting_id", "role", "status", "audio_enabled",
                    "video_enabled", "joined_at", "left_at"}
MESSAGE_KEYS = {"id", "meeting_id", "user_id", "username", "nickname", "content", "message_type", "created_at"}
PAGE_KEYS = {"list", "total", "page", "page_size", "total_pages"}


class MeetingCase(SynchronousTestCase):
    """An API with a host user, and helpers for the meeting routes."""

    def setUp(self):
        self.api = Api(self)
        self.store = self.api.domain.store
        self.host, self.host_id = self.account("hostuser")

    # -- helpers --------------------------------------------------------------
    def account(self, name: str) -> tuple[str, int]:
        """Register and log in -> (token, user id)."""
        profile = self.api.register(name)
        return self.api.login(name)["token"], profile["id"]

    def admin(self, name: str = "adminuser") -> tuple[str, int]:
        token, user_id = self.account(name)
        self.store.update_user(user_id, {"role": "admin"}).result
        return token, user_id

    def at(self, offset: float) -> str:
        """An RFC 3339 time ``offset`` seconds from the fake clock's now."""
        return rfc3339(self.api.clock.seconds() + offset)

    def call(self, method: str, path: str, body=None, token: str | None = None):
        code, reply, _ = self.api.request(method, path, body, token=token)
        return code, reply

    def create(self, token: str | None = None, **fields) -> dict:
        body = {"title": "Weekly sync", "start_time": self.at(120), **fields}
        code, reply = self.call("POST", MEETINGS, body, token=token or self.host)
        self.assertEqual(code, 201, reply)
        return reply["data"]["meeting"]

    def join(self, meeting_id: int, token: str, password: str | None = None, expect: int = 200) -> dict:
        body = {} if password is None else {"password": password}
        code, reply = self.call("POST", f"{MEETINGS}/{meeting_id}/join", body, token=token)
        self.assertEqual(code, expect, reply)
        return reply

    def invite(self, meeting_id: int, user_id: int, role: str = "participant", token: str | None = None) -> dict:
        code, reply = self.call("POST", f"{MEETINGS}/{meeting_id}/participants", {"user_id": user_id, "role": role},
                                token=token or self.host)
        self.assertEqual(code, 201, reply)
        return reply["data"]

    def assertError(self, reply_pair, code: int, error_code: int | None = None, text: str | None = None):
        status, reply = reply_pair
        self.assertEqual(status, code, reply)
        self.assertEqual(reply["code"], code)
        self.assertNotIn("data", reply)
        self.assertTrue(reply["message"])
        if error_code is None:
            self.assertNotIn("error_code", reply)
        else:
            self.assertEqual(reply["error_code"], error_code, reply)
        if text is not None:
            self.assertIn(text, reply["message"])

    def assertTime(self, value):
        self.assertIsInstance(value, str)
        self.assertRegex(value, RFC3339_Z)

    def assertMeetingShape(self, meeting: dict):
        self.assertEqual(set(meeting), MEETING_KEYS)
        self.assertEqual(set(meeting["settings"]), SETTINGS_KEYS)
        for key in ("id", "creator_id", "max_participants"):
            self.assertIs(type(meeting[key]), int, key)
        for key in ("start_time", "created_at", "updated_at"):
            self.assertTime(meeting[key])
        if meeting["end_time"] is not None:
            self.assertTime(meeting["end_time"])
        self.assertIs(type(meeting["has_password"]), bool)
        self.assertTrue(all(type(v) is bool for v in meeting["settings"].values()))

    def assertParticipantShape(self, participant: dict):
        self.assertEqual(set(participant), PARTICIPANT_KEYS)
        for key in ("id", "user_id", "meeting_id"):
            self.assertIs(type(participant[key]), int, key)
        for key in ("joined_at", "left_at"):
            if participant[key] is not None:
                self.assertTime(participant[key])

    def participants(self, meeting_id: int) -> dict:
        """user id -> ParticipantRecord, straight from the store."""
        return {p.user_id: p for p in self.store.list_participants(meeting_id).result}

    def stored(self, meeting_id: int):
        return self.store.get_meeting(meeting_id).result


class CreateMeetingTests(MeetingCase):
    def test_create_201_with_data_meeting(self):
        start, end = self.at(120), self.at(3720)
        code, reply, response = self.api.request("POST", MEETINGS, {
            "title": "  Weekly sync  ", "description": "status round", "start_time": start, "end_time": end,
            "max_participants": 10, "meeting_type": "audio", "password": "s3cret",
            "settings": {"mute_on_join": True, "enable_video": False}}, token=self.host)
        self.assertEqual(code, 201, reply)
        self.assertEqual((reply["code"], reply["message"]), (201, "success"))
        self.assertEqual(set(reply["data"]), {"meeting"})
        meeting = reply["data"]["meeting"]
        self.assertMeetingShape(meeting)
        self.assertEqual(meeting["title"], "Weekly sync")  # trimmed
        self.assertEqual((meeting["description"], meeting["creator_id"], meeting["start_time"], meeting["end_time"],
                          meeting["max_participants"], meeting["meeting_type"], meeting["status"],
                          meeting["has_password"]),
                         ("status round", self.host_id, start, end, 10, "audio", "scheduled", True))
        self.assertEqual(meeting["settings"], {
            "enable_video": False, "enable_audio": True, "enable_screen_share": True, "enable_chat": True,
            "enable_recording": False, "enable_ai": False, "mute_on_join": True, "require_approval": False})
        self.assertEqual(meeting["created_at"], rfc3339(self.api.clock.seconds()))
        self.assertEqual(meeting["created_at"], meeting["updated_at"])
        raw = self.successResultOf(response.content())
        self.assertNotIn(b"s3cret", raw)
        self.assertNotIn(b"password_hash", raw)
        self.assertNotIn(b'": ', raw)  # compact JSON
        # The creator is the host from creation (invited, not yet joined).
        rows = self.participants(meeting["id"])
        self.assertEqual(list(rows), [self.host_id])
        self.assertEqual((rows[self.host_id].role, rows[self.host_id].status), ("host", "invited"))
        stored = self.stored(meeting["id"])
        self.assertNotEqual(stored.password_hash, "s3cret")
        self.assertTrue(stored.room_id)

    def test_defaults(self):
        code, reply = self.call("POST", MEETINGS, {"title": "Quick"}, token=self.host)
        self.assertEqual(code, 201, reply)
        meeting = reply["data"]["meeting"]
        self.assertMeetingShape(meeting)
        self.assertEqual((meeting["description"], meeting["start_time"], meeting["end_time"],
                          meeting["max_participants"], meeting["meeting_type"], meeting["has_password"]),
                         ("", rfc3339(self.api.clock.seconds()), None, 100, "video", False))
        self.assertEqual(meeting["settings"]["enable_chat"], True)
        self.assertEqual(meeting["settings"]["enable_recording"], False)

    def test_empty_password_means_none(self):
        self.assertFalse(self.create(password="")["has_password"])
        self.assertFalse(self.create(password=None)["has_password"])

    def _rejected(self, body, text=None, merge=True):
        full = {"title": "Weekly sync", "start_time": self.at(120), **body} if merge else body
        self.assertError(self.call("POST", MEETINGS, full, token=self.host), 400, None, text)

    def test_title_rules(self):
        self._rejected({"title": ""}, "title")
        self._rejected({"title": "   "}, "title")
        self._rejected({"title": "x" * 101}, "title")
        self._rejected({"title": 5}, "title must be a string")
        self._rejected({"title": None}, "title")
        self._rejected({"start_time": self.at(120)}, "title is required", merge=False)
        self.assertEqual(self.create(title="x")["title"], "x")
        self.assertEqual(self.create(title="x" * 100)["title"], "x" * 100)
        self.assertEqual(self.store.list_meetings(0, 100).result[0], 2)  # nothing else was written

    def test_title_limit_applies_after_trimming(self):
        # BUG: the 100-character limit is checked on the untrimmed text by the
        # body validator, so a 100-character title with surrounding blanks is refused.
        code, reply = self.call("POST", MEETINGS, {"title": "  " + "x" * 100 + "  "}, token=self.host)
        self.assertEqual(code, 201, reply)
        self.assertEqual(reply["data"]["meeting"]["title"], "x" * 100)

    def test_description_rules(self):
        self._rejected({"description": "d" * 501}, "description")
        self._rejected({"description": 7}, "description must be a string")
        self.assertEqual(self.create(description="d" * 500)["description"], "d" * 500)

    def test_max_participants_rules(self):
        for bad in (0, -1, 1001, 10.5, "10", True, None, [10]):
            self._rejected({"max_participants": bad}, "max_participants")
        self.assertEqual(self.create(max_participants=1)["max_participants"], 1)
        self.assertEqual(self.create(max_participants=1000)["max_participants"], 1000)

    def test_meeting_type_enum(self):
        for bad in ("screen", "VIDEO", "", 1):
            self._rejected({"meeting_type": bad}, "meeting_type")
        self.assertEqual(self.create(meeting_type="video")["meeting_type"], "video")
        self.assertEqual(self.create(meeting_type="audio")["meeting_type"], "audio")

    def test_start_time_in_the_past(self):
        self._rejected({"start_time": self.at(-301)}, "start_time must not be in the past")
        self._rejected({"start_time": self.at(-86400)}, "start_time")
        # Within the allowed clock skew (5 minutes) it is still "now".
        within = self.at(-299)
        self.assertEqual(self.create(start_time=within)["start_time"], within)

    def test_end_time_after_start(self):
        start = self.api.clock.seconds() + 600
        self._rejected({"start_time": rfc3339(start), "end_time": rfc3339(start)}, "end_time must be after")
        self._rejected({"start_time": rfc3339(start), "end_time": rfc3339(start - 60)}, "end_time")
        # Without a start time the start is now.
        self._rejected({"title": "t", "end_time": self.at(-10)}, "end_time", merge=False)
        self.assertEqual(self.create(start_time=rfc3339(start), end_time=rfc3339(start + 1))["end_time"],
                         rfc3339(start + 1))
        self.assertIsNone(self.create(end_time=None)["end_time"])

    def test_malformed_datetimes(self):
        for bad in ("tomorrow", "2030-13-01T00:00:00Z", "2030-01-01T10:00:00", "", 1700000000, "x" * 50):
            self._rejected({"start_time": bad}, "start_time")
            self._rejected({"end_time": bad}, "end_time")
        # Other zones are accepted and normalised to Z.
        local = self.api.clock.seconds() + 3600
        meeting = self.create(start_time=rfc3339(local).replace("Z", "+00:00"))
        self.assertEqual(meeting["start_time"], rfc3339(local))

    def test_times_outside_the_writable_range(self):
        # Year 10000 in UTC (the offset pushes it over), and before 1970: 400, nothing stored.
        for bad in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+00:01", "1969-12-31T23:59:59Z"):
            self._rejected({"start_time": bad}, "between 1970-01-01 and 9999-12-31")
            self._rejected({"end_time": bad}, "between 1970-01-01 and 9999-12-31")
            code, reply = self.call("PUT", f"{MEETINGS}/{self.create()['id']}", {"end_time": bad}, token=self.host)
            self.assertError((code, reply), 400, text="end_time")
        # The last writable second is fine.
        self.assertEqual(self.create(end_time="9999-12-31T23:59:59Z")["end_time"], "9999-12-31T23:59:59Z")

    def test_a_stored_time_that_cannot_be_written_breaks_no_read(self):
        # As a database written before times were bounded may hold.
        meeting = self.create()
        self.store.update_meeting(meeting["id"], {"end_time": 1e300, "start_time": 253402300800.0},
                                  self.api.clock.seconds()).result
        for path in (MEETINGS, f"{MEETINGS}/{meeting['id']}", "/api/v1/my/meetings",
                     "/api/v1/my/meetings/upcoming"):
            code, reply = self.call("GET", path, token=self.host)
            self.assertEqual(code, 200, (path, reply))
        code, reply = self.call("GET", f"{MEETINGS}/{meeting['id']}", token=self.host)
        self.assertEqual((reply["data"]["start_time"], reply["data"]["end_time"]),
                         ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"))

    def test_settings_rules(self):
        self._rejected({"settings": {"enable_chat": "yes"}}, "settings.enable_chat must be true or false")
        self._rejected({"settings": {"mute_on_join": 1}}, "settings.mute_on_join")
        self._rejected({"settings": {"enable_chat": None}}, "settings.enable_chat")
        self._rejected({"settings": ["enable_chat"]}, "settings must be an object")
        self.assertEqual(self.store.list_meetings(0, 10).result[0], 0)

    def test_unknown_setting_rejected(self):
        # BUG: the body validator drops unknown keys of the settings object before
        # MeetingService.check_settings sees them, so a misspelt setting is
        # silently ignored (201) instead of being refused.
        code, reply = self.call("POST", MEETINGS, {"title": "t", "settings": {"enable_chats": False}},
                                token=self.host)
        self.assertEqual(code, 400, reply)
        self.assertIn("enable_chats", reply["message"])

    def test_password_too_long(self):
        self._rejected({"password": "p" * 65}, "password")
        self.assertTrue(self.create(password="p" * 64)["has_password"])

    def test_malformed_body(self):
        for raw in (b"{not json", b"[]", b'"title"'):
            code, reply, _ = self.api.request("POST", MEETINGS, raw=raw, token=self.host,
                                              headers={"Content-Type": "application/json"})
            self.assertEqual(code, 400, raw)
            self.assertIn("JSON", reply["message"])
        self.assertEqual(self.store.list_meetings(0, 10).result[0], 0)


class AuthenticationRequiredTests(MeetingCase):
    def test_every_route_needs_a_token(self):
        mid = self.create()["id"]
        routes = [
            ("POST", MEETINGS), ("GET", MEETINGS), ("GET", f"{MEETINGS}/{mid}"), ("PUT", f"{MEETINGS}/{mid}"),
            ("DELETE", f"{MEETINGS}/{mid}"), ("POST", f"{MEETINGS}/{mid}/start"), ("POST", f"{MEETINGS}/{mid}/end"),
            ("POST", f"{MEETINGS}/{mid}/join"), ("POST", f"{MEETINGS}/{mid}/leave"),
            ("GET", f"{MEETINGS}/{mid}/participants"), ("POST", f"{MEETINGS}/{mid}/participants"),
            ("DELETE", f"{MEETINGS}/{mid}/participants/{self.host_id}"),
            ("PUT", f"{MEETINGS}/{mid}/participants/{self.host_id}/role"),
            ("GET", f"{MEETINGS}/{mid}/messages"), ("POST", f"{MEETINGS}/{mid}/messages"),
            ("GET", "/api/v1/my/meetings"), ("GET", "/api/v1/my/meetings/upcoming"),
            ("GET", "/api/v1/my/meetings/history"),
        ]
        for method, path in routes:
            for token in (None, "not-a-token"):
                code, reply = self.call(method, path, {}, token=token)
                self.assertEqual(code, 401, (method, path, token, reply))
        # Nothing happened to the meeting.
        self.assertEqual(self.stored(mid).status, "scheduled")
        self.assertEqual(self.store.list_meetings(0, 10).result[0], 1)


class GetMeetingTests(MeetingCase):
    def test_any_user_can_read_a_meeting(self):
        created = self.create(description="agenda", password="pw")
        stranger, _ = self.account("stranger")
        code, reply = self.call("GET", f"{MEETINGS}/{created['id']}", token=stranger)
        self.assertEqual(code, 200, reply)
        self.assertMeetingShape(reply["data"])
        self.assertEqual(reply["data"], created)

    def test_unknown_meeting_is_2001(self):
        self.assertError(self.call("GET", f"{MEETINGS}/999", token=self.host), 404, 2001)

    def test_non_integer_id_is_404(self):
        self.assertError(self.call("GET", f"{MEETINGS}/abc", token=self.host), 404)


class ListMeetingsTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.ids = [self.create(title=f"Sprint review {i}", start_time=self.at(600 + i * 60),
                                description="planning" if i == 3 else "")["id"] for i in range(5)]

    def test_default_page(self):
        code, reply = self.call("GET", MEETINGS, token=self.host)
        self.assertEqual(code, 200, reply)
        data = reply["data"]
        self.assertEqual(set(data), PAGE_KEYS)
        self.assertEqual((data["total"], data["page"], data["page_size"], data["total_pages"]), (5, 1, 10, 1))
        self.assertEqual([m["id"] for m in data["list"]], self.ids)  # by start time
        for meeting in data["list"]:
            self.assertMeetingShape(meeting)

    def test_paging(self):
        code, reply = self.call("GET", f"{MEETINGS}?page=2&page_size=2", token=self.host)
        self.assertEqual(code, 200, reply)
        data = reply["data"]
        self.assertEqual((data["total"], data["page"], data["page_size"], data["total_pages"]), (5, 2, 2, 3))
        self.assertEqual([m["id"] for m in data["list"]], self.ids[2:4])
        code, reply = self.call("GET", f"{MEETINGS}?page=3&page_size=2", token=self.host)
        self.assertEqual([m["id"] for m in reply["data"]["list"]], self.ids[4:])
        code, reply = self.call("GET", f"{MEETINGS}?page=9&page_size=2", token=self.host)
        self.assertEqual((code, reply["data"]["list"], reply["data"]["total"]), (200, [], 5))
        code, reply = self.call("GET", f"{MEETINGS}?page_size=100", token=self.host)
        self.assertEqual((code, reply["data"]["total_pages"]), (200, 1))

    def test_bad_paging_values(self):
        for query in ("page=0", "page=-1", "page_size=0", "page_size=101", "page=abc", "page_size=1.5",
                      "page=", "page_size=ten"):
            self.assertError(self.call("GET", f"{MEETINGS}?{query}", token=self.host), 400, None,
                             query.split("=")[0])

    def test_status_filter(self):
        self.call("POST", f"{MEETINGS}/{self.ids[1]}/start", token=self.host)
        self.call("POST", f"{MEETINGS}/{self.ids[2]}/start", token=self.host)
        self.call("POST", f"{MEETINGS}/{self.ids[2]}/end", token=self.host)
        expected = {"scheduled": [self.ids[0], *self.ids[3:]], "ongoing": [self.ids[1]], "ended": [self.ids[2]],
                    "cancelled": []}
        for status, ids in expected.items():
            code, reply = self.call("GET", f"{MEETINGS}?status={status}", token=self.host)
            self.assertEqual(code, 200, reply)
            self.assertEqual([m["id"] for m in reply["data"]["list"]], ids, status)
            self.assertEqual(reply["data"]["total"], len(ids))
            self.assertTrue(all(m["status"] == status for m in reply["data"]["list"]))

    def test_status_filter_enum(self):
        for bad in ("active", "SCHEDULED", "done"):
            self.assertError(self.call("GET", f"{MEETINGS}?status={bad}", token=self.host), 400, None, "status")

    def test_keyword_filter(self):
        other = self.create(title="Coffee chat")["id"]
        code, reply = self.call("GET", f"{MEETINGS}?keyword=coffee", token=self.host)
        self.assertEqual(([m["id"] for m in reply["data"]["list"]], reply["data"]["total"]), ([other], 1))
        # Case-insensitive, matches the description too.
        code, reply = self.call("GET", f"{MEETINGS}?keyword=PLANNING", token=self.host)
        self.assertEqual([m["id"] for m in reply["data"]["list"]], [self.ids[3]])
        code, reply = self.call("GET", f"{MEETINGS}?keyword=review&page_size=2", token=self.host)
        self.assertEqual((reply["data"]["total"], reply["data"]["total_pages"], len(reply["data"]["list"])),
                         (5, 3, 2))
        code, reply = self.call("GET", f"{MEETINGS}?keyword=nothing-like-this", token=self.host)
        self.assertEqual((code, reply["data"]["list"], reply["data"]["total"], reply["data"]["total_pages"]),
                         (200, [], 0, 0))
        # Combined with a status.
        self.call("POST", f"{MEETINGS}/{other}/start", token=self.host)
        code, reply = self.call("GET", f"{MEETINGS}?keyword=review&status=ongoing", token=self.host)
        self.assertEqual(reply["data"]["total"], 0)
        code, reply = self.call("GET", f"{MEETINGS}?keyword=chat&status=ongoing", token=self.host)
        self.assertEqual([m["id"] for m in reply["data"]["list"]], [other])

    def test_keyword_too_long(self):
        self.assertError(self.call("GET", f"{MEETINGS}?keyword={'k' * 101}", token=self.host), 400, None, "keyword")


class UpdateMeetingTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.meeting = self.create(description="old")
        self.mid = self.meeting["id"]
        self.path = f"{MEETINGS}/{self.mid}"

    def test_host_updates(self):
        self.api.clock.advance(30)
        start, end = self.at(600), self.at(4200)
        code, reply = self.call("PUT", self.path, {
            "title": " New title ", "description": "new", "start_time": start, "end_time": end,
            "max_participants": 5, "meeting_type": "audio", "password": "pw"}, token=self.host)
        self.assertEqual(code, 200, reply)
        meeting = reply["data"]
        self.assertMeetingShape(meeting)
        self.assertEqual((meeting["title"], meeting["description"], meeting["start_time"], meeting["end_time"],
                          meeting["max_participants"], meeting["meeting_type"], meeting["has_password"]),
                         ("New title", "new", start, end, 5, "audio", True))
        self.assertEqual(meeting["created_at"], self.meeting["created_at"])
        self.assertEqual(meeting["updated_at"], rfc3339(self.api.clock.seconds()))
        stored = self.stored(self.mid)
        self.assertEqual((stored.title, stored.max_participants, stored.meeting_type), ("New title", 5, "audio"))
        self.assertNotEqual(stored.password_hash, "pw")
        # GET sees the same.
        self.assertEqual(self.call("GET", self.path, token=self.host)[1]["data"], meeting)

    def test_partial_update_keeps_other_fields(self):
        code, reply = self.call("PUT", self.path, {"description": "only this"}, token=self.host)
        self.assertEqual(code, 200, reply)
        self.assertEqual((reply["data"]["title"], reply["data"]["description"], reply["data"]["start_time"]),
                         (self.meeting["title"], "only this", self.meeting["start_time"]))
        code, reply = self.call("PUT", self.path, {}, token=self.host)
        self.assertEqual((code, reply["data"]["description"]), (200, "only this"))

    def test_settings_are_merged(self):
        code, reply = self.call("PUT", self.path, {"settings": {"enable_ai": True}}, token=self.host)
        self.assertEqual(code, 200, reply)
        code, reply = self.call("PUT", self.path, {"settings": {"mute_on_join": True}}, token=self.host)
        self.assertEqual(code, 200, reply)
        self.assertEqual((reply["data"]["settings"]["enable_ai"], reply["data"]["settings"]["mute_on_join"],
                          reply["data"]["settings"]["enable_chat"]), (True, True, True))

    def test_password_can_be_removed(self):
        self.assertTrue(self.call("PUT", self.path, {"password": "pw"}, token=self.host)[1]["data"]["has_password"])
        self.assertFalse(self.call("PUT", self.path, {"password": ""}, token=self.host)[1]["data"]["has_password"])
        self.call("PUT", self.path, {"password": "pw"}, token=self.host)
        self.assertFalse(self.call("PUT", self.path, {"password": None}, token=self.host)[1]["data"]["has_password"])
        self.assertIsNone(self.stored(self.mid).password_hash)

    def test_validation(self):
        cases = [
            ({"title": ""}, "title"), ({"title": "  "}, "title"), ({"title": "x" * 101}, "title"),
            ({"description": "d" * 501}, "description"), ({"max_participants": 0}, "max_participants"),
            ({"max_participants": 1001}, "max_participants"), ({"max_participants": 2.5}, "max_participants"),
            ({"meeting_type": "screen"}, "meeting_type"), ({"start_time": self.at(-301)}, "start_time"),
            ({"start_time": "soon"}, "start_time"), ({"end_time": "2030-01-01"}, "end_time"),
            ({"end_time": self.meeting["start_time"]}, "end_time must be after"),
            ({"start_time": self.at(7200), "end_time": self.at(3600)}, "end_time"),
            ({"settings": {"enable_chat": "no"}}, "settings.enable_chat"),
            ({"password": "p" * 65}, "password"),
        ]
        for body, text in cases:
            self.assertError(self.call("PUT", self.path, body, token=self.host), 400, None, text)
        self.assertEqual(self.call("GET", self.path, token=self.host)[1]["data"], self.meeting)

    def test_unknown_setting_rejected(self):
        # BUG (as for create): unknown settings keys are silently dropped.
        code, reply = self.call("PUT", self.path, {"settings": {"bogus": True}}, token=self.host)
        self.assertEqual(code, 400, reply)

    def test_end_time_checked_against_stored_start(self):
        start = self.api.clock.seconds() + 120
        self.assertError(self.call("PUT", self.path, {"end_time": rfc3339(start - 1)}, token=self.host), 400)
        code, reply = self.call("PUT", self.path, {"end_time": rfc3339(start + 1)}, token=self.host)
        self.assertEqual((code, reply["data"]["end_time"]), (200, rfc3339(start + 1)))
        # Moving the start past the stored end is refused too.
        self.assertError(self.call("PUT", self.path, {"start_time": rfc3339(start + 60)}, token=self.host), 400,
                         None, "end_time")
        code, reply = self.call("PUT", self.path, {"end_time": None}, token=self.host)
        self.assertEqual((code, reply["data"]["end_time"]), (200, None))

    def test_capacity_not_below_participant_count(self):
        for name in ("guesta", "guestb"):
            self.join(self.mid, self.account(name)[0])
        self.assertError(self.call("PUT", self.path, {"max_participants": 2}, token=self.host), 400, None,
                         "max_participants")
        code, reply = self.call("PUT", self.path, {"max_participants": 3}, token=self.host)
        self.assertEqual((code, reply["data"]["max_participants"]), (200, 3))

    def test_permissions(self):
        participant, _ = self.account("plain")
        self.join(self.mid, participant)
        moderator, moderator_id = self.account("moder")
        self.invite(self.mid, moderator_id, "moderator")
        stranger, _ = self.account("stranger")
        for token in (participant, stranger):
            self.assertError(self.call("PUT", self.path, {"title": "hijack"}, token=token), 403)
        self.assertEqual(self.stored(self.mid).title, "Weekly sync")
        code, reply = self.call("PUT", self.path, {"title": "by moderator"}, token=moderator)
        self.assertEqual((code, reply["data"]["title"]), (200, "by moderator"))
        admin, _ = self.admin()
        code, reply = self.call("PUT", self.path, {"title": "by admin"}, token=admin)
        self.assertEqual((code, reply["data"]["title"]), (200, "by admin"))

    def test_unknown_meeting(self):
        self.assertError(self.call("PUT", f"{MEETINGS}/999", {"title": "x"}, token=self.host), 404, 2001)

    def test_ended_meeting_cannot_be_updated(self):
        self.call("POST", f"{self.path}/end", token=self.host)
        self.assertError(self.call("PUT", self.path, {"title": "late"}, token=self.host), 400, 2002)
        self.assertEqual(self.stored(self.mid).title, "Weekly sync")


class DeleteMeetingTests(MeetingCase):
    def test_creator_deletes(self):
        mid = self.create()["id"]
        guest, _ = self.account("guest")
        self.join(mid, guest)
        self.call("POST", f"{MEETINGS}/{mid}/messages", {"content": "hi"}, token=guest)
        code, reply = self.call("DELETE", f"{MEETINGS}/{mid}", token=self.host)
        self.assertEqual((code, reply["data"]), (200, {"message": "meeting deleted"}))
        self.assertIsNone(self.stored(mid))
        self.assertEqual(self.participants(mid), {})
        self.assertEqual(self.store.list_meeting_messages(mid, 0, 10).result[0], 0)
        self.assertError(self.call("GET", f"{MEETINGS}/{mid}", token=self.host), 404, 2001)
        self.assertError(self.call("DELETE", f"{MEETINGS}/{mid}", token=self.host), 404, 2001)

    def test_only_the_creator(self):
        mid = self.create()["id"]
        moderator, moderator_id = self.account("moder")
        self.invite(mid, moderator_id, "moderator")
        participant, _ = self.account("plain")
        self.join(mid, participant)
        stranger, _ = self.account("stranger")
        admin, _ = self.admin()
        for token in (moderator, participant, stranger, admin):
            self.assertError(self.call("DELETE", f"{MEETINGS}/{mid}", token=token), 403)
        self.assertIsNotNone(self.stored(mid))

    def test_unknown_meeting(self):
        self.assertError(self.call("DELETE", f"{MEETINGS}/999", token=self.host), 404, 2001)


class StartEndTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.mid = self.create()["id"]
        self.path = f"{MEETINGS}/{self.mid}"

    def test_start_is_idempotent(self):
        code, reply = self.call("POST", f"{self.path}/start", token=self.host)
        self.assertEqual((code, reply["data"]["status"]), (200, "ongoing"))
        self.assertMeetingShape(reply["data"])
        started_at = self.stored(self.mid).started_at
        self.assertEqual(started_at, self.api.clock.seconds())
        self.api.clock.advance(60)
        code, reply = self.call("POST", f"{self.path}/start", token=self.host)
        self.assertEqual((code, reply["data"]["status"]), (200, "ongoing"))
        self.assertEqual(self.stored(self.mid).started_at, started_at)

    def test_end_marks_joined_participants_as_left(self):
        guest, guest_id = self.account("guest")
        invited, invited_id = self.account("invited")
        self.join(self.mid, self.host)
        self.join(self.mid, guest)
        self.invite(self.mid, invited_id)
        self.api.clock.advance(90)
        code, reply = self.call("POST", f"{self.path}/end", token=self.host)
        self.assertEqual((code, reply["data"]["status"]), (200, "ended"))
        self.assertMeetingShape(reply["data"])
        now = self.api.clock.seconds()
        rows = self.participants(self.mid)
        self.assertEqual({uid: (p.status, p.left_at) for uid, p in rows.items()},
                         {self.host_id: ("left", now), guest_id: ("left", now), invited_id: ("invited", None)})
        self.assertEqual(self.stored(self.mid).ended_at, now)

    def test_end_of_a_scheduled_meeting(self):
        code, reply = self.call("POST", f"{self.path}/end", token=self.host)
        self.assertEqual((code, reply["data"]["status"]), (200, "ended"))

    def test_ended_meeting_cannot_start_or_end_again(self):
        self.call("POST", f"{self.path}/end", token=self.host)
        self.assertError(self.call("POST", f"{self.path}/start", token=self.host), 400, 2002)
        self.assertError(self.call("POST", f"{self.path}/end", token=self.host), 400, 2002)
        self.assertEqual(self.stored(self.mid).status, "ended")

    def test_permissions(self):
        participant, _ = self.account("plain")
        self.join(self.mid, participant)  # now ongoing
        stranger, _ = self.account("stranger")
        for action in ("start", "end"):
            for token in (participant, stranger):
                self.assertError(self.call("POST", f"{self.path}/{action}", token=token), 403)
        self.assertEqual(self.stored(self.mid).status, "ongoing")
        moderator, moderator_id = self.account("moder")
        self.invite(self.mid, moderator_id, "moderator")
        code, reply = self.call("POST", f"{self.path}/end", token=moderator)
        self.assertEqual((code, reply["data"]["status"]), (200, "ended"))

    def test_moderator_and_admin_start(self):
        moderator, moderator_id = self.account("moder")
        self.invite(self.mid, moderator_id, "moderator")
        code, reply = self.call("POST", f"{self.path}/start", token=moderator)
        self.assertEqual((code, reply["data"]["status"]), (200, "ongoing"))
        other = self.create()["id"]
        admin, _ = self.admin()
        code, reply = self.call("POST", f"{MEETINGS}/{other}/start", token=admin)
        self.assertEqual((code, reply["data"]["status"]), (200, "ongoing"))
        code, reply = self.call("POST", f"{MEETINGS}/{other}/end", token=admin)
        self.assertEqual((code, reply["data"]["status"]), (200, "ended"))

    def test_unknown_meeting(self):
        for action in ("start", "end"):
            self.assertError(self.call("POST", f"{MEETINGS}/999/{action}", token=self.host), 404, 2001)


class JoinTests(MeetingCase):
    def test_join_200_shape_and_state(self):
        created = self.create()
        mid = created["id"]
        guest, guest_id = self.account("guest")
        reply = self.join(mid, guest)
        self.assertEqual((reply["code"], reply["message"]), (200, "success"))
        data = reply["data"]
        self.assertEqual(set(data), {"meeting_id", "room_id", "participant_id", "role", "meeting", "participant",
                                     "ice_servers"})
        self.assertIs(type(data["meeting_id"]), int)
        self.assertIs(type(data["participant_id"]), int)
        self.assertEqual(data["meeting_id"], mid)
        self.assertIsInstance(data["room_id"], str)
        self.assertTrue(data["room_id"])
        self.assertEqual(data["room_id"], self.stored(mid).room_id)
        self.assertEqual(data["role"], "participant")
        self.assertMeetingShape(data["meeting"])
        self.assertEqual(data["meeting"]["status"], "ongoing")  # join moves scheduled -> ongoing
        self.assertParticipantShape(data["participant"])
        p = data["participant"]
        self.assertEqual((p["id"], p["user_id"], p["username"], p["meeting_id"], p["role"], p["status"],
                          p["joined_at"], p["left_at"]),
                         (data["participant_id"], guest_id, "guest", mid, "participant", "joined",
                          rfc3339(self.api.clock.seconds()), None))
        self.assertIsInstance(data["ice_servers"], list)
        self.assertTrue(data["ice_servers"])
        self.assertTrue(all(server["urls"] for server in data["ice_servers"]))
        self.assertEqual(self.stored(mid).status, "ongoing")
        self.assertEqual(self.stored(mid).started_at, self.api.clock.seconds())
        self.assertEqual(self.participants(mid)[guest_id].status, "joined")

    def test_room_id_same_for_everyone_and_stable(self):
        mid = self.create()["id"]
        tokens = [self.host] + [self.account(f"guest{i}")[0] for i in range(3)]
        rooms = [self.join(mid, token)["data"]["room_id"] for token in tokens]
        rooms += [self.join(mid, token)["data"]["room_id"] for token in tokens]
        self.assertEqual(len(set(rooms)), 1)
        other = self.create()["id"]
        self.assertNotEqual(self.join(other, self.host)["data"]["room_id"], rooms[0])

    def test_second_join_keeps_one_row_and_role(self):
        mid = self.create()["id"]
        guest, guest_id = self.account("guest")
        moderator, moderator_id = self.account("moder")
        self.invite(mid, moderator_id, "moderator")
        first = self.join(mid, guest)["data"]
        self.call("POST", f"{MEETINGS}/{mid}/leave", token=guest)
        self.api.clock.advance(10)
        second = self.join(mid, guest)["data"]
        self.assertEqual(second["participant_id"], first["participant_id"])
        self.assertEqual((second["participant"]["status"], second["participant"]["left_at"]), ("joined", None))
        self.assertEqual(second["participant"]["joined_at"], rfc3339(self.api.clock.seconds()))
        for _ in range(2):
            data = self.join(mid, moderator)["data"]
            self.assertEqual((data["role"], data["participant"]["role"]), ("moderator", "moderator"))
        data = self.join(mid, self.host)["data"]
        self.assertEqual(data["role"], "host")
        rows = self.store.list_participants(mid).result
        self.assertEqual(sorted(p.user_id for p in rows), sorted([self.host_id, guest_id, moderator_id]))
        self.assertEqual({p.user_id: p.role for p in rows},
                         {self.host_id: "host", guest_id: "participant", moderator_id: "moderator"})

    def test_join_ongoing_meeting_stays_ongoing(self):
        mid = self.create()["id"]
        self.call("POST", f"{MEETINGS}/{mid}/start", token=self.host)
        started_at = self.stored(mid).started_at
        self.api.clock.advance(30)
        self.assertEqual(self.join(mid, self.account("guest")[0])["data"]["meeting"]["status"], "ongoing")
        self.assertEqual(self.stored(mid).started_at, started_at)

    def test_ended_or_cancelled_is_2002(self):
        mid = self.create()["id"]
        guest, guest_id = self.account("guest")
        self.join(mid, guest)
        self.call("POST", f"{MEETINGS}/{mid}/end", token=self.host)
        late, _ = self.account("late")
        for token in (late, guest, self.host):
            self.assertError(self.call("POST", f"{MEETINGS}/{mid}/join", {}, token=token), 400, 2002)
        self.assertNotIn(late, self.participants(mid))
        self.assertEqual(self.participants(mid)[guest_id].status, "left")
        # Cancelled (the host deleted their account while it was scheduled).
        other_host, _ = self.account("otherhost")
        cancelled = self.create(token=other_host)["id"]
        self.call("DELETE", "/api/v1/users/account", token=other_host)
        self.assertEqual(self.stored(cancelled).status, "cancelled")
        self.assertError(self.call("POST", f"{MEETINGS}/{cancelled}/join", {}, token=late), 400, 2002, "cancelled")

    def test_capacity_counts_the_host(self):
        mid = self.create(max_participants=2)["id"]
        first, _ = self.account("first")
        second, second_id = self.account("second")
        self.join(mid, first)
        self.assertError(self.call("POST", f"{MEETINGS}/{mid}/join", {}, token=second), 403, 2003)
        self.assertEqual(len(self.participants(mid)), 2)
        self.assertNotIn(second_id, self.participants(mid))
        # Members already in it can still (re)join, the host included.
        self.join(mid, first)
        self.join(mid, self.host)

    def test_capacity_of_one_is_the_host_alone(self):
        mid = self.create(max_participants=1)["id"]
        guest, _ = self.account("guest")
        self.assertError(self.call("POST", f"{MEETINGS}/{mid}/join", {}, token=guest), 403, 2003)
        self.assertEqual(self.stored(mid).status, "scheduled")  # a refused join changes nothing
        self.assertEqual(self.join(mid, self.host)["data"]["role"], "host")

    def test_password(self):
        mid = self.create(password="open sesame")["id"]
        guest, guest_id = self.account("guest")
        for body in ({}, {"password": None}, {"password": ""}, {"password": "wrong"}, {"password": "OPEN SESAME"}):
            self.assertError(self.call("POST", f"{MEETINGS}/{mid}/join", body, token=guest), 403, 2004)
        self.assertNotIn(guest_id, self.participants(mid))
        self.assertEqual(self.stored(mid).status, "scheduled")
        self.assertEqual(self.join(mid, guest, password="open sesame")["data"]["role"], "participant")
        # Once in, a re-join needs no password.
        self.join(mid, guest)

    def test_password_guesses_are_limited(self):
        mid = self.create(password="open sesame")["id"]
        guesser, _ = self.account("guesser")
        codes = [self.call("POST", f"{MEETINGS}/{mid}/join", {"password": f"guess {i}"}, token=guesser)[0]
                 for i in range(8)]
        self.assertEqual(codes, [403] * 5 + [429] * 3)  # five wrong ones per meeting per window
        self.assertError(self.call("POST", f"{MEETINGS}/{mid}/join", {"password": "open sesame"}, token=guesser),
                         429)
        self.api.clock.advance(60)
        self.assertEqual(self.join(mid, guesser, password="open sesame")["data"]["role"], "participant")

    def test_host_and_invited_need_no_password(self):
        mid = self.create(password="open sesame")["id"]
        invited, invited_id = self.account("invited")
        self.invite(mid, invited_id)
        self.assertEqual(self.join(mid, self.host)["data"]["role"], "host")
        self.assertEqual(self.join(mid, invited)["data"]["role"], "participant")
        self.assertEqual(self.participants(mid)[invited_id].status, "joined")

    def test_join_validation(self):
        mid = self.create()["id"]
        guest, _ = self.account("guest")
        self.assertError(self.call("POST", f"{MEETINGS}/{mid}/join", {"password": 1234}, token=guest), 400, None,
                         "password")
        self.assertError(self.call("POST", f"{MEETINGS}/{mid}/join", {"password": "p" * 65}, token=guest), 400)

    def test_unknown_meeting(self):
        self.assertError(self.call("POST", f"{MEETINGS}/999/join", {}, token=self.host), 404, 2001)


class LeaveTests(MeetingCase):
    def test_leave(self):
        mid = self.create()["id"]
        guest, guest_id = self.account("guest")
        joined = self.join(mid, guest)["data"]["participant"]
        self.api.clock.advance(45)
        code, reply = self.call("POST", f"{MEETINGS}/{mid}/leave", token=guest)
        self.assertEqual(code, 200, reply)
        self.assertParticipantShape(reply["data"])
        self.assertEqual((reply["data"]["id"], reply["data"]["status"], reply["data"]["left_at"],
                          reply["data"]["joined_at"]),
                         (joined["id"], "left", rfc3339(self.api.clock.seconds()), joined["joined_at"]))
        self.assertEqual(self.participants(mid)[guest_id].status, "left")
        self.assertEqual(self.stored(mid).status, "ongoing")  # leaving does not end the meeting

    def test_non_member_is_404(self):
        mid = self.create()["id"]
        stranger, _ = self.account("stranger")
        admin, _ = self.admin()
        for token in (stranger, admin):
            self.assertError(self.call("POST", f"{MEETINGS}/{mid}/leave", token=token), 404)
        self.assertEqual(len(self.participants(mid)), 1)

    def test_unknown_meeting(self):
        self.assertError(self.call("POST", f"{MEETINGS}/999/leave", token=self.host), 404, 2001)


class ParticipantListTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.mid = self.create()["id"]
        self.path = f"{MEETINGS}/{self.mid}/participants"
        self.guest, self.guest_id = self.account("guest")
        self.join(self.mid, self.guest)

    def test_members_list(self):
        invited, invited_id = self.account("invited")
        self.invite(self.mid, invited_id, "moderator")
        for token in (self.host, self.guest, invited):
            code, reply, response = self.api.request("GET", self.path, token=token)
            self.assertEqual(code, 200, reply)
            data = reply["data"]
            # A bare array: the clients of this family count len(data).
            self.assertIsInstance(data, list)
            self.assertEqual(len(data), 3)
            self.assertEqual(response.headers.getRawHeaders("x-total-count"), ["3"])
            for p in data:
                self.assertParticipantShape(p)
            self.assertEqual({p["user_id"]: (p["username"], p["role"], p["status"]) for p in data},
                             {self.host_id: ("hostuser", "host", "invited"),
                              self.guest_id: ("guest", "participant", "joined"),
                              invited_id: ("invited", "moderator", "invited")})
            self.assertTrue(all(p["meeting_id"] == self.mid for p in data))

    def test_len_of_data_counts_the_participants(self):
        # What the family's client script does: four joins, then len(data).
        for i in range(3):
            self.join(self.mid, self.account(f"extra{i}")[0])
        code, reply = self.call("GET", self.path, token=self.host)
        self.assertEqual(len(reply["data"]), 5)  # the host, the guest of setUp and three more

    def test_paging(self):
        for i in range(3):
            self.join(self.mid, self.account(f"extra{i}")[0])
        code, reply, response = self.api.request("GET", f"{self.path}?page=2&page_size=2", token=self.host)
        self.assertEqual(code, 200, reply)
        self.assertEqual([p["username"] for p in reply["data"]], ["extra0", "extra1"])
        self.assertEqual(response.headers.getRawHeaders("x-total-count"), ["5"])
        code, reply = self.call("GET", f"{self.path}?page_size=1000", token=self.host)
        self.assertEqual((code, len(reply["data"])), (200, 5))
        code, reply = self.call("GET", f"{self.path}?page=3&page_size=2", token=self.host)
        self.assertEqual([p["username"] for p in reply["data"]], ["extra2"])
        for query in ("page=0", "page_size=0", "page_size=1001", "page=x"):
            self.assertError(self.call("GET", f"{self.path}?{query}", token=self.host), 400)

    def test_members_only(self):
        stranger, _ = self.account("stranger")
        self.assertError(self.call("GET", self.path, token=stranger), 403)
        # A member who left is still a member; an admin may look.
        self.call("POST", f"{MEETINGS}/{self.mid}/leave", token=self.guest)
        self.assertEqual(self.call("GET", self.path, token=self.guest)[0], 200)
        admin, _ = self.admin()
        self.assertEqual(len(self.call("GET", self.path, token=admin)[1]["data"]), 2)

    def test_unknown_meeting(self):
        self.assertError(self.call("GET", f"{MEETINGS}/999/participants", token=self.host), 404, 2001)


class AddParticipantTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.mid = self.create()["id"]
        self.path = f"{MEETINGS}/{self.mid}/participants"
        self.target, self.target_id = self.account("target")

    def test_host_adds(self):
        code, reply = self.call("POST", self.path, {"user_id": self.target_id}, token=self.host)
        self.assertEqual(code, 201, reply)
        p = reply["data"]
        self.assertParticipantShape(p)
        self.assertEqual((p["user_id"], p["username"], p["meeting_id"], p["role"], p["status"], p["joined_at"]),
                         (self.target_id, "target", self.mid, "participant", "invited", None))
        self.assertEqual(self.participants(self.mid)[self.target_id].status, "invited")
        # An invited user sees the meeting as theirs.
        code, reply = self.call("GET", "/api/v1/my/meetings", token=self.target)
        self.assertEqual([m["id"] for m in reply["data"]["list"]], [self.mid])

    def test_add_as_moderator_by_moderator(self):
        moderator, moderator_id = self.account("moder")
        self.assertEqual(self.invite(self.mid, moderator_id, "moderator")["role"], "moderator")
        data = self.invite(self.mid, self.target_id, "moderator", token=moderator)
        self.assertEqual(data["role"], "moderator")

    def test_validation(self):
        cases = [
            ({}, "user_id is required"), ({"user_id": "2"}, "user_id must be an integer"),
            ({"user_id": 0}, "user_id"), ({"user_id": 1.5}, "user_id"),
            ({"user_id": self.target_id, "role": "host"}, "role"),
            ({"user_id": self.target_id, "role": "admin"}, "role"),
        ]
        for body, text in cases:
            self.assertError(self.call("POST", self.path, body, token=self.host), 400, None, text)
        self.assertNotIn(self.target_id, self.participants(self.mid))

    def test_unknown_user_is_1003(self):
        self.assertError(self.call("POST", self.path, {"user_id": 9999}, token=self.host), 404, 1003)
        gone, gone_id = self.account("goner")
        self.call("DELETE", "/api/v1/users/account", token=gone)
        self.assertError(self.call("POST", self.path, {"user_id": gone_id}, token=self.host), 404, 1003)
        self.assertEqual(len(self.participants(self.mid)), 1)

    def test_duplicate_is_409(self):
        self.invite(self.mid, self.target_id)
        self.assertError(self.call("POST", self.path, {"user_id": self.target_id}, token=self.host), 409)
        self.assertError(self.call("POST", self.path, {"user_id": self.host_id}, token=self.host), 409)
        self.assertEqual(len(self.participants(self.mid)), 2)

    def test_capacity(self):
        mid = self.create(max_participants=2)["id"]
        self.invite(mid, self.target_id)
        _, other_id = self.account("other")
        self.assertError(self.call("POST", f"{MEETINGS}/{mid}/participants", {"user_id": other_id},
                                   token=self.host), 403, 2003)
        self.assertNotIn(other_id, self.participants(mid))

    def test_permissions(self):
        participant, participant_id = self.account("plain")
        self.join(self.mid, participant)
        stranger, _ = self.account("stranger")
        for token in (participant, stranger):
            self.assertError(self.call("POST", self.path, {"user_id": self.target_id}, token=token), 403)
        self.assertNotIn(self.target_id, self.participants(self.mid))
        admin, _ = self.admin()
        code, reply = self.call("POST", self.path, {"user_id": self.target_id}, token=admin)
        self.assertEqual(code, 201, reply)

    def test_ended_meeting(self):
        self.call("POST", f"{MEETINGS}/{self.mid}/end", token=self.host)
        self.assertError(self.call("POST", self.path, {"user_id": self.target_id}, token=self.host), 400, 2002)
        self.assertNotIn(self.target_id, self.participants(self.mid))

    def test_unknown_meeting(self):
        self.assertError(self.call("POST", f"{MEETINGS}/999/participants", {"user_id": self.target_id},
                                   token=self.host), 404, 2001)


class RemoveParticipantTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.mid = self.create()["id"]
        self.guest, self.guest_id = self.account("guest")
        self.join(self.mid, self.guest)
        self.moderator, self.moderator_id = self.account("moder")
        self.invite(self.mid, self.moderator_id, "moderator")

    def path(self, user_id: int) -> str:
        return f"{MEETINGS}/{self.mid}/participants/{user_id}"

    def test_host_removes(self):
        code, reply = self.call("DELETE", self.path(self.guest_id), token=self.host)
        self.assertEqual((code, reply["data"]), (200, {"message": "participant removed"}))
        self.assertNotIn(self.guest_id, self.participants(self.mid))
        # The removed user is no longer a member.
        self.assertError(self.call("GET", f"{MEETINGS}/{self.mid}/participants", token=self.guest), 403)
        self.assertError(self.call("DELETE", self.path(self.guest_id), token=self.host), 404)

    def test_a_removed_user_cannot_join_again_until_added_back(self):
        self.assertEqual(self.call("DELETE", self.path(self.guest_id), token=self.host)[0], 200)
        self.assertIn("removed", self.join(self.mid, self.guest, expect=403)["message"])
        self.assertNotIn(self.guest_id, self.participants(self.mid))
        code, reply = self.call("GET", "/api/v1/my/meetings", token=self.guest)
        self.assertEqual(reply["data"]["total"], 0)
        # With a password the bar holds too: knowing it is not being let back in.
        protected = self.create(password="door-code")["id"]
        self.join(protected, self.guest, "door-code")
        self.call("DELETE", f"{MEETINGS}/{protected}/participants/{self.guest_id}", token=self.host)
        self.join(protected, self.guest, "door-code", expect=403)
        # A moderator adds the user back; then joining works again.
        added = self.invite(self.mid, self.guest_id, token=self.moderator)
        self.assertEqual((added["user_id"], added["status"]), (self.guest_id, "invited"))
        self.assertEqual(self.join(self.mid, self.guest)["data"]["participant"]["status"], "joined")

    def test_moderator_removes_participant(self):
        code, _ = self.call("DELETE", self.path(self.guest_id), token=self.moderator)
        self.assertEqual(code, 200)
        self.assertNotIn(self.guest_id, self.participants(self.mid))

    def test_host_cannot_be_removed(self):
        admin, _ = self.admin()
        for token in (self.host, self.moderator, admin):
            self.assertError(self.call("DELETE", self.path(self.host_id), token=token), 403, None, "host")
        self.assertEqual(self.participants(self.mid)[self.host_id].role, "host")

    def test_permissions(self):
        stranger, _ = self.account("stranger")
        other, other_id = self.account("other")
        self.join(self.mid, other)
        for token in (self.guest, stranger):
            self.assertError(self.call("DELETE", self.path(other_id), token=token), 403)
        self.assertIn(other_id, self.participants(self.mid))
        admin, _ = self.admin()
        self.assertEqual(self.call("DELETE", self.path(other_id), token=admin)[0], 200)

    def test_moderator_cannot_remove_a_moderator(self):
        # BUG (policy gap): a moderator may not demote another moderator, but may
        # remove them outright (and re-invite them as a plain participant), which
        # gets around the rule. Only the host (or an admin) should remove a moderator.
        other, other_id = self.account("moder2")
        self.invite(self.mid, other_id, "moderator")
        self.assertError(self.call("DELETE", self.path(other_id), token=self.moderator), 403)
        self.assertEqual(self.participants(self.mid)[other_id].role, "moderator")

    def test_host_removes_a_moderator(self):
        self.assertEqual(self.call("DELETE", self.path(self.moderator_id), token=self.host)[0], 200)
        self.assertNotIn(self.moderator_id, self.participants(self.mid))

    def test_not_a_participant(self):
        _, stranger_id = self.account("stranger")
        self.assertError(self.call("DELETE", self.path(stranger_id), token=self.host), 404)
        self.assertError(self.call("DELETE", self.path(9999), token=self.host), 404)

    def test_unknown_meeting(self):
        self.assertError(self.call("DELETE", f"{MEETINGS}/999/participants/{self.guest_id}", token=self.host),
                         404, 2001)


class ParticipantRoleTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.mid = self.create()["id"]
        self.guest, self.guest_id = self.account("guest")
        self.join(self.mid, self.guest)
        self.moderator, self.moderator_id = self.account("moder")
        self.invite(self.mid, self.moderator_id, "moderator")
        self.moderator2, self.moderator2_id = self.account("moder2")
        self.invite(self.mid, self.moderator2_id, "moderator")

    def set_role(self, user_id: int, role, token: str):
        return self.call("PUT", f"{MEETINGS}/{self.mid}/participants/{user_id}/role", {"role": role}, token=token)

    def test_host_promotes_and_demotes(self):
        code, reply = self.set_role(self.guest_id, "moderator", self.host)
        self.assertEqual(code, 200, reply)
        self.assertParticipantShape(reply["data"])
        self.assertEqual((reply["data"]["user_id"], reply["data"]["role"], reply["data"]["status"]),
                         (self.guest_id, "moderator", "joined"))
        self.assertEqual(self.participants(self.mid)[self.guest_id].role, "moderator")
        # The new moderator may now manage the meeting.
        self.assertEqual(self.call("PUT", f"{MEETINGS}/{self.mid}", {"title": "t2"}, token=self.guest)[0], 200)
        code, reply = self.set_role(self.moderator_id, "participant", self.host)
        self.assertEqual((code, reply["data"]["role"]), (200, "participant"))
        self.assertEqual(self.participants(self.mid)[self.moderator_id].role, "participant")
        self.assertError(self.call("PUT", f"{MEETINGS}/{self.mid}", {"title": "t3"}, token=self.moderator), 403)

    def test_moderator_promotes_but_cannot_demote_a_moderator(self):
        code, reply = self.set_role(self.guest_id, "moderator", self.moderator)
        self.assertEqual((code, reply["data"]["role"]), (200, "moderator"))
        self.assertError(self.set_role(self.moderator2_id, "participant", self.moderator), 403, None, "host")
        self.assertEqual(self.participants(self.mid)[self.moderator2_id].role, "moderator")
        # Setting the same role is harmless.
        self.assertEqual(self.set_role(self.moderator2_id, "moderator", self.moderator)[0], 200)

    def test_admin_may_demote(self):
        admin, _ = self.admin()
        code, reply = self.set_role(self.moderator_id, "participant", admin)
        self.assertEqual((code, reply["data"]["role"]), (200, "participant"))

    def test_host_role_is_fixed(self):
        for token in (self.host, self.moderator):
            for role in ("participant", "moderator"):
                self.assertError(self.set_role(self.host_id, role, token), 403, None, "host")
        self.assertEqual(self.participants(self.mid)[self.host_id].role, "host")

    def test_role_enum(self):
        for role in ("host", "admin", "", None, 1):
            self.assertError(self.set_role(self.guest_id, role, self.host), 400, None, "role")
        self.assertError(self.call("PUT", f"{MEETINGS}/{self.mid}/participants/{self.guest_id}/role", {},
                                   token=self.host), 400, None, "role is required")
        self.assertEqual(self.participants(self.mid)[self.guest_id].role, "participant")

    def test_permissions(self):
        stranger, _ = self.account("stranger")
        other, other_id = self.account("other")
        self.join(self.mid, other)
        for token in (self.guest, stranger):
            self.assertError(self.set_role(other_id, "moderator", token), 403)
        self.assertError(self.set_role(self.guest_id, "moderator", self.guest), 403)  # no self-promotion
        self.assertEqual(self.participants(self.mid)[other_id].role, "participant")
        self.assertEqual(self.participants(self.mid)[self.guest_id].role, "participant")

    def test_not_a_participant(self):
        _, stranger_id = self.account("stranger")
        self.assertError(self.set_role(stranger_id, "moderator", self.host), 404)

    def test_unknown_meeting(self):
        code, reply = self.call("PUT", f"{MEETINGS}/999/participants/{self.guest_id}/role", {"role": "moderator"},
                                token=self.host)
        self.assertError((code, reply), 404, 2001)


class MessageTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.mid = self.create()["id"]
        self.path = f"{MEETINGS}/{self.mid}/messages"
        self.guest, self.guest_id = self.account("guest")
        self.join(self.mid, self.guest)

    def post(self, content, token: str, **extra):
        return self.call("POST", self.path, {"content": content, **extra}, token=token)

    def test_post_201_and_history(self):
        code, reply = self.post("  hello all  ", self.guest)
        self.assertEqual(code, 201, reply)
        message = reply["data"]
        self.assertEqual(set(message), MESSAGE_KEYS)
        self.assertIs(type(message["id"]), int)
        self.assertEqual((message["meeting_id"], message["user_id"], message["username"], message["content"],
                          message["message_type"], message["created_at"]),
                         (self.mid, self.guest_id, "guest", "hello all", "text", rfc3339(self.api.clock.seconds())))
        self.api.clock.advance(5)
        code, reply = self.post("a file", self.host, message_type="file")
        self.assertEqual((code, reply["data"]["message_type"]), (201, "file"))
        code, reply = self.call("GET", self.path, token=self.host)
        self.assertEqual(code, 200, reply)
        data = reply["data"]
        self.assertEqual(set(data), PAGE_KEYS)
        self.assertEqual((data["total"], data["page"], data["page_size"], data["total_pages"]), (2, 1, 10, 1))
        self.assertEqual([(m["content"], m["user_id"]) for m in data["list"]],
                         [("hello all", self.guest_id), ("a file", self.host_id)])  # oldest first
        for m in data["list"]:
            self.assertEqual(set(m), MESSAGE_KEYS)
            self.assertTime(m["created_at"])
        self.assertEqual(self.store.list_meeting_messages(self.mid, 0, 10).result[0], 2)

    def test_paging(self):
        for i in range(5):
            self.post(f"m{i}", self.guest)
        code, reply = self.call("GET", f"{self.path}?page=2&page_size=2", token=self.guest)
        self.assertEqual(([m["content"] for m in reply["data"]["list"]], reply["data"]["total"],
                          reply["data"]["total_pages"]), (["m2", "m3"], 5, 3))
        for query in ("page=0", "page_size=101", "page_size=0", "page=one"):
            self.assertError(self.call("GET", f"{self.path}?{query}", token=self.guest), 400)

    def test_content_rules(self):
        for content, text in (("", "content"), ("   ", "content"), ("x" * 2001, "content"), (5, "content"),
                              (None, "content")):
            self.assertError(self.post(content, self.guest), 400, None, text)
        self.assertError(self.call("POST", self.path, {}, token=self.guest), 400, None, "content is required")
        self.assertError(self.post("hi", self.guest, message_type="system"), 400, None, "message_type")
        self.assertEqual(self.store.list_meeting_messages(self.mid, 0, 10).result[0], 0)
        code, reply = self.post("x" * 2000, self.guest)
        self.assertEqual((code, len(reply["data"]["content"])), (201, 2000))

    def test_members_only(self):
        stranger, _ = self.account("stranger")
        self.assertError(self.post("hi", stranger), 403)
        self.assertError(self.call("GET", self.path, token=stranger), 403)
        self.assertEqual(self.store.list_meeting_messages(self.mid, 0, 10).result[0], 0)
        # Invited (not yet joined) members and admins may take part.
        invited, invited_id = self.account("invited")
        self.invite(self.mid, invited_id)
        self.assertEqual(self.post("from invited", invited)[0], 201)
        admin, _ = self.admin()
        self.assertEqual(self.call("GET", self.path, token=admin)[1]["data"]["total"], 1)

    def test_chat_disabled(self):
        mid = self.create(settings={"enable_chat": False})["id"]
        self.assertError(self.call("POST", f"{MEETINGS}/{mid}/messages", {"content": "hi"}, token=self.host), 403,
                         None, "chat")
        self.assertEqual(self.store.list_meeting_messages(mid, 0, 10).result[0], 0)

    def test_ended_meeting_is_2002_but_history_stays(self):
        self.post("before", self.guest)
        self.call("POST", f"{MEETINGS}/{self.mid}/end", token=self.host)
        self.assertError(self.post("after", self.guest), 400, 2002)
        code, reply = self.call("GET", self.path, token=self.guest)
        self.assertEqual((code, [m["content"] for m in reply["data"]["list"]]), (200, ["before"]))

    def test_unknown_meeting(self):
        self.assertError(self.call("POST", f"{MEETINGS}/999/messages", {"content": "x"}, token=self.host),
                         404, 2001)
        self.assertError(self.call("GET", f"{MEETINGS}/999/messages", token=self.host), 404, 2001)


class MyMeetingsTests(MeetingCase):
    def setUp(self):
        super().setUp()
        self.me, self.me_id = self.account("meuser")
        # Start times: a (+1h) b (+2h) c (+3h) d (+4h) e (+5h), f not mine.
        self.a = self.create(token=self.me, title="a", start_time=self.at(3600))["id"]       # I host, scheduled
        self.b = self.create(title="b", start_time=self.at(7200))["id"]                      # I joined, ongoing
        self.c = self.create(title="c", start_time=self.at(10800))["id"]                     # invited, scheduled
        self.d = self.create(token=self.me, title="d", start_time=self.at(14400))["id"]      # I host, ended
        self.e = self.create(title="e", start_time=self.at(18000))["id"]                     # joined, ended
        self.f = self.create(title="f", start_time=self.at(900))["id"]                       # not mine
        self.join(self.b, self.me)
        self.invite(self.c, self.me_id)
        self.call("POST", f"{MEETINGS}/{self.d}/end", token=self.me)
        self.join(self.e, self.me)
        self.call("POST", f"{MEETINGS}/{self.e}/end", token=self.host)

    def ids(self, path: str, token: str | None = None) -> list[int]:
        code, reply = self.call("GET", path, token=token or self.me)
        self.assertEqual(code, 200, reply)
        self.assertEqual(set(reply["data"]), PAGE_KEYS)
        for meeting in reply["data"]["list"]:
            self.assertMeetingShape(meeting)
        self.assertEqual(reply["data"]["total"], len(reply["data"]["list"]))
        return [m["id"] for m in reply["data"]["list"]]

    def test_all_newest_first(self):
        self.assertEqual(self.ids("/api/v1/my/meetings"), [self.e, self.d, self.c, self.b, self.a])

    def test_upcoming_soonest_first(self):
        self.assertEqual(self.ids("/api/v1/my/meetings/upcoming"), [self.a, self.b, self.c])

    def test_history_newest_first(self):
        self.assertEqual(self.ids("/api/v1/my/meetings/history"), [self.e, self.d])

    def test_other_users_see_their_own(self):
        stranger, _ = self.account("stranger")
        for path in ("/api/v1/my/meetings", "/api/v1/my/meetings/upcoming", "/api/v1/my/meetings/history"):
            self.assertEqual(self.ids(path, stranger), [])
        self.assertEqual(self.ids("/api/v1/my/meetings/upcoming", self.host), [self.f, self.b, self.c])

    def test_removed_member_no_longer_sees_it(self):
        self.call("DELETE", f"{MEETINGS}/{self.c}/participants/{self.me_id}", token=self.host)
        self.assertEqual(self.ids("/api/v1/my/meetings/upcoming"), [self.a, self.b])

    def test_paging(self):
        code, reply = self.call("GET", "/api/v1/my/meetings?page=2&page_size=2", token=self.me)
        data = reply["data"]
        self.assertEqual(([m["id"] for m in data["list"]], data["total"], data["page"], data["page_size"],
                          data["total_pages"]), ([self.c, self.b], 5, 2, 2, 3))
        for path in ("/api/v1/my/meetings", "/api/v1/my/meetings/upcoming", "/api/v1/my/meetings/history"):
            for query in ("page=0", "page_size=101", "page=abc"):
                self.assertError(self.call("GET", f"{path}?{query}", token=self.me), 400)


class AccountDeletionTests(MeetingCase):
    def test_hosted_meetings_cancelled_or_ended(self):
        guest, guest_id = self.account("guest")
        scheduled = self.create()["id"]
        ongoing = self.create()["id"]
        ended = self.create()["id"]
        self.join(ongoing, self.host)
        self.join(ongoing, guest)
        self.call("POST", f"{MEETINGS}/{ended}/end", token=self.host)
        elsewhere = self.create(token=guest)["id"]
        self.join(elsewhere, self.host)
        self.api.clock.advance(20)
        code, reply = self.call("DELETE", "/api/v1/users/account", token=self.host)
        self.assertEqual(code, 200, reply)
        now = self.api.clock.seconds()
        self.assertEqual(self.stored(scheduled).status, "cancelled")
        self.assertEqual(self.stored(ongoing).status, "ended")
        self.assertEqual(self.stored(ongoing).ended_at, now)
        self.assertEqual({uid: p.status for uid, p in self.participants(ongoing).items()},
                         {self.host_id: "left", guest_id: "left"})
        self.assertEqual(self.stored(ended).status, "ended")
        # A meeting someone else hosts goes on without them.
        self.assertEqual(self.stored(elsewhere).status, "ongoing")
        self.assertEqual((self.participants(elsewhere)[self.host_id].status,
                          self.participants(elsewhere)[self.host_id].left_at), ("left", now))
        # Seen through the API by the guest.
        code, reply = self.call("GET", "/api/v1/my/meetings/history", token=guest)
        self.assertEqual({m["id"]: m["status"] for m in reply["data"]["list"]}, {ongoing: "ended"})
        self.assertError(self.call("POST", f"{MEETINGS}/{scheduled}/join", {}, token=guest), 400, 2002)
        self.assertError(self.call("POST", f"{MEETINGS}/{ongoing}/join", {}, token=guest), 400, 2002)

    def test_many_hosted_meetings_all_cancelled(self):
        # BUG: MeetingService.user_deleted pages through the user's scheduled
        # and ongoing meetings while closing them, so every closed meeting drops
        # out of the query and the offset skips the rest: with more than 100
        # hosted meetings, some stay scheduled after the host is deleted.
        ids = [self.create(title=f"m{i}")["id"] for i in range(150)]
        code, _ = self.call("DELETE", "/api/v1/users/account", token=self.host)
        self.assertEqual(code, 200)
        statuses = [self.stored(mid).status for mid in ids]
        self.assertEqual(statuses.count("cancelled"), 150, statuses.count("scheduled"))


class CachedListTests(SynchronousTestCase):
    """GET /meetings is read through MeetingPages: every change shows on the next request."""

    def setUp(self):
        self.api = Api(self)
        self.token = self.api.user("alice")

    def titles(self):
        code, body, _ = self.api.request("GET", "/api/v1/meetings?page=1&page_size=10", token=self.token)
        self.assertEqual(code, 200)
        return [(m["title"], m["status"]) for m in body["data"]["list"]], body["data"]["total"]

    def test_changes_show_at_once(self):
        pages = self.api.domain.meeting_pages
        self.assertEqual(self.titles(), ([], 0))
        code, body, _ = self.api.request("POST", "/api/v1/meetings", {"title": "one"}, token=self.token)
        meeting_id = body["data"]["meeting"]["id"]
        self.assertEqual(self.titles(), ([("one", "scheduled")], 1))
        misses = pages.misses
        self.titles()
        self.assertEqual(pages.misses, misses, "the second read was not the cache's")
        self.api.request("PUT", f"/api/v1/meetings/{meeting_id}", {"title": "uno"}, token=self.token)
        self.assertEqual(self.titles(), ([("uno", "scheduled")], 1))
        self.api.request("POST", f"/api/v1/meetings/{meeting_id}/start", token=self.token)
        self.assertEqual(self.titles(), ([("uno", "ongoing")], 1))
        self.api.request("POST", f"/api/v1/meetings/{meeting_id}/end", token=self.token)
        self.assertEqual(self.titles(), ([("uno", "ended")], 1))
        self.api.request("DELETE", f"/api/v1/meetings/{meeting_id}", token=self.token)
        self.assertEqual(self.titles(), ([], 0))

    def test_a_deleted_host_cancels_at_once(self):
        self.api.request("POST", "/api/v1/meetings", {"title": "one"}, token=self.token)
        other = self.api.user("bob")
        self.titles()
        self.api.request("DELETE", "/api/v1/users/account", token=self.token)
        code, body, _ = self.api.request("GET", "/api/v1/meetings", token=other)
        self.assertEqual([m["status"] for m in body["data"]["list"]], ["cancelled"])


class RenderedPagesTests(SynchronousTestCase):
    def test_rendered_once_per_page_object_and_bounded(self):
        from wecompany.api.meetings import RenderedPages

        rendered = RenderedPages(size=2)
        renders = []

        def render(text):
            def made():
                renders.append(text)
                return text.encode()
            return made

        one, two, three = (1, ["a"]), (1, ["b"]), (1, ["c"])  # (tuples of constants would be one object)
        self.assertEqual(rendered.get(one, 1, 10, render("one")), b"one")
        self.assertEqual(rendered.get(one, 1, 10, render("again")), b"one")
        # Another page number or size of the same page is another answer.
        self.assertEqual(rendered.get(one, 2, 10, render("one, page 2")), b"one, page 2")
        # An equal but new page object (the cache was invalidated): rendered anew.
        self.assertEqual(rendered.get((1, ["a"]), 1, 10, render("new")), b"new")
        rendered.get(two, 1, 10, render("two"))
        rendered.get(three, 1, 10, render("three"))
        self.assertEqual(len(rendered._rendered), 2)
        self.assertEqual(renders, ["one", "one, page 2", "new", "two", "three"])

    def test_bounded_by_bytes(self):
        from wecompany.api.meetings import RenderedPages

        rendered = RenderedPages(size=10, max_bytes=10)
        pages = [(1, [n]) for n in range(4)]
        for page in pages:
            rendered.get(page, 1, 10, lambda: b"12345")
        self.assertEqual((len(rendered._rendered), rendered.bytes), (2, 10))
        self.assertEqual(rendered.get(pages[0], 1, 10, lambda: b"x" * 11), b"x" * 11)  # answered, not kept
        self.assertEqual(rendered.bytes, 10)
