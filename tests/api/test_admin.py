"""/api/v1/admin/* and /api/v1/stats/overview."""

from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import PASSWORD, Api
from tests.helpers import FakeClient


class AdminTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)
        admin_id = self.api.register("boss")["id"]
        self.api.domain.store.update_user(admin_id, {"role": "admin"})
        self.admin = self.api.login("boss")["token"]
        self.alice = self.api.register("alice")
        self.alice_token = self.api.login("alice")["token"]

    def test_admin_only(self):
        for method, path in (("GET", "/api/v1/admin/users"), ("GET", "/api/v1/admin/stats"),
                             ("POST", f"/api/v1/admin/users/{self.alice['id']}/ban"),
                             ("GET", "/api/v1/admin/meetings")):
            code, body, _ = self.api.request(method, path, token=self.alice_token)
            self.assertEqual((code, body["message"]), (403, "administrators only"), path)

    def test_list_and_get_users(self):
        code, body, _ = self.api.request("GET", "/api/v1/admin/users?keyword=ali", token=self.admin)
        self.assertEqual((code, body["data"]["total"]), (200, 1))
        self.assertEqual(body["data"]["list"][0]["username"], "alice")
        code, body, _ = self.api.request("GET", f"/api/v1/admin/users/{self.alice['id']}", token=self.admin)
        self.assertEqual(body["data"]["email"], "alice@example.com")
        code, body, _ = self.api.request("GET", "/api/v1/admin/users/999", token=self.admin)
        self.assertEqual((code, body["error_code"]), (404, 1003))

    def test_ban_cuts_everything_off_and_unban_restores(self):
        refresh = self.api.login("alice")["refresh_token"]
        live = FakeClient(str(self.alice["id"]), "alice")
        self.api.domain.chat.open_session(live)
        code, body, _ = self.api.request("POST", f"/api/v1/admin/users/{self.alice['id']}/ban", token=self.admin)
        self.assertEqual((code, body["data"]["status"]), (200, "banned"))
        self.assertEqual(live.disconnected.code, 403)
        code, _, _ = self.api.request("GET", "/api/v1/users/profile", token=self.alice_token)
        self.assertEqual(code, 403)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": refresh})
        self.assertEqual(code, 401)
        code, body, _ = self.api.request("POST", "/api/v1/auth/login", {"username": "alice", "password": PASSWORD})
        self.assertEqual(code, 403)
        self.api.request("POST", f"/api/v1/admin/users/{self.alice['id']}/unban", token=self.admin)
        self.api.login("alice")

    def test_update_role_and_self_protection(self):
        code, body, _ = self.api.request("PUT", f"/api/v1/admin/users/{self.alice['id']}",
                                         {"role": "admin", "nickname": "Al"}, token=self.admin)
        self.assertEqual((code, body["data"]["role"], body["data"]["nickname"]), (200, "admin", "Al"))
        boss_id = self.api.domain.tokens.verify(self.admin)["user_id"]
        code, _, _ = self.api.request("PUT", f"/api/v1/admin/users/{boss_id}", {"role": "user"}, token=self.admin)
        self.assertEqual(code, 400)
        code, _, _ = self.api.request("POST", f"/api/v1/admin/users/{boss_id}/ban", token=self.admin)
        self.assertEqual(code, 400)
        code, _, _ = self.api.request("PUT", f"/api/v1/admin/users/{self.alice['id']}", {"role": "root"},
                                      token=self.admin)
        self.assertEqual(code, 400)

    def test_delete_user(self):
        code, _, _ = self.api.request("DELETE", f"/api/v1/admin/users/{self.alice['id']}", token=self.admin)
        self.assertEqual(code, 200)
        code, _, _ = self.api.request("GET", "/api/v1/users/profile", token=self.alice_token)
        self.assertEqual(code, 401)

    def test_meetings_force_end_and_stats(self):
        code, body, _ = self.api.request("POST", "/api/v1/meetings", {"title": "m"}, token=self.alice_token)
        mid = body["data"]["meeting"]["id"]
        code, body, _ = self.api.request("GET", "/api/v1/admin/meetings?status=scheduled", token=self.admin)
        self.assertEqual(body["data"]["total"], 1)
        code, body, _ = self.api.request("POST", f"/api/v1/admin/meetings/{mid}/end", token=self.admin)
        self.assertEqual((code, body["data"]["status"]), (200, "ended"))
        code, body, _ = self.api.request("GET", "/api/v1/admin/stats", token=self.admin)
        self.assertEqual((body["data"]["users"], body["data"]["meetings"]["ended"]), (2, 1))
        code, body, _ = self.api.request("GET", "/api/v1/stats/overview", token=self.alice_token)
        self.assertEqual((code, body["data"]["active_calls"], body["data"]["meetings"]["scheduled"]), (200, 0, 0))

    def test_history_alias(self):
        code, body, _ = self.api.request("POST", "/api/v1/meetings", {"title": "m"}, token=self.alice_token)
        mid = body["data"]["meeting"]["id"]
        self.api.request("POST", f"/api/v1/meetings/{mid}/messages", {"content": "hi"}, token=self.alice_token)
        code, body, _ = self.api.request("GET", f"/api/v1/messages/history/{mid}", token=self.alice_token)
        self.assertEqual([m["content"] for m in body["data"]["list"]], ["hi"])
