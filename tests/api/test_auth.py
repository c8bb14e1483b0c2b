"""/api/v1/auth/*: every success, validation rule and error code."""

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import PASSWORD, Api
from wecompany.config import parse_networks
from wecompany.errors import Unauthenticated
from wecompany.times import rfc3339


class RegisterTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)

    def test_register_returns_200_and_profile(self):
        code, body, response = self.api.request("POST", "/api/v1/auth/register",
                                                {"username": "alice", "email": "a@example.com",
                                                 "password": PASSWORD, "nickname": "Alice A."})
        self.assertEqual(code, 200)
        self.assertEqual((body["code"], body["message"]), (200, "success"))
        user = body["data"]
        self.assertIsInstance(user["id"], int)
        self.assertEqual((user["username"], user["email"], user["nickname"], user["role"], user["status"]),
                         ("alice", "a@example.com", "Alice A.", "user", "active"))
        self.assertTrue(user["created_at"].endswith("Z"))
        self.assertNotIn("password", str(body))
        self.assertEqual(response.headers.getRawHeaders("x-request-id"), [body["request_id"]])

    def test_validation(self):
        cases = [
            ({"email": "a@example.com", "password": PASSWORD}, "username is required"),
            ({"username": "al", "email": "a@example.com", "password": PASSWORD}, "username must be"),
            ({"username": "alice", "email": "nope", "password": PASSWORD}, "email is not a valid"),
            ({"username": "alice", "email": "a@example.com", "password": "short"}, "at least 8"),
            ({"username": "alice", "email": "a@example.com", "password": "password123A!"}, "common"),
            ({"username": 5, "email": "a@example.com", "password": PASSWORD}, "username must be a string"),
            ({"username": "alice", "email": "a@example.com", "password": PASSWORD, "nickname": "x" * 65},
             "nickname must be at most 64"),
        ]
        for body, text in cases:
            code, reply, _ = self.api.request("POST", "/api/v1/auth/register", body)
            self.assertEqual(code, 400, body)
            self.assertIn(text, reply["message"])
            self.assertEqual(reply["code"], 400)
        code, body, _ = self.api.request("GET", "/api/v1/users/profile")
        self.assertEqual(self.api.domain.store.list_users(0, 10).result[0], 0)

    def test_duplicates(self):
        self.api.register("alice", "a@example.com")
        code, body, _ = self.api.request("POST", "/api/v1/auth/register",
                                         {"username": "ALICE", "email": "b@example.com", "password": PASSWORD})
        self.assertEqual((code, body["code"], body["error_code"]), (400, 400, 1001))
        code, body, _ = self.api.request("POST", "/api/v1/auth/register",
                                         {"username": "bob", "email": "A@example.com", "password": PASSWORD})
        self.assertEqual((code, body["code"], body["error_code"]), (400, 400, 1002))

    def test_closed_registration_is_403(self):
        api = Api(self, registration="closed")
        code, body, _ = api.request("POST", "/api/v1/auth/register",
                                    {"username": "alice", "email": "a@example.com", "password": PASSWORD})
        self.assertEqual((code, body["code"]), (403, 403))
        self.assertEqual(body["message"], "registration is closed: ask an administrator for an account")
        self.assertEqual(api.domain.store.list_users(0, 10).result[0], 0)
        # An account an operator made logs in as usual.
        self.successResultOf(Deferred.fromCoroutine(api.domain.accounts.create("alice", PASSWORD)))
        code, body, _ = api.request("POST", "/api/v1/auth/login", {"username": "alice", "password": PASSWORD})
        self.assertEqual(code, 200)

    def test_malformed_json(self):
        for raw in (b"{not json", b"[1,2]", b'"text"', b"\xff\xfe"):
            code, body, _ = self.api.request("POST", "/api/v1/auth/register", raw=raw,
                                             headers={"Content-Type": "application/json"})
            self.assertEqual(code, 400, raw)
            self.assertIn("JSON", body["message"])

    def test_rate_limited_per_address(self):
        api = Api(self, address_rate=1, address_burst=3)
        for i in range(3):
            api.request("POST", "/api/v1/auth/register", {"username": f"user{i}x"})
        code, body, response = api.request("POST", "/api/v1/auth/register", {"username": "user9x"})
        self.assertEqual(code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        api.clock.advance(1)
        code, _, _ = api.request("POST", "/api/v1/auth/register", {"username": "user9x"})
        self.assertEqual(code, 400)  # allowed again (and invalid for other reasons)


    def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(self):
        # The site's peer in these tests is 127.0.0.1: here, a trusted proxy.
        api = Api(self, address_rate=1, address_burst=2,
                  trusted_proxies=parse_networks("trusted-proxies", "127.0.0.0/8"))

        def register(client: str) -> int:
            return api.request("POST", "/api/v1/auth/register", {"username": "x"},
                               headers={"X-Forwarded-For": f"{client}, 127.0.0.2"})[0]

        self.assertEqual([register("203.0.113.1") for _ in range(3)], [400, 400, 429])
        self.assertEqual(register("203.0.113.2"), 400)  # another client behind the same proxy

    def test_a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(self):
        api = Api(self, address_rate=1, address_burst=2)  # no trusted proxies: 127.0.0.1 is a client

        def register(client: str) -> int:
            return api.request("POST", "/api/v1/auth/register", {"username": "x"},
                               headers={"X-Forwarded-For": client})[0]

        self.assertEqual([register(f"203.0.113.{i}") for i in range(3)], [400, 400, 429])


class LoginTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)
        self.user = self.api.register("alice", "a@example.com")

    def test_login_by_username_and_email(self):
        for login in ("alice", "a@example.com"):
            data = self.api.login(login)
            self.assertEqual(data["token"], data["access_token"])
            self.assertEqual((data["token_type"], data["expires_in"]), ("Bearer", 86400))
            self.assertEqual((data["user"]["id"], data["user"]["username"]), (self.user["id"], "alice"))
            claims = self.api.domain.tokens.verify(data["token"])
            self.assertEqual(claims["user_id"], self.user["id"])

    def test_bad_credentials_are_400_with_reason(self):
        code, body, _ = self.api.request("POST", "/api/v1/auth/login", {"username": "alice", "password": "Wrong-pass1"})
        self.assertEqual((code, body["message"], body["error_code"]), (400, "invalid password", 1004))
        code, body, _ = self.api.request("POST", "/api/v1/auth/login", {"username": "zed", "password": PASSWORD})
        self.assertEqual((code, body["message"], body["error_code"]), (400, "user not found", 1003))

    def test_failed_logins_locked_out(self):
        for _ in range(5):
            self.api.request("POST", "/api/v1/auth/login", {"username": "alice", "password": "Wrong-pass1"})
        code, body, response = self.api.request("POST", "/api/v1/auth/login", {"username": "alice", "password": PASSWORD})
        self.assertEqual(code, 429)
        self.assertTrue(int(response.headers.getRawHeaders("retry-after")[0]) > 0)

    def test_tcp_token_interchangeable(self):
        token = self.api.login("alice")["token"]
        code, body, _ = self.api.request("GET", "/api/v1/users/profile", token=token)
        self.assertEqual((code, body["data"]["username"]), (200, "alice"))

    def test_refresh_rotates(self):
        first = self.api.login("alice")
        code, body, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
        self.assertEqual(code, 200)
        second = body["data"]
        self.assertNotEqual(second["refresh_token"], first["refresh_token"])
        # The rotated token is spent: replaying it fails and revokes its family.
        code, body, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
        self.assertEqual(code, 401)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": second["refresh_token"]})
        self.assertEqual(code, 401)

    def test_refresh_expiry_and_garbage(self):
        data = self.api.login("alice")
        for token in ("x" * 40, "", 7):
            code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": token})
            self.assertIn(code, (400, 401))
        self.api.clock.advance(31 * 86400)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": data["refresh_token"]})
        self.assertEqual(code, 401)

    def test_logout_revokes(self):
        data = self.api.login("alice")
        code, _, _ = self.api.request("POST", "/api/v1/auth/logout", {"refresh_token": data["refresh_token"]},
                                      token=data["token"])
        self.assertEqual(code, 200)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": data["refresh_token"]})
        self.assertEqual(code, 401)


    def test_logout_leaves_another_users_refresh_token_alone(self):
        victim = self.api.login("alice")
        self.api.register("mallory", "m@example.com")
        mallory = self.api.login("mallory")
        code, _, _ = self.api.request("POST", "/api/v1/auth/logout", {"refresh_token": victim["refresh_token"]},
                                      token=mallory["token"])
        self.assertEqual(code, 200)  # says nothing about whose token it was
        code, body, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": victim["refresh_token"]})
        self.assertEqual(code, 200, body)

class ResetTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)
        self.api.register("alice", "a@example.com")

    def reset_token(self):
        (to, subject, body), = self.api.mailer.sent
        self.assertEqual(to, "a@example.com")
        return body.split("token within")[1].split(": ")[1].split("\n")[0]

    def test_forgot_and_reset(self):
        code, body, _ = self.api.request("POST", "/api/v1/auth/forgot-password", {"email": "a@example.com"})
        self.assertEqual(code, 200)
        token = self.reset_token()
        refresh = self.api.login("alice")["refresh_token"]
        code, body, _ = self.api.request("POST", "/api/v1/auth/reset-password",
                                         {"token": token, "new_password": "Another-pass2"})
        self.assertEqual(code, 200, body)
        self.api.login("alice", "Another-pass2")
        # Single use, and the old refresh token is revoked.
        code, _, _ = self.api.request("POST", "/api/v1/auth/reset-password",
                                      {"token": token, "new_password": "Third-pass3x"})
        self.assertEqual(code, 400)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": refresh})
        self.assertEqual(code, 401)

    def test_unknown_email_answers_the_same(self):
        code, body, _ = self.api.request("POST", "/api/v1/auth/forgot-password", {"email": "who@example.com"})
        self.assertEqual(code, 200)
        self.assertEqual(self.api.mailer.sent, [])

    def test_reset_token_expires_and_policy_applies(self):
        self.api.request("POST", "/api/v1/auth/forgot-password", {"email": "a@example.com"})
        token = self.reset_token()
        code, body, _ = self.api.request("POST", "/api/v1/auth/reset-password", {"token": token, "new_password": "weak"})
        self.assertEqual(code, 400)
        self.api.clock.advance(3601)
        code, body, _ = self.api.request("POST", "/api/v1/auth/reset-password",
                                         {"token": token, "new_password": "Another-pass2"})
        self.assertEqual((code, body["message"]), (400, "invalid or expired reset token"))


class OneSetOfRulesTests(SynchronousTestCase):
    """The TCP port and REST share the password guard and the auth budget of an address."""

    CLIENT = "127.0.0.1"  # where the REST requests of these tests come from

    def setUp(self):
        from wecompany.tcp.protocol import WeCompanyFactory
        self.api = Api(self, address_rate=1, address_burst=20)
        self.api.register("alice", "a@example.com")
        d = self.api.domain
        self.tcp = WeCompanyFactory(d)

    def tcp_login(self, password: str) -> str:
        """-> the AUTH_RESULT's text: "" for a success, else why not."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from wecompany.tcp import codec
        address = IPv4Address("TCP", self.CLIENT, 40000)
        proto = self.tcp.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        body = bytes((codec.MsgType.LOGIN,)) + codec.str16("alice") + codec.str16(password)
        proto.dataReceived(len(body).to_bytes(4, "big") + body)
        reader = codec.Reader(transport.value(), 4)
        self.assertEqual(reader.u8(), codec.MsgType.AUTH_RESULT)
        return "" if reader.u8() else reader.str16()

    def rest_login(self, password: str) -> int:
        return self.api.request("POST", "/api/v1/auth/login", {"username": "alice", "password": password})[0]

    def test_wrong_passwords_on_one_port_count_on_the_other(self):
        self.assertEqual([self.tcp_login("Wrong-pass1") for _ in range(3)], ["invalid password"] * 3)
        self.assertEqual([self.rest_login("Wrong-pass1") for _ in range(3)], [400, 400, 429])
        self.assertIn("too many failed attempts", self.tcp_login(PASSWORD))

    def test_the_auth_budget_is_one_for_both_ports(self):
        for _ in range(10):
            self.assertEqual(self.tcp_login(PASSWORD), "")
        codes = [self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": "x" * 20})[0]
                 for _ in range(11)]
        # A burst of 20: the registration in setUp, ten TCP logins, nine refreshes.
        self.assertEqual(codes, [401] * 9 + [429] * 2)


class WarmCacheTests(SynchronousTestCase):
    """
    Token logins read the user from the domain's UserCache: whatever ends or
    changes an account still takes effect on the very next request.
    """

    def setUp(self):
        self.api = Api(self)
        boss_id = self.api.register("boss")["id"]
        self.api.domain.store.update_user(boss_id, {"role": "admin"})
        self.admin = self.api.login("boss")["token"]
        self.alice = self.api.register("alice")
        self.token = self.api.login("alice")["token"]
        self.cache = self.api.domain.user_cache

    def profile(self, token=None):
        code, body, _ = self.api.request("GET", "/api/v1/users/profile", token=token or self.token)
        return code, body

    def warm(self, token=None):
        """Two reads: the second is answered from the cache."""
        self.assertEqual(self.profile(token)[0], 200)
        misses = self.cache.misses
        self.assertEqual(self.profile(token)[0], 200)
        self.assertEqual(self.cache.misses, misses, "the second read was not the cache's")

    def test_password_change_refuses_old_tokens_at_once(self):
        self.warm()
        code, body, _ = self.api.request("POST", "/api/v1/users/change-password",
                                         {"old_password": PASSWORD, "new_password": "Another-pass2"},
                                         token=self.token)
        self.assertEqual(code, 200)
        self.assertEqual(self.profile()[0], 401)
        self.assertEqual(self.profile(body["data"]["token"])[0], 200)

    def test_reset_refuses_old_tokens_at_once(self):
        self.warm()
        self.api.request("POST", "/api/v1/auth/forgot-password", {"email": "alice@example.com"})
        reset = self.api.mailer.sent[-1][2].split("minutes: ")[1].split()[0]
        code, _, _ = self.api.request("POST", "/api/v1/auth/reset-password",
                                      {"token": reset, "new_password": "Another-pass2"})
        self.assertEqual(code, 200)
        self.assertEqual(self.profile()[0], 401)

    def test_ban_and_deletion_refuse_at_once(self):
        self.warm()
        self.api.request("POST", f"/api/v1/admin/users/{self.alice['id']}/ban", token=self.admin)
        self.assertEqual(self.profile()[0], 403)
        self.api.request("POST", f"/api/v1/admin/users/{self.alice['id']}/unban", token=self.admin)
        self.assertEqual(self.profile()[0], 401)  # unbanned, but the old token stays revoked
        token = self.api.login("alice")["token"]
        self.warm(token)
        self.assertEqual(self.api.request("DELETE", "/api/v1/users/account", token=token)[0], 200)
        self.assertEqual(self.profile(token)[0], 401)

    def test_sign_out_everywhere_refuses_at_once(self):
        self.warm()
        self.successResultOf(Deferred.fromCoroutine(
            self.api.domain.lifecycle.sign_out_everywhere(self.alice["id"], Unauthenticated())))
        self.assertEqual(self.profile()[0], 401)

    def test_role_changes_apply_at_once(self):
        stats = "/api/v1/admin/stats"
        self.warm()
        self.assertEqual(self.api.request("GET", stats, token=self.token)[0], 403)
        self.api.request("PUT", f"/api/v1/admin/users/{self.alice['id']}", {"role": "admin"}, token=self.admin)
        self.assertEqual(self.api.request("GET", stats, token=self.token)[0], 200)
        self.api.request("PUT", f"/api/v1/admin/users/{self.alice['id']}", {"role": "user"}, token=self.admin)
        self.assertEqual(self.api.request("GET", stats, token=self.token)[0], 403)

    def test_profile_and_login_changes_show_at_once(self):
        self.warm()
        code, _, _ = self.api.request("PUT", "/api/v1/users/profile", {"nickname": "Al", "email": "al@example.com"},
                                      token=self.token)
        self.assertEqual(code, 200)
        data = self.profile()[1]["data"]
        self.assertEqual((data["nickname"], data["email"]), ("Al", "al@example.com"))
        self.api.clock.advance(10)
        self.api.login("alice")
        self.assertEqual(self.profile()[1]["data"]["last_login"], rfc3339(self.api.clock.seconds()))
