"""
/api/v1/media/*: uploads, downloads with ranges and entity tags, lists,
permissions, the quota and bad input, through the daemon's own site (its
body limits and file sinks) on the in-memory store and a fake clock.
"""

from __future__ import annotations

import hashlib
import json
import os

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import Api
from tests.mediasamples import png, wav, webm
from wecompany.times import rfc3339

MEDIA = "/api/v1/media"
BOUNDARY = "mediaboundary7f3a"
MEDIA_KEYS = {"id", "filename", "content_type", "size", "sha256", "file_type", "meeting_id", "uploader_id",
              "created_at", "download_url"}


def form(*parts) -> tuple[bytes, dict]:
    """A multipart body of ``parts``: (name, value bytes) or (name, value bytes, filename, content type)."""
    body = b""
    for part in parts:
        name, value = part[0], part[1]
        if len(part) > 2:
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{part[2]}"\r\n'
                    f"Content-Type: {part[3]}\r\n")
        else:
            head = f'Content-Disposition: form-data; name="{name}"\r\n'
        body += f"--{BOUNDARY}\r\n{head}\r\n".encode() + value + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


class MediaCase(SynchronousTestCase):
    api_options: dict = {}

    def setUp(self):
        self.api = Api(self, **self.api_options)
        self.domain = self.api.domain
        self.alice, self.alice_id = self.account("alice")
        self.bob, self.bob_id = self.account("bob")

    def account(self, name: str) -> tuple[str, int]:
        profile = self.api.register(name)
        return self.api.login(name)["token"], profile["id"]

    def upload(self, data: bytes, token: str | None = None, filename: str = "clip.bin", *fields,
               client_type: str = "application/x-whatever", expect: int | None = 201):
        raw, headers = form(("file", data, filename, client_type), *fields)
        code, reply, response = self.api.request("POST", f"{MEDIA}/upload", token=token or self.alice, raw=raw,
                                                 headers=headers)
        if expect is not None:
            self.assertEqual(code, expect, reply)
        return reply["data"] if code == 201 else reply

    def get(self, path: str, token: str | None = None, headers=None):
        return self.api.request("GET", path, token=token or self.alice, headers=headers)

    def meeting(self, token: str, *members: str) -> int:
        code, reply, _ = self.api.request("POST", "/api/v1/meetings",
                                          {"title": "Review", "start_time": rfc3339(self.api.clock.seconds() + 120)},
                                          token=token)
        self.assertEqual(code, 201, reply)
        meeting_id = reply["data"]["meeting"]["id"]
        for member in members:
            code, reply, _ = self.api.request("POST", f"/api/v1/meetings/{meeting_id}/join", {}, token=member)
            self.assertEqual(code, 200, reply)
        return meeting_id

    def spool_files(self) -> list[str]:
        try:
            return os.listdir(self.domain.media.spool_dir)
        except FileNotFoundError:
            return []

    def stored(self, item: dict) -> str:
        return self.domain.storage.path_of(self.domain.store._media[item["id"]].storage_key)


class UploadTests(MediaCase):
    def test_upload_a_sound(self):
        data = wav(seconds=0.5)
        item = self.upload(data, None, "tone.wav")
        self.assertEqual(set(item) - {"duration_ms"}, MEDIA_KEYS)
        self.assertEqual((item["filename"], item["content_type"], item["file_type"], item["size"]),
                         ("tone.wav", "audio/wav", "audio", len(data)))  # sniffed, not the client's type
        self.assertEqual(item["sha256"], hashlib.sha256(data).hexdigest())
        self.assertEqual((item["uploader_id"], item["meeting_id"]), (self.alice_id, None))
        self.assertEqual(item["download_url"], f"{MEDIA}/download/{item['id']}")
        self.assertEqual(item["duration_ms"], 500)
        self.assertEqual(item["created_at"], rfc3339(self.api.clock.seconds()))
        with open(self.stored(item), "rb") as fh:
            self.assertEqual(fh.read(), data)
        self.assertEqual(self.spool_files(), [])

    def test_upload_an_image_and_a_video(self):
        image = self.upload(png(5, 7), None, "p.png")
        self.assertEqual((image["content_type"], image["width"], image["height"]), ("image/png", 5, 7))
        self.assertNotIn("duration_ms", image)
        video = self.upload(webm(seconds=1.0, width=32, height=24), None, "v.webm")
        self.assertEqual((video["content_type"], video["file_type"], video["width"], video["height"]),
                         ("video/webm", "video", 32, 24))
        self.assertLess(abs(video["duration_ms"] - 1000), 50)
        sound = self.upload(webm(video=False), None, "voice.webm")
        self.assertEqual((sound["content_type"], sound["file_type"]), ("audio/webm", "audio"))

    def test_other_bytes(self):
        text = self.upload(b"minutes of the meeting\n", None, "notes.txt", client_type="image/png")
        self.assertEqual((text["content_type"], text["file_type"]), ("text/plain", "document"))
        blob = self.upload(bytes(range(256)) * 4, None, "x.png", client_type="image/png")
        self.assertEqual((blob["content_type"], blob["file_type"]), ("application/octet-stream", "other"))
        empty = self.upload(b"", None, "empty")
        self.assertEqual((empty["size"], empty["sha256"]), (0, hashlib.sha256(b"").hexdigest()))

    def test_the_clients_file_type_is_kept(self):
        item = self.upload(wav(0.1), None, "a.wav", ("file_type", b"Recording"))
        self.assertEqual(item["file_type"], "recording")
        reply = self.upload(wav(0.1), None, "a.wav", ("file_type", b"../x"), expect=400)
        self.assertIn("file_type", reply["message"])

    def test_file_names_are_made_safe(self):
        self.assertEqual(self.upload(b"x", None, "../../etc/passwd")["filename"], "passwd")
        self.assertEqual(self.upload(b"x", None, "C:\\\\Users\\\\a\\\\..\\\\evil.exe")["filename"], "evil.exe")
        self.assertEqual(self.upload(b"x", None, "...")["filename"], "upload")
        self.assertEqual(self.upload(b"x", None, "r\u00e9sum\u00e9 \u6587\u4ef6.pdf")["filename"],
                         "r\u00e9sum\u00e9 \u6587\u4ef6.pdf")

    def test_keys_are_never_the_clients(self):
        item = self.upload(b"x", None, "media/uploads/aa/bb")
        key = self.domain.store._media[item["id"]].storage_key
        self.assertTrue(key.startswith("media/uploads/"))
        self.assertNotIn("aa/bb", key)

    def test_bad_uploads(self):
        cases = [
            (form(("other", b"x", "a.bin", "text/plain")), "field 'file'"),
            (form(("file", b"no file name")), "with a filename"),
            (form(("file", b"a", "a.bin", "text/plain"), ("file", b"b", "b.bin", "text/plain")), "one file"),
            (form(("file", b"a", "a.bin", "text/plain"), ("meeting_id", b"abc")), "meeting_id"),
            (form(("file", b"a", "a.bin", "text/plain"), ("meeting_id", b"0")), "meeting_id"),
            (form(("file", b"a", "a.bin", "text/plain"), ("meeting_id", b"\xff")), "UTF-8"),
            (form(("file", b"a", "a.bin", "text/plain"), ("meeting_id", b"1", "m.txt", "text/plain")), "one file"),
        ]
        for (raw, headers), message in cases:
            code, reply, _ = self.api.request("POST", f"{MEDIA}/upload", token=self.alice, raw=raw, headers=headers)
            self.assertEqual(code, 400, (message, reply))
            self.assertIn(message, reply["message"])
        code, reply, _ = self.api.request("POST", f"{MEDIA}/upload", {"file": "x"}, token=self.alice)
        self.assertEqual(code, 400)
        self.assertIn("multipart/form-data", reply["message"])
        raw, headers = form(("file", b"a", "a.bin", "text/plain"))
        code, reply, _ = self.api.request("POST", f"{MEDIA}/upload", raw=raw[:-10], headers=headers,
                                          token=self.alice)
        self.assertEqual(code, 400)
        self.assertEqual(self.spool_files(), [])
        self.assertEqual(self.domain.store._media, {})

    def test_unauthenticated(self):
        raw, headers = form(("file", b"secret", "a.bin", "text/plain"))
        code, reply, _ = self.api.request("POST", f"{MEDIA}/upload", raw=raw, headers=headers)
        self.assertEqual(code, 401)
        code, reply, _ = self.api.request("POST", f"{MEDIA}/upload", raw=raw, headers=headers, token="garbage")
        self.assertEqual(code, 401)
        self.assertEqual(self.spool_files(), [])

    def test_meeting_uploads_need_a_participant(self):
        meeting_id = self.meeting(self.alice)
        item = self.upload(b"agenda", None, "agenda.txt", ("meeting_id", str(meeting_id).encode()))
        self.assertEqual(item["meeting_id"], meeting_id)
        reply = self.upload(b"x", self.bob, "x.txt", ("meeting_id", str(meeting_id).encode()), expect=404)
        self.assertEqual(reply["error_code"], 2001)
        reply = self.upload(b"x", self.bob, "x.txt", ("meeting_id", b"999"), expect=404)
        self.assertEqual(reply["error_code"], 2001)
        self.api.request("POST", f"/api/v1/meetings/{meeting_id}/join", {}, token=self.bob)
        self.upload(b"x", self.bob, "x.txt", ("meeting_id", str(meeting_id).encode()))
        self.assertEqual(self.spool_files(), [])


class LimitTests(MediaCase):
    api_options = {"max_upload": 4096, "media_quota": 10_000}

    def test_a_file_past_the_limit_is_413_and_removed(self):
        self.upload(b"a" * 4096)
        reply = self.upload(b"a" * 4097, expect=413)
        self.assertIn("4096", reply["message"])
        self.assertEqual(self.spool_files(), [])
        self.assertEqual(len(self.domain.store._media), 1)

    def test_quota(self):
        self.upload(b"a" * 4000)
        self.upload(b"b" * 4000)
        reply = self.upload(b"c" * 2001, expect=413)
        self.assertEqual(reply["error_code"], 3001)
        self.assertIn("quota", reply["message"])
        self.assertEqual(self.spool_files(), [])
        self.upload(b"c" * 2000)  # exactly full
        self.upload(b"d" * 100, self.bob)  # the quota is per user
        # Deleting frees the room.
        first = self.get(MEDIA)[1]["data"]["list"][-1]
        self.api.request("DELETE", f"{MEDIA}/{first['id']}", token=self.alice)
        self.upload(b"e" * 4000)
        stored = [name for _, _, names in os.walk(os.path.join(self.domain.storage.root, "media")) for name in names]
        self.assertEqual(len(stored), 4)  # the refused upload left no bytes

    def test_a_declared_length_past_the_quota_is_refused_before_the_body(self):
        self.upload(b"a" * 4000)
        self.upload(b"b" * 4000)
        channel, transport = self.open_upload(self.alice, 68_000)
        self.assertIn(b"413", transport.value().split(b"\r\n")[0])
        self.assertIn(b'"error_code":3001', transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.spool_files(), [])

    def test_a_declared_length_past_the_limit_is_refused_at_once(self):
        channel, transport = self.open_upload(self.alice, 1 << 20)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413"))

    def test_an_upload_without_a_token_is_refused_before_the_body(self):
        channel, transport = self.open_upload(None, 3000)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401"), transport.value())
        self.assertEqual(self.spool_files(), [])

    def test_an_upload_cut_off_midway_leaves_nothing(self):
        channel, transport = self.open_upload(self.alice, 3000)
        channel.dataReceived(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                             f"filename=\"a.bin\"\r\n\r\n".encode() + b"x" * 1000)
        self.assertEqual(len(self.spool_files()), 1)
        channel.connectionLost(ConnectionError("gone"))
        self.assertEqual(self.spool_files(), [])
        self.assertEqual(self.domain.store._media, {})

    def open_upload(self, token: str | None, length: int):
        """A connection to the site that has sent the head of an upload declaring ``length`` bytes."""
        channel = self.api.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        channel.makeConnection(transport)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        channel.dataReceived(f"POST {MEDIA}/upload HTTP/1.1\r\nHost: x\r\n{auth}"
                             f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                             f"Content-Length: {length}\r\n\r\n".encode())
        return channel, transport


class DownloadTests(MediaCase):
    def setUp(self):
        super().setUp()
        self.data = bytes(range(256)) * 1200  # 300 KiB: more than one block
        self.item = self.upload(self.data, None, "report; final%.pdf")
        self.url = self.item["download_url"]
        self.etag = f'"{self.item["sha256"]}"'

    def header(self, response, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def test_whole(self):
        code, body, response = self.get(self.url)
        self.assertEqual((code, body), (200, self.data))
        self.assertEqual(response.length, len(self.data))
        self.assertEqual(self.header(response, "accept-ranges"), "bytes")
        self.assertEqual(self.header(response, "etag"), self.etag)
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(self.header(response, "content-type"), "application/octet-stream")
        self.assertEqual(self.header(response, "content-disposition"),
                         "attachment; filename=\"report_ final_.pdf\"; filename*=UTF-8''report%3B%20final%25.pdf")

    def test_unicode_name(self):
        item = self.upload(b"x", None, "\u4f1a\u8bae \u8bb0\u5f55.txt")
        _, _, response = self.get(item["download_url"])
        self.assertEqual(self.header(response, "content-disposition"),
                         "attachment; filename=\"__ __.txt\"; "
                         "filename*=UTF-8''%E4%BC%9A%E8%AE%AE%20%E8%AE%B0%E5%BD%95.txt")

    def test_ranges(self):
        size = len(self.data)
        for spec, (first, last) in [("bytes=0-9", (0, 9)), ("bytes=1000-", (1000, size - 1)),
                                    ("bytes=-5", (size - 5, size - 1)), ("bytes=10-999999999", (10, size - 1)),
                                    ("bytes=-999999999", (0, size - 1)), ("bytes=5-5", (5, 5))]:
            code, body, response = self.get(self.url, headers={"Range": spec})
            self.assertEqual(code, 206, spec)
            self.assertEqual(body, self.data[first:last + 1], spec)
            self.assertEqual(self.header(response, "content-range"), f"bytes {first}-{last}/{size}")
            self.assertEqual(response.length, last - first + 1)

    def test_unsatisfiable_range(self):
        for spec in (f"bytes={len(self.data)}-", "bytes=-0", f"bytes={len(self.data) + 10}-{len(self.data) + 20}"):
            code, body, response = self.get(self.url, headers={"Range": spec})
            self.assertEqual(code, 416, spec)
            self.assertEqual(self.header(response, "content-range"), f"bytes */{len(self.data)}")
            self.assertIn("range", body["message"])

    def test_ranges_answered_whole(self):
        # Several ranges, another unit, or nonsense: the whole file (RFC 9110 allows ignoring Range).
        for spec in ("bytes=0-1,5-6", "items=0-1", "bytes=abc", "bytes=9-3", "bytes=-"):
            code, body, _ = self.get(self.url, headers={"Range": spec})
            self.assertEqual((code, len(body)), (200, len(self.data)), spec)

    def test_if_none_match(self):
        for header in (self.etag, f"W/{self.etag}", f'"other", {self.etag}', "*"):
            code, body, response = self.get(self.url, headers={"If-None-Match": header})
            self.assertEqual((code, body), (304, b""), header)
            self.assertEqual(self.header(response, "etag"), self.etag)
        code, body, _ = self.get(self.url, headers={"If-None-Match": '"stale"'})
        self.assertEqual((code, len(body)), (200, len(self.data)))

    def test_if_range(self):
        code, body, _ = self.get(self.url, headers={"Range": "bytes=0-3", "If-Range": self.etag})
        self.assertEqual((code, body), (206, self.data[:4]))
        code, body, _ = self.get(self.url, headers={"Range": "bytes=0-3", "If-Range": '"changed"'})
        self.assertEqual((code, len(body)), (200, len(self.data)))

    def test_head(self):
        code, body, response = self.api.request("HEAD", self.url, token=self.alice)
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(self.header(response, "etag"), self.etag)

    def test_bytes_the_storage_lost(self):
        os.unlink(self.stored(self.item))
        d = self.api.treq.request("GET", "http://localhost" + self.url,
                                  headers={"Authorization": [f"Bearer {self.alice}"]})
        self.api.agent.flush()
        failure = self.failureResultOf(d)  # the headers promised bytes that never came: cut short
        self.assertTrue(failure.check(Exception))
        self.flushLoggedErrors()


class PermissionTests(MediaCase):
    def setUp(self):
        super().setUp()
        self.carol, self.carol_id = self.account("carol")
        self.dave, self.dave_id = self.account("dave")
        self.meeting_id = self.meeting(self.alice, self.bob, self.carol)
        # Carol becomes a moderator; Bob stays a participant; Dave is outside.
        code, reply, _ = self.api.request("PUT", f"/api/v1/meetings/{self.meeting_id}/participants/{self.carol_id}/role",
                                          {"role": "moderator"}, token=self.alice)
        self.assertEqual(code, 200, reply)
        self.shared = self.upload(b"minutes", self.bob, "minutes.txt", ("meeting_id", str(self.meeting_id).encode()))
        self.private = self.upload(b"mine", self.bob, "mine.txt")

    def status(self, method: str, path: str, token: str):
        code, reply, _ = self.api.request(method, path, token=token)
        return code, (reply.get("error_code") if isinstance(reply, dict) else None)

    def test_who_reads(self):
        for item, readers, others in ((self.shared, (self.alice, self.bob, self.carol), (self.dave,)),
                                      (self.private, (self.bob,), (self.alice, self.carol, self.dave))):
            for path in (f"{MEDIA}/info/{item['id']}", item["download_url"]):
                for token in readers:
                    self.assertEqual(self.status("GET", path, token)[0], 200)
                for token in others:
                    self.assertEqual(self.status("GET", path, token), (404, 3002))  # not 403: nothing is told

    def test_who_deletes(self):
        self.assertEqual(self.status("DELETE", f"{MEDIA}/{self.shared['id']}", self.dave), (404, 3002))
        self.assertEqual(self.status("DELETE", f"{MEDIA}/{self.private['id']}", self.alice), (404, 3002))
        other = self.upload(b"slides", self.carol, "s.txt", ("meeting_id", str(self.meeting_id).encode()))
        self.assertEqual(self.status("DELETE", f"{MEDIA}/{other['id']}", self.bob)[0], 403)  # reads, may not delete
        self.assertEqual(self.status("DELETE", f"{MEDIA}/{other['id']}", self.alice)[0], 200)  # the host
        self.assertEqual(self.status("DELETE", f"{MEDIA}/{self.shared['id']}", self.carol)[0], 200)  # a moderator
        path = self.stored(self.private)
        self.assertTrue(os.path.exists(path))
        self.assertEqual(self.status("DELETE", f"{MEDIA}/{self.private['id']}", self.bob)[0], 200)  # the uploader
        self.assertFalse(os.path.exists(path))  # the bytes go with it
        self.assertEqual(self.status("GET", f"{MEDIA}/info/{self.private['id']}", self.bob), (404, 3002))
        self.assertEqual(self.status("DELETE", f"{MEDIA}/{self.private['id']}", self.bob), (404, 3002))

    def test_a_removed_participant_reads_no_more(self):
        code, _, _ = self.api.request("DELETE", f"/api/v1/meetings/{self.meeting_id}/participants/{self.bob_id}",
                                      token=self.alice)
        self.assertEqual(code, 200)
        self.assertEqual(self.status("GET", f"{MEDIA}/info/{self.shared['id']}", self.bob)[0], 200)  # his own
        carols = self.upload(b"c", self.carol, "c.txt", ("meeting_id", str(self.meeting_id).encode()))
        self.assertEqual(self.status("GET", f"{MEDIA}/info/{carols['id']}", self.bob), (404, 3002))

    def test_bad_ids(self):
        for path in (f"{MEDIA}/info/abc", f"{MEDIA}/info/0", f"{MEDIA}/info/-1", f"{MEDIA}/info/99999999999999999999",
                     f"{MEDIA}/download/x", f"{MEDIA}/info/{self.private['id'] + 100}"):
            self.assertEqual(self.status("GET", path, self.bob)[0], 404, path)
        self.assertEqual(self.status("GET", f"{MEDIA}/info/{self.private['id']}", "garbage")[0], 401)


class ListTests(MediaCase):
    def test_mine_and_shared_newest_first_paged(self):
        meeting_id = self.meeting(self.alice, self.bob)
        ids = [self.upload(f"{i}".encode(), None, f"{i}.txt")["id"] for i in range(5)]
        in_meeting = self.upload(b"m", self.bob, "m.txt", ("meeting_id", str(meeting_id).encode()))["id"]
        code, reply, _ = self.get(f"{MEDIA}?page=1&page_size=2")
        self.assertEqual(code, 200)
        page = reply["data"]
        self.assertEqual((page["total"], page["page"], page["page_size"], page["total_pages"]), (5, 1, 2, 3))
        self.assertEqual([item["id"] for item in page["list"]], ids[::-1][:2])
        self.assertEqual(set(page["list"][0]), MEDIA_KEYS)
        page = self.get(f"{MEDIA}?page=3&page_size=2")[1]["data"]
        self.assertEqual([item["id"] for item in page["list"]], [ids[0]])
        page = self.get(f"{MEDIA}?meeting_id={meeting_id}")[1]["data"]
        self.assertEqual(([item["id"] for item in page["list"]], page["page_size"]), ([in_meeting], 10))
        self.assertEqual(self.get(MEDIA, self.bob)[1]["data"]["total"], 1)

    def test_a_meeting_list_is_for_its_participants(self):
        meeting_id = self.meeting(self.alice)
        code, reply, _ = self.get(f"{MEDIA}?meeting_id={meeting_id}", self.bob)
        self.assertEqual((code, reply["error_code"]), (404, 2001))
        code, reply, _ = self.get(f"{MEDIA}?meeting_id=424242")
        self.assertEqual(code, 404)

    def test_bad_queries(self):
        for query in ("page=0", "page_size=0", "page_size=101", "page=x", "meeting_id=abc", "meeting_id=0"):
            self.assertEqual(self.get(f"{MEDIA}?{query}")[0], 400, query)
        self.assertEqual(self.api.request("GET", MEDIA)[0], 401)


class ResultTests(MediaCase):
    def test_a_processing_result_is_a_new_item(self):
        meeting_id = self.meeting(self.alice, self.bob)
        source = self.upload(wav(0.2), None, "a.wav", ("meeting_id", str(meeting_id).encode()))
        record = self.domain.store._media[source["id"]]
        path = os.path.join(self.mktemp())
        with open(path, "wb") as fh:
            fh.write(png(2, 2))
        d = self.domain.media.add_result(self.alice_id, record, path, "thumb.png")
        result = self.successResultOf(d)
        self.assertEqual((result.meeting_id, result.source_id, result.content_type, result.width),
                         (meeting_id, source["id"], "image/png", 2))
        self.assertFalse(os.path.exists(path))  # moved into the storage
        code, body, _ = self.get(f"{MEDIA}/download/{result.id}", self.bob)
        self.assertEqual((code, body), (200, png(2, 2)))


class OpenAPITests(MediaCase):
    def test_the_media_routes_are_documented(self):
        code, document, _ = self.api.request("GET", "/api/v1/openapi.json")
        self.assertEqual(code, 200)
        if isinstance(document, bytes):
            document = json.loads(document)
        paths = document["paths"]
        for path, method in (("/api/v1/media/upload", "post"), ("/api/v1/media/download/{media_id}", "get"),
                             ("/api/v1/media", "get"), ("/api/v1/media/info/{media_id}", "get"),
                             ("/api/v1/media/{media_id}", "delete")):
            self.assertIn(method, paths[path], path)


class TransferTests(MediaCase):
    """A file sent with the TCP protocol's FILE transfer, listed and downloaded over REST."""

    def test_a_tcp_file_downloads_over_rest(self):
        from tests.tcp.test_protocol import PASSWORD, Conn, q, s16
        from wecompany.tcp import codec
        from wecompany.tcp.codec import MsgType
        from wecompany.tcp.protocol import WeCompanyFactory

        factory = WeCompanyFactory(self.domain, max_frame=4096, login_timeout=10, idle_timeout=90,
                                   message_rate=100, message_burst=200, auth_fail_delay=1.0)
        alice = Conn(factory, "10.0.0.1")
        alice.send(bytes((MsgType.LOGIN,)) + s16("alice") + s16(PASSWORD))
        alice.frames()
        data = wav(seconds=0.3)
        alice.send(b"\x01\x01" + q("t1") + q("bob") + q("../tone.wav") + codec.u64(len(data))
                   + hashlib.sha256(data).digest())
        self.assertEqual(alice.frames()[0][:2], bytes((MsgType.FILE, codec.FILE_ACCEPTED)))
        for offset in range(0, len(data), 2000):
            alice.send(b"\x01\x02" + q("t1") + codec.u64(offset) + data[offset:offset + 2000])
        self.assertEqual(alice.frames()[-1][:2], bytes((MsgType.FILE, codec.FILE_COMPLETE)))

        for token in (self.alice, self.bob):  # the sender's and the receiver's list
            page = self.get(MEDIA, token)[1]["data"]
            self.assertEqual(page["total"], 1)
            item = page["list"][0]
            self.assertEqual((item["filename"], item["uploader_id"], item["size"], item["content_type"]),
                             ("tone.wav", self.alice_id, len(data), "audio/wav"))
            self.assertAlmostEqual(item["duration_ms"], 300, delta=20)  # probed like an upload
            code, body, _ = self.get(item["download_url"], token)
            self.assertEqual((code, hashlib.sha256(body).hexdigest()), (200, hashlib.sha256(data).hexdigest()))
            code, body, _ = self.get(item["download_url"], token, headers={"Range": "bytes=100-199"})
            self.assertEqual((code, body), (206, data[100:200]))
        carol, _ = self.account("carol")
        self.assertEqual(self.get(item["download_url"], carol)[0], 404)
        # The receiver may read it, not delete it.
        self.assertEqual(self.api.request("DELETE", f"{MEDIA}/{item['id']}", token=self.bob)[0], 403)
