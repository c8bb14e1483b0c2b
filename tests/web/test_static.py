"""Static files on the daemon's site: the console, --web-root and /api/docs, without sockets."""

from __future__ import annotations

import os

from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain
from tests.sitetesting import site_client
from wecompany.api.app import RestAPI
from wecompany.api.metrics import Metrics
from wecompany.web.site import make_site
from wecompany.web import static
from wecompany.web.static import API_DOCS_CSP, CONSOLE_CSP, CONSOLE_DIR, WEB_ROOT_CSP

INDEX = b"<!DOCTYPE html><title>family client</title>"


class SiteCase(SynchronousTestCase):
    def make(self, **site_options):
        from wecompany.signaling.protocol import SignalingFactory
        domain = make_domain(self)
        signaling = SignalingFactory(domain, reactor=domain.clock, ping_interval=0, ping_timeout=0)
        self.addCleanup(signaling.stopFactory)
        self.site = make_site(domain.store, domain, reactor=domain.clock, api=RestAPI(domain),
                              metrics=Metrics(domain), signaling=signaling, **site_options)
        self.treq, self.agent = site_client(self.site)

    def get(self, path: str, method: str = "GET", headers=None):
        d = self.treq.request(method, "http://localhost" + path, headers=headers, allow_redirects=False)
        self.agent.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response, body

    def header(self, response, name: str):
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None


class ConsoleTests(SiteCase):
    def setUp(self):
        self.make(console=True)

    def test_the_console_at_the_root(self):
        response, body = self.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        self.assertIn(b'<script src="console.js"></script>', body)
        self.assertEqual(self.header(response, "content-security-policy"), CONSOLE_CSP)
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(self.header(response, "x-frame-options"), "DENY")
        self.assertEqual(self.header(response, "cache-control"), "no-cache")

    def test_the_csp_is_strict(self):
        self.assertIn("script-src 'self';", CONSOLE_CSP)
        self.assertIn("frame-ancestors 'none'", CONSOLE_CSP)
        self.assertNotIn("unsafe", CONSOLE_CSP)

    def test_no_inline_script_or_remote_resource_in_the_console(self):
        for name in os.listdir(CONSOLE_DIR):
            with open(os.path.join(CONSOLE_DIR, name), encoding="utf-8") as f:
                text = f.read()
            self.assertNotIn("http://", text.replace("http://www.w3.org/2000/svg", ""), name)
            self.assertNotIn("https://", text, name)
            if name.endswith(".html"):
                self.assertEqual(text.count("<script"), text.count("<script src="), name)
                self.assertNotIn(" on", text.replace(" one", "").split("<body>")[1].split("=")[0], name)

    def test_its_script_and_styles(self):
        response, body = self.get("/console.js")
        self.assertEqual((response.code, self.header(response, "content-type")),
                         (200, "text/javascript; charset=utf-8"))
        self.assertIn(b"sessionStorage", body)
        response, _ = self.get("/console.css")
        self.assertEqual(self.header(response, "content-type"), "text/css; charset=utf-8")

    def test_unknown_paths_are_404_not_the_console(self):
        response, body = self.get("/nope")
        self.assertEqual(response.code, 404)
        self.assertNotIn(b"console.js", body)
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")

    def test_head_and_conditional_requests(self):
        response, body = self.get("/console.js", method="HEAD")
        self.assertEqual((response.code, body), (200, b""))
        modified = self.header(response, "last-modified")
        response, body = self.get("/console.js", headers={"If-Modified-Since": [modified]})
        self.assertEqual((response.code, body), (304, b""))

    def test_other_methods_are_refused(self):
        response, _ = self.get("/", method="POST")
        self.assertEqual(response.code, 405)

    def test_the_site_paths_come_first(self):
        response, _ = self.get("/health")
        self.assertEqual(self.header(response, "content-type"), "application/json")
        response, body = self.get("/api/v1/nope")
        self.assertEqual((response.code, self.header(response, "content-type")),
                         (404, "application/json; charset=utf-8"))
        response, _ = self.get("/metrics")
        self.assertTrue(self.header(response, "content-type").startswith("text/plain"))


class WebRootTests(SiteCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.root, "assets"))
        os.makedirs(os.path.join(self.root, "empty"))
        self.write("index.html", INDEX)
        self.write("assets/app-3f2a.js", b"console.log('app')")
        self.write("assets/logo.svg", b"<svg/>")
        self.write("assets/module.wasm", b"\0asm")
        self.write(".env", b"SECRET=1")
        self.outside = os.path.abspath(self.mktemp())
        with open(self.outside, "wb") as f:
            f.write(b"outside the web root")
        os.symlink(self.outside, os.path.join(self.root, "link.txt"))
        self.make(console=True, web_root=self.root)

    def write(self, name: str, content: bytes) -> None:
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(content)

    def test_its_index_at_the_root(self):
        response, body = self.get("/")
        self.assertEqual((response.code, body), (200, INDEX))
        self.assertEqual(self.header(response, "content-security-policy"), WEB_ROOT_CSP)
        self.assertEqual(self.header(response, "cache-control"), "no-cache")

    def test_files_with_their_types_and_caching(self):
        for path, ctype in (("/assets/app-3f2a.js", "text/javascript; charset=utf-8"),
                            ("/assets/logo.svg", "image/svg+xml"), ("/assets/module.wasm", "application/wasm")):
            response, _ = self.get(path)
            self.assertEqual((response.code, self.header(response, "content-type")), (200, ctype), path)
            self.assertEqual(self.header(response, "cache-control"), "public, max-age=3600")
            self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")

    def test_client_routes_get_the_index(self):
        for path in ("/meetings/12", "/login", "/a/b/c/", "/empty"):
            response, body = self.get(path)
            self.assertEqual((response.code, body), (200, INDEX), path)

    def test_missing_files_are_404(self):
        for path in ("/assets/missing.js", "/favicon.ico"):
            response, body = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertNotEqual(body, INDEX)

    def test_no_directory_listing(self):
        response, body = self.get("/assets/")
        self.assertEqual(body, INDEX)  # the app's, not a listing of assets/
        self.assertNotIn(b"app-3f2a.js", body)

    def test_no_way_out(self):
        for path in ("/../etc/passwd", "/assets/../../etc/passwd", "/%2e%2e/etc/passwd", "/assets/%2e%2e%2f.env",
                     "/..%2f..%2fetc/passwd", "/assets%2f..%2f.env", "/.env", "/%00", "/link.txt",
                     "/..%5c..%5cetc"):
            response, body = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"SECRET", body, path)
            self.assertNotIn(b"outside", body, path)
            self.assertNotIn(b"root:", body, path)

    def test_the_site_paths_come_first(self):
        response, body = self.get("/api/v1/csrf-token")
        self.assertEqual(response.code, 200)
        self.assertIn(b"csrf_token", body)
        response, _ = self.get("/api/unknown")
        self.assertEqual(self.header(response, "content-type"), "application/json; charset=utf-8")
        response, _ = self.get("/health")
        self.assertEqual(self.header(response, "content-type"), "application/json")
        response, body = self.get("/ws/signaling")  # a plain GET to the WebSocket endpoint
        self.assertTrue(self.header(response, "server").startswith("AutobahnPython"))  # Autobahn's status page
        self.assertNotEqual(body, INDEX)

    def test_the_console_moves_to_console(self):
        response, _ = self.get("/console")
        self.assertEqual((response.code, self.header(response, "location")), (301, "/console/"))
        response, body = self.get("/console/")
        self.assertIn(b'<script src="console.js"></script>', body)
        self.assertEqual(self.header(response, "content-security-policy"), CONSOLE_CSP)
        response, _ = self.get("/console/console.js")
        self.assertEqual(response.code, 200)


class RangeAndStreamTests(SynchronousTestCase):
    """
    Ranges, entity tags, and files larger than one read, on a StaticFiles of
    its own with tiny limits (a 1000-byte file is "large" past 64 bytes and
    goes out in 100-byte blocks).
    """

    def setUp(self):
        from twisted.web.server import Site
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.data = bytes(range(256)) * 4
        self.small = b"0123456789"
        for name, content in (("clip.mp4", self.data), ("ring.mp3", self.small)):
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(content)
        self.reads = []

        def run(f, *args):
            if f is not static._read_block:
                return maybeDeferred(f, *args)
            self.reads.append(args[1:])
            return maybeDeferred(f, *args)

        self.files = static.StaticFiles(self.root, static.WEB_ROOT_POLICY, run=run, whole_file=64,
                                        block_size=100)
        self.treq, self.agent = site_client(Site(self.files))

    def get(self, path, headers=None, method="GET"):
        d = self.treq.request(method, "http://localhost" + path, headers=headers)
        self.agent.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def header(self, response, name):
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def test_a_large_file_is_streamed_a_block_at_a_time(self):
        response, body = self.get("/clip.mp4")
        self.assertEqual((response.code, body, response.length), (200, self.data, 1024))
        self.assertEqual(self.header(response, "accept-ranges"), "bytes")
        self.assertEqual(self.reads, [(offset, min(100, 1024 - offset)) for offset in range(0, 1024, 100)])

    def test_one_range_of_a_large_file(self):
        response, body = self.get("/clip.mp4", {"Range": ["bytes=250-549"]})
        self.assertEqual((response.code, body), (206, self.data[250:550]))
        self.assertEqual(self.header(response, "content-range"), "bytes 250-549/1024")
        self.assertEqual(self.reads, [(250, 100), (350, 100), (450, 100)])  # only what was asked
        response, body = self.get("/clip.mp4", {"Range": ["bytes=-24"]})
        self.assertEqual((response.code, body), (206, self.data[-24:]))

    def test_one_range_of_a_small_file(self):
        response, body = self.get("/ring.mp3", {"Range": ["bytes=2-5"]})
        self.assertEqual((response.code, body), (206, b"2345"))
        self.assertEqual(self.header(response, "content-range"), "bytes 2-5/10")
        self.assertEqual(self.header(response, "content-type"), "audio/mpeg")
        response, body = self.get("/ring.mp3", {"Range": ["bytes=0-1,4-5"]})  # several: the whole file
        self.assertEqual((response.code, body), (200, self.small))

    def test_a_range_past_the_end_is_416(self):
        for path, size in (("/ring.mp3", 10), ("/clip.mp4", 1024)):
            response, body = self.get(path, {"Range": [f"bytes={size}-"]})
            self.assertEqual((response.code, body), (416, b""), path)
            self.assertEqual(self.header(response, "content-range"), f"bytes */{size}")

    def test_etag_and_if_none_match(self):
        response, _ = self.get("/clip.mp4", method="HEAD")
        etag = self.header(response, "etag")
        self.assertRegex(etag, r'^"[0-9a-f]+-[0-9a-f]+"$')
        response, body = self.get("/clip.mp4", {"If-None-Match": [etag]})
        self.assertEqual((response.code, body), (304, b""))
        response, body = self.get("/clip.mp4", {"If-None-Match": ['"other"']})
        self.assertEqual((response.code, body), (200, self.data))
        # A file replaced by a release has another tag.
        path = os.path.join(self.root, "clip.mp4")
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
        response, _ = self.get("/clip.mp4", {"If-None-Match": [etag]})
        self.assertEqual(response.code, 200)
        self.assertNotEqual(self.header(response, "etag"), etag)

    def test_if_range(self):
        response, _ = self.get("/clip.mp4", method="HEAD")
        etag, modified = self.header(response, "etag"), self.header(response, "last-modified")
        for validator in (etag, modified):
            response, body = self.get("/clip.mp4", {"Range": ["bytes=0-9"], "If-Range": [validator]})
            self.assertEqual((response.code, body), (206, self.data[:10]))
        response, body = self.get("/clip.mp4", {"Range": ["bytes=0-9"], "If-Range": ['"an-older-one"']})
        self.assertEqual((response.code, body), (200, self.data))

    def test_head_reads_nothing(self):
        response, body = self.get("/clip.mp4", method="HEAD")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.reads, [])

    def test_a_file_that_shrinks_while_streamed_cuts_the_answer_short(self):
        self.change_during_stream(lambda path: open(path, "wb").close())

    def test_a_file_removed_while_streamed_cuts_the_answer_short(self):
        self.change_during_stream(os.remove)

    def change_during_stream(self, change):
        calls = []

        def run(f, *args):
            if f is static._read_block:
                calls.append(args)
                if len(calls) == 2:
                    change(os.path.join(self.root, "clip.mp4"))
            return maybeDeferred(f, *args)

        self.files.run = run
        self.files._files = static._LocalFiles(run)
        d = self.treq.request("GET", "http://localhost/clip.mp4")
        self.agent.flush()
        response = self.successResultOf(d)
        body = response.content()
        self.agent.flush()
        self.failureResultOf(body)  # the promised length never came: the client sees it cut short
        self.flushLoggedErrors()


class ApiDocsTests(SiteCase):
    def setUp(self):
        self.make()

    def test_swagger_ui_on_the_document(self):
        response, _ = self.get("/api/docs")
        self.assertEqual((response.code, self.header(response, "location")), (301, "/api/docs/"))
        response, body = self.get("/api/docs/")
        self.assertEqual(response.code, 200)
        self.assertIn(b'<script src="swagger-ui-bundle.js"', body)
        self.assertEqual(self.header(response, "content-security-policy"), API_DOCS_CSP)
        response, body = self.get("/api/docs/swagger-initializer.js")
        self.assertIn(b'url: "/api/v1/openapi.json"', body)  # ours, not the package's demo
        self.assertNotIn(b"petstore", body)

    def test_the_files_come_from_the_package(self):
        for path, ctype in (("/api/docs/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
                            ("/api/docs/swagger-ui.css", "text/css; charset=utf-8")):
            response, body = self.get(path)
            self.assertEqual((response.code, self.header(response, "content-type")), (200, ctype), path)
            self.assertGreater(len(body), 10_000)

    def test_the_document_it_shows(self):
        response, body = self.get("/api/v1/openapi.json")
        self.assertEqual(response.code, 200)
        self.assertNotIn(b"/api/docs", body)  # the page is not an endpoint

    def test_no_way_out_of_the_docs(self):
        for path in ("/api/docs/../v1/openapi.json", "/api/docs/%2e%2e/%2e%2e/setup.cfg", "/api/docs/nope.js"):
            response, body = self.get(path)
            self.assertEqual(response.code, 404, path)
