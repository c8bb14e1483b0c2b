"""
Signing a user out everywhere: a password change, a reset, a ban and an
account deletion each end every access token at once (not when it expires),
every refresh token, and every live TCP and WebSocket session.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import PASSWORD, Api
from tests.helpers import FakeClient
from wecompany.errors import Forbidden, InvalidInput, Unauthenticated


def run(coro):
    return Deferred.fromCoroutine(coro)


class SignOutEverywhereTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)
        self.alice = self.api.register("alice", "a@example.com")
        self.tokens = self.api.login("alice")
        self.admin_token = self.api.user("boss")
        admin_id = self.api.domain.tokens.verify(self.admin_token)["user_id"]
        self.api.domain.store.update_user(admin_id, {"role": "admin"}).result
        self.tcp = FakeClient(str(self.alice["id"]), "alice", kind="tcp")
        self.ws = FakeClient(str(self.alice["id"]), "alice", kind="ws")
        for client in (self.tcp, self.ws):
            self.api.domain.chat.open_session(client)

    def old_token_answers(self) -> int:
        return self.api.request("GET", "/api/v1/users/profile", token=self.tokens["token"])[0]

    def assertSignedOut(self, access_code: int, session_error):
        self.assertEqual(self.old_token_answers(), access_code)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": self.tokens["refresh_token"]})
        self.assertEqual(code, 401)
        for client in (self.tcp, self.ws):
            self.assertIsInstance(client.disconnected, session_error)
        # The same for a token login on the TCP port or the signaling handshake (both take this path).
        accounts = self.api.domain.accounts
        self.failureResultOf(run(accounts.authenticate_token(self.tokens["token"])), session_error)

    def test_password_change(self):
        code, body, _ = self.api.request("POST", "/api/v1/users/change-password",
                                         {"old_password": PASSWORD, "new_password": "Another-pass2"},
                                         token=self.tokens["token"])
        self.assertEqual(code, 200, body)
        self.assertSignedOut(401, Unauthenticated)
        self.assertIn("password was changed", self.tcp.disconnected.message)
        # The caller got fresh tokens, and they work.
        fresh = body["data"]
        self.assertEqual(self.api.request("GET", "/api/v1/users/profile", token=fresh["token"])[0], 200)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": fresh["refresh_token"]})
        self.assertEqual(code, 200)

    def test_password_reset(self):
        self.api.request("POST", "/api/v1/auth/forgot-password", {"email": "a@example.com"})
        token = self.api.mailer.sent[-1][2].split("minutes: ")[1].split()[0]
        code, body, _ = self.api.request("POST", "/api/v1/auth/reset-password",
                                         {"token": token, "new_password": "Another-pass2"})
        self.assertEqual(code, 200, body)
        self.assertSignedOut(401, Unauthenticated)

    def test_ban(self):
        code, body, _ = self.api.request("POST", f"/api/v1/admin/users/{self.alice['id']}/ban",
                                         token=self.admin_token)
        self.assertEqual(code, 200, body)
        self.assertSignedOut(403, Forbidden)
        # Lifting the ban does not bring the old tokens back: the user logs in again.
        self.api.request("POST", f"/api/v1/admin/users/{self.alice['id']}/unban", token=self.admin_token)
        self.assertEqual(self.old_token_answers(), 401)
        self.assertEqual(self.api.request("GET", "/api/v1/users/profile",
                                          token=self.api.login("alice")["token"])[0], 200)

    def test_ban_through_the_user_update(self):
        code, _, _ = self.api.request("PUT", f"/api/v1/admin/users/{self.alice['id']}", {"status": "banned"},
                                      token=self.admin_token)
        self.assertEqual(code, 200)
        self.assertSignedOut(403, Forbidden)

    def test_account_deletion(self):
        code, _, _ = self.api.request("DELETE", "/api/v1/users/account", token=self.tokens["token"])
        self.assertEqual(code, 200)
        self.assertSignedOut(401, Unauthenticated)
        # A deleted account cannot be brought back by lifting a ban.
        for route in ("unban", "ban"):
            code, _, _ = self.api.request("POST", f"/api/v1/admin/users/{self.alice['id']}/{route}",
                                          token=self.admin_token)
            self.assertEqual(code, 400, route)
        self.assertEqual(self.api.domain.store.get_user(self.alice["id"]).result.status, "deleted")

    def test_other_users_are_not_touched(self):
        bob_token = self.api.user("bob")
        bob = FakeClient(str(self.api.domain.tokens.verify(bob_token)["user_id"]), "bob")
        self.api.domain.chat.open_session(bob)
        self.api.request("POST", f"/api/v1/admin/users/{self.alice['id']}/ban", token=self.admin_token)
        self.assertIsNone(bob.disconnected)
        self.assertEqual(self.api.request("GET", "/api/v1/users/profile", token=bob_token)[0], 200)

    def test_unbanning_a_deleted_user_through_the_domain(self):
        lifecycle = self.api.lifecycle
        run(lifecycle.delete_account(self.api.domain.store.get_user(self.alice["id"]).result))
        deleted = self.api.domain.store.get_user(self.alice["id"]).result
        self.failureResultOf(run(lifecycle.unban(deleted)), InvalidInput)
