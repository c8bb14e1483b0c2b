"""Envelope, errors, limits, metrics and the OpenAPI document, across routes."""

import json

from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import Api
from wecompany.api.app import RestAPI
from wecompany.api.openapi import build_document
from wecompany.api.routing import PUBLIC, endpoints_of


class EnvelopeTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)

    def test_encoded_data_makes_the_same_bytes(self):
        from twisted.web.test.requesthelper import DummyRequest

        from wecompany.api import envelope

        data = {"list": [{"title": "caf\u00e9 \"x\"", "n": 1.5, "none": None}], "total": 1}
        made = []
        for value in (data, envelope.Encoded(envelope.dumps(data))):
            request = DummyRequest([b""])
            request.wecompany_request_id = "rid-1"
            made.append(envelope.success(request, value, 1_700_000_000.5, 201))
        self.assertEqual(made[0], made[1])
        self.assertEqual(json.loads(made[1])["data"], data)

    def test_ids_made_here_are_unique(self):
        from twisted.web.test.requesthelper import DummyRequest

        from wecompany.api import envelope

        ids = {envelope.request_id_for(DummyRequest([b""])) for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        for rid in ids:
            self.assertRegex(rid, "^[0-9a-f]{32}$")

    def test_unknown_route_and_method(self):
        code, body, _ = self.api.request("GET", "/api/v1/nope")
        self.assertEqual((code, body["code"]), (404, 404))
        code, body, response = self.api.request("DELETE", "/api/v1/csrf-token")
        self.assertEqual(code, 405)
        self.assertIn("GET", response.headers.getRawHeaders("allow")[0])

    def test_request_id_echoed_or_made(self):
        _, body, response = self.api.request("GET", "/api/v1/csrf-token", headers={"X-Request-ID": "abc-123"})
        self.assertEqual(body["request_id"], "abc-123")
        self.assertEqual(response.headers.getRawHeaders("x-request-id"), ["abc-123"])
        _, body, _ = self.api.request("GET", "/api/v1/csrf-token", headers={"X-Request-ID": "bad id\x01"})
        self.assertEqual(len(body["request_id"]), 32)

    def test_compact_json(self):
        _, raw, _ = self.api.request("GET", "/api/v1/csrf-token")
        code, content, response = self.api.request("GET", "/api/v1/csrf-token")
        text = json.dumps(content, separators=(",", ":"))
        self.assertNotIn(": ", text)
        self.assertEqual(len(content["data"]["csrf_token"]), 43)

    def test_body_too_large_is_413_before_buffering(self):
        code, body, _ = self.api.request("POST", "/api/v1/auth/login", raw=b"{" + b" " * (1 << 20) + b"}",
                                         headers={"Content-Type": "application/json"})
        self.assertEqual(code, 413)
        self.assertIn("larger than the limit", body["message"])

    def test_every_protected_route_needs_a_token(self):
        for ep in endpoints_of(RestAPI):
            if ep.auth == PUBLIC:
                continue
            path = ep.path.replace("<int:", "<").replace("<string:", "<")
            path = "/api" + "".join(("1" if part.startswith("<") else part) for part in
                                    path.replace("<", "|<").replace(">", ">|").split("|"))
            code, body, _ = self.api.request(ep.method, path, {} if ep.body is not None else None)
            self.assertEqual(code, 401, f"{ep.method} {path}")

    def test_metrics(self):
        self.api.request("GET", "/api/v1/csrf-token")
        self.api.request("GET", "/api/v1/nope/1")
        self.api.request("GET", "/api/v1/nope/2")
        code, text, response = self.api.request("GET", "/metrics")
        self.assertEqual(code, 200)
        text = text.decode()
        self.assertIn('wecompany_http_requests_total{method="GET",route="/api/v1/csrf-token",status="200"} 1.0', text)
        self.assertIn('wecompany_http_requests_total{method="GET",route="unmatched",status="404"} 2.0', text)
        self.assertIn("wecompany_http_request_duration_seconds_bucket", text)
        self.assertIn("wecompany_online_users 0.0", text)
        self.assertIn("wecompany_active_calls 0.0", text)
        self.assertIn("wecompany_media_jobs_running 0.0", text)
        self.assertIn("wecompany_media_jobs_queued 0.0", text)

    def test_methods_no_one_defined_are_one_label(self):
        for method in ("BREW", "WHATEVER", "GET"):
            self.api.metrics.observe("unmatched", method, 405, 0.001)
        text = self.api.request("GET", "/metrics")[1].decode()
        self.assertIn('wecompany_http_requests_total{method="other",route="unmatched",status="405"} 2.0', text)
        self.assertIn('wecompany_http_requests_total{method="GET",route="unmatched",status="405"} 1.0', text)
        self.assertNotIn("BREW", text)


class OpenApiTests(SynchronousTestCase):
    def test_document_lists_exactly_the_registered_routes(self):
        api = Api(self)
        code, doc, _ = api.request("GET", "/api/v1/openapi.json")
        self.assertEqual(code, 200)
        documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
        registered = set()
        for rule in RestAPI.app.url_map.iter_rules():
            path = "/api" + rule.rule.rstrip("/")
            for arg in rule.arguments:
                path = path.replace(f"<int:{arg}>", f"{{{arg}}}").replace(f"<string:{arg}>", f"{{{arg}}}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                registered.add((path, method))
        self.assertEqual(documented, registered)
        self.assertEqual(doc, build_document(RestAPI))

    def test_document_is_valid_openapi(self):
        from openapi_spec_validator import validate
        validate(build_document(RestAPI))


class RobustnessTests(SynchronousTestCase):
    """Inputs schemathesis found that once made the API answer 500 or outside its envelope."""

    def test_huge_ids_are_404(self):
        api = Api(self)
        token = api.user("alice")
        for path in ("/api/v1/meetings/10000000000000000001/messages", "/api/v1/meetings/0",
                     "/api/v1/meetings/197680132291201079443456/participants/12158586"):
            method = "DELETE" if "participants/" in path else "GET"
            code, body, _ = api.request(method, path, token=token)
            self.assertEqual((code, body["code"]), (404, 404), path)

    def test_malformed_multipart_is_400_in_the_envelope(self):
        api = Api(self)
        token = api.user("alice")
        for raw, ctype in ((b"--c637e12e2b1a998d80d1b087531af51c--\r\n",
                            "multipart/form-data; boundary=c637e12e2b1a998d80d1b087531af51c"),
                           (b"garbage", "multipart/form-data"), (b"{}", "application/json")):
            code, body, _ = api.request("POST", "/api/v1/users/upload-avatar", raw=raw, token=token,
                                        headers={"Content-Type": ctype})
            self.assertEqual((code, body["code"]), (400, 400), raw)

    def test_json_the_server_could_not_use_is_400(self):
        # Each of these once answered 500 with a critical traceback in the log.
        api = Api(self)
        token = api.user("alice")
        json_header = {"Content-Type": "application/json"}
        for raw in (b"[" * 30_000 + b"]" * 30_000, b"{\"username\":" + b"[" * 40 + b"]" * 40 + b"}",
                    b'{"username":"bob_1","email":"b@x.io","password":"Secret-pass1","nickname":"\\ud800"}',
                    b'{"username":"bob_1","email":"b@x.io","password":"Secret-pass1","nickname":NaN}'):
            code, body, _ = api.request("POST", "/api/v1/auth/register", raw=raw, headers=json_header)
            self.assertEqual((code, body["code"]), (400, 400), raw[:80])
        self.assertIsNone(api.domain.store.get_user_by_username("bob_1").result)
        code, body, _ = api.request("POST", "/api/v1/meetings", raw=b'{"title":"t","settings":' + b"[" * 50
                                    + b"]" * 50 + b"}", token=token, headers=json_header)
        self.assertEqual(code, 400, body)

    def test_integers_no_database_stores_are_400(self):
        api = Api(self)
        token = api.user("alice")
        code, body, _ = api.request("POST", "/api/v1/meetings", {"title": "t"}, token=token)
        meeting_id = body["data"]["meeting"]["id"]
        for user_id in (2**63, 2**64 + 5, -(2**63)):
            code, body, _ = api.request("POST", f"/api/v1/meetings/{meeting_id}/participants",
                                        {"user_id": user_id}, token=token)
            self.assertEqual(code, 400, (user_id, body))
        code, body, _ = api.request("POST", f"/api/v1/meetings/{meeting_id}/participants",
                                    {"user_id": 2**63 - 1}, token=token)
        self.assertEqual((code, body["error_code"]), (404, 1003))
        code, body, _ = api.request("GET", "/api/v1/meetings?page=" + "9" * 30, token=token)
        self.assertEqual(code, 400)

    def test_odd_headers_are_answered_normally(self):
        api = Api(self)
        token = api.user("alice")
        for big in ({"X-Filler": "a" * 8192}, {"X-Request-ID": "r" * 8192}, {"User-Agent": "u" * 8192}):
            code, body, response = api.request("GET", "/api/v1/users/profile", token=token, headers=big)
            self.assertEqual(code, 200, big.keys())
            self.assertEqual(len(body["request_id"]), 32)  # a fresh one: 8 KiB is too long to echo
        for odd in ("caf\u00e9".encode().decode("latin-1"), "\u00ff\u00fe", "a\tb"):
            code, body, response = api.request("GET", "/api/v1/users/profile", token=token,
                                               headers={"X-Request-ID": odd})
            self.assertEqual(code, 200, odd)
            self.assertEqual(response.headers.getRawHeaders("x-request-id"), [body["request_id"]])
            self.assertRegex(body["request_id"], "^[0-9a-f]{32}$")
