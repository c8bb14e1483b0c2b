"""/api/v1/users/*: profile, password, avatar, account deletion."""

from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import PASSWORD, Api
from tests.helpers import FakeClient
from tests.storage.fakes3 import FakeClientError, FakeConnectionError, FakeS3Client

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


class AvatarStorageTests(SynchronousTestCase):
    """Avatars in the file storage every node reads (``--file-storage``), here a fake S3."""

    def setUp(self):
        self.s3 = FakeS3Client(buckets=["media"])
        self.node_a = Api(self, file_storage="s3://media/wc", s3_client=self.s3)
        self.token = self.node_a.user("alice")

    def upload(self, api, data=PNG):
        raw, headers = multipart("avatar", "me.png", data)
        return api.request("POST", "/api/v1/users/upload-avatar", raw=raw, headers=headers, token=self.token)

    def test_uploaded_through_one_node_served_by_another(self):
        code, body, _ = self.upload(self.node_a)
        self.assertEqual(code, 200, body)
        url = body["data"]["avatar"]
        name = url.rsplit("/", 1)[1]
        self.assertEqual(self.s3.objects, {("media", f"wc/avatars/{name}"): PNG})
        node_b = Api(self, file_storage="s3://media/wc", s3_client=self.s3)
        code, data, response = node_b.request("GET", url)
        self.assertEqual((code, data), (200, PNG))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["image/png"])
        code, _, _ = node_b.request("GET", "/api/v1/avatars/1-0000000000000000.png")
        self.assertEqual(code, 404)

    def test_the_store_down_is_503_and_says_no_more(self):
        code, body, _ = self.upload(self.node_a)
        url = body["data"]["avatar"]
        self.s3.fail("PutObject", FakeConnectionError('Could not connect to the endpoint URL: "http://10.9.9.9/"'))
        self.s3.fail("GetObject", FakeClientError("AccessDenied", 403, "GetObject"))
        code, body, _ = self.upload(self.node_a, PNG + b"second")
        self.assertEqual((code, body["code"], body["message"]),
                         (503, 503, "file storage is unavailable right now: try again later"))
        self.assertNotIn("10.9.9.9", str(body))
        code, body, _ = self.node_a.request("GET", "/api/v1/users/profile", token=self.token)
        self.assertEqual(body["data"]["avatar"], url)  # the profile still names the stored one
        code, body, _ = self.node_a.request("GET", url)
        self.assertEqual((code, body["message"]), (503, "file storage is unavailable right now: try again later"))
        self.assertNotIn("AccessDenied", str(body))
        self.s3.recover()
        self.assertEqual(self.node_a.request("GET", url)[:2], (200, PNG))
