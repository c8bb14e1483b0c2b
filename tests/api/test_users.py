"""/api/v1/users/*: profile, password, avatar, account deletion."""

from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import PASSWORD, Api
from tests.helpers import FakeClient

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def multipart(field: str, filename: str, data: bytes, ctype: str = "image/png"):
    boundary = "wecompanyboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class ProfileTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)
        self.token = self.api.user("alice")

    def test_requires_token(self):
        for token in (None, "garbage", self.api.domain.tokens.issue(999, "ghost")):
            code, body, _ = self.api.request("GET", "/api/v1/users/profile", token=token)
            self.assertEqual(code, 401)
            self.assertEqual(body["code"], 401)
        code, _, _ = self.api.request("GET", "/api/v1/users/profile", headers={"Authorization": "Basic abc"})
        self.assertEqual(code, 401)

    def test_expired_token(self):
        self.api.clock.advance(86400 + 60)
        code, body, _ = self.api.request("GET", "/api/v1/users/profile", token=self.token)
        self.assertEqual((code, body["message"]), (401, "token expired"))

    def test_update(self):
        code, body, _ = self.api.request("PUT", "/api/v1/users/profile",
                                         {"nickname": "Al", "phone": "+1 555", "email": "new@example.com"},
                                         token=self.token)
        self.assertEqual(code, 200, body)
        self.assertEqual((body["data"]["nickname"], body["data"]["phone"], body["data"]["email"]),
                         ("Al", "+1 555", "new@example.com"))
        code, body, _ = self.api.request("GET", "/api/v1/users/profile", token=self.token)
        self.assertEqual(body["data"]["nickname"], "Al")

    def test_update_validation_and_conflict(self):
        self.api.register("bob", "b@example.com")
        for change, code_expected in (({"email": "b@example.com"}, 400), ({"email": "bad"}, 400),
                                      ({"nickname": ""}, 400), ({"phone": 5}, 400),
                                      ({"avatar": "javascript:alert(1)"}, 400)):
            code, body, _ = self.api.request("PUT", "/api/v1/users/profile", change, token=self.token)
            self.assertEqual(code, code_expected, change)
        code, body, _ = self.api.request("GET", "/api/v1/users/profile", token=self.token)
        self.assertEqual(body["data"]["email"], "alice@example.com")

    def test_change_password_revokes_refresh(self):
        refresh = self.api.login("alice")["refresh_token"]
        code, body, _ = self.api.request("POST", "/api/v1/users/change-password",
                                         {"old_password": "Wrong-pass1", "new_password": "Another-pass2"},
                                         token=self.token)
        self.assertEqual((code, body["error_code"]), (400, 1004))
        code, body, _ = self.api.request("POST", "/api/v1/users/change-password",
                                         {"old_password": PASSWORD, "new_password": "Another-pass2"},
                                         token=self.token)
        self.assertEqual(code, 200, body)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": refresh})
        self.assertEqual(code, 401)
        self.api.login("alice", "Another-pass2")

    def test_old_password_guesses_are_limited(self):
        # Someone holding a stolen access token must not learn the password here.
        codes = [self.api.request("POST", "/api/v1/users/change-password",
                                  {"old_password": f"Guess-{i}-pass", "new_password": "Another-pass2"},
                                  token=self.token)[0] for i in range(7)]
        self.assertEqual(codes, [400] * 5 + [429] * 2)
        code, _, _ = self.api.request("POST", "/api/v1/auth/login", {"username": "alice", "password": PASSWORD})
        self.assertEqual(code, 429)  # the same account budget as logins

    def test_avatar_upload_and_serve(self):
        raw, headers = multipart("avatar", "me.png", PNG)
        code, body, _ = self.api.request("POST", "/api/v1/users/upload-avatar", raw=raw, headers=headers,
                                         token=self.token)
        self.assertEqual(code, 200, body)
        url = body["data"]["avatar"]
        self.assertTrue(url.startswith("/api/v1/avatars/") and url.endswith(".png"))
        code, data, response = self.api.request("GET", url)
        self.assertEqual((code, data), (200, PNG))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["image/png"])

    def test_avatar_refusals(self):
        raw, headers = multipart("avatar", "evil.png", b"<svg onload=alert(1)>", "image/png")
        code, body, _ = self.api.request("POST", "/api/v1/users/upload-avatar", raw=raw, headers=headers,
                                         token=self.token)
        self.assertEqual(code, 400)
        raw, headers = multipart("other", "a.png", PNG)
        code, _, _ = self.api.request("POST", "/api/v1/users/upload-avatar", raw=raw, headers=headers,
                                      token=self.token)
        self.assertEqual(code, 400)
        raw, headers = multipart("avatar", "big.png", PNG + b"\x00" * (2 << 20))
        code, _, _ = self.api.request("POST", "/api/v1/users/upload-avatar", raw=raw, headers=headers,
                                      token=self.token)
        self.assertEqual(code, 413)
        for name in ("../../etc/passwd", "x.exe", "..png"):
            code, _, _ = self.api.request("GET", "/api/v1/avatars/" + name)
            self.assertEqual(code, 404, name)

    def test_delete_account(self):
        refresh = self.api.login("alice")["refresh_token"]
        user_id = self.api.domain.tokens.verify(self.token)["user_id"]
        live = FakeClient(str(user_id), "alice")
        self.api.domain.chat.open_session(live)
        code, _, _ = self.api.request("DELETE", "/api/v1/users/account", token=self.token)
        self.assertEqual(code, 200)
        self.assertIsNotNone(live.disconnected)
        code, _, _ = self.api.request("GET", "/api/v1/users/profile", token=self.token)
        self.assertEqual(code, 401)
        code, _, _ = self.api.request("POST", "/api/v1/auth/refresh", {"refresh_token": refresh})
        self.assertEqual(code, 401)
        code, body, _ = self.api.request("POST", "/api/v1/auth/login", {"username": "alice", "password": PASSWORD})
        self.assertEqual(code, 400)
        # The email is free again.
        self.api.register("alice2", "alice@example.com")
