"""S3Storage against a fake client object, injected; its requests run in place."""

from __future__ import annotations

import os

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.helpers import synchronous_runner
from tests.storage.behaviour import StorageBehaviour
from tests.storage.fakes3 import FakeClientError, FakeConnectionError, FakeS3Client
from wecompany.config import S3Location
from wecompany.errors import Unavailable
from wecompany.storage import open_storage
from wecompany.storage.s3 import MIN_PART, S3Storage, error_code


class Counting:
    """A client factory that counts how often it is asked."""

    def __init__(self, client) -> None:
        self.client = client
        self.made = 0

    def __call__(self):
        self.made += 1
        return self.client


class FakeS3BehaviourTests(StorageBehaviour, TestCase):
    def setUp(self):
        self.client = FakeS3Client()
        self.storage = S3Storage(lambda: self.client, "bucket", "wc/", synchronous_runner, part_size=MIN_PART)


class S3Tests(TestCase):
    def setUp(self):
        self.client = FakeS3Client()
        self.factory = Counting(self.client)
        self.storage = S3Storage(self.factory, "bucket", "tenant/wc/", synchronous_runner, part_size=MIN_PART,
                                 endpoint="http://127.0.0.1:9000")
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def spooled(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as out:
            out.write(data)
        return path

    def logged(self) -> list[dict]:
        return [e for e in self.events if e.get("log_namespace", "").endswith("S3Storage")]

    async def test_keys_under_the_prefix(self):
        await self.storage.put_bytes("avatars/1-ab.png", b"png")
        self.assertEqual(list(self.client.objects), [("bucket", "tenant/wc/avatars/1-ab.png")])
        self.assertEqual(self.storage.describe(), "s3://bucket/tenant/wc/ at http://127.0.0.1:9000")

    async def test_the_client_is_made_once_on_first_use(self):
        self.assertEqual(self.factory.made, 0)  # building the storage asks nothing of boto
        await self.storage.put_bytes("avatars/a.png", b"a")
        await self.storage.read("avatars/a.png", 0, 1)
        self.assertEqual(self.factory.made, 1)

    async def test_reads_are_ranged_gets_of_what_is_asked(self):
        await self.storage.put_bytes("media/transfers/ab/f", bytes(100))
        self.client.calls.clear()
        self.assertEqual(len(await self.storage.read("media/transfers/ab/f", 10, 20)), 20)
        self.assertEqual(self.client.calls, [("GetObject", "tenant/wc/media/transfers/ab/f", "bytes=10-29")])
        self.assertTrue(all(body.closed for body in self.client.bodies))
        self.assertEqual(await self.storage.read("media/transfers/ab/f", 10, 0), b"")

    async def test_a_store_that_ignores_ranges(self):
        await self.storage.put_bytes("media/transfers/ab/f", b"0123456789")
        self.client.ignore_range = True
        # From the start the bytes are the right ones: never more than asked for.
        self.assertEqual(await self.storage.read("media/transfers/ab/f", 0, 4), b"0123")
        # Further on they are not: that is an error, not wrong data.
        with self.assertRaises(Unavailable):
            await self.storage.read("media/transfers/ab/f", 4, 4)
        self.assertTrue(all(body.closed for body in self.client.bodies))

    async def test_small_files_in_one_put(self):
        path = self.spooled(b"x" * MIN_PART)
        await self.storage.put_file("media/transfers/ab/small", path)
        self.assertEqual([call[0] for call in self.client.calls], ["PutObject"])
        self.assertFalse(os.path.exists(path))

    async def test_large_files_in_parts_no_larger_than_a_part(self):
        data = os.urandom(1024) * (2 * MIN_PART // 1024) + b"tail"
        path = self.spooled(data)
        await self.storage.put_file("media/transfers/ab/large", path)
        self.assertEqual([call[0] for call in self.client.calls],
                         ["CreateMultipartUpload", "UploadPart", "UploadPart", "UploadPart",
                          "CompleteMultipartUpload"])
        self.assertEqual([call[2] for call in self.client.calls if call[0] == "UploadPart"],
                         [(1, MIN_PART), (2, MIN_PART), (3, 4)])
        self.assertEqual(self.client.objects[("bucket", "tenant/wc/media/transfers/ab/large")], data)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(self.client.uploads, {})

    async def test_a_failed_multipart_upload_is_aborted(self):
        path = self.spooled(b"y" * (2 * MIN_PART + 1))
        self.client.fail("UploadPart", FakeConnectionError("Could not connect to the endpoint URL"), after=1)
        with self.assertRaises(Unavailable):
            await self.storage.put_file("media/transfers/ab/large", path)
        self.assertEqual(self.client.calls[-1][0], "AbortMultipartUpload")
        self.assertEqual((self.client.uploads, self.client.objects), ({}, {}))
        self.assertTrue(os.path.exists(path))  # the caller's to remove
        # Stored nothing, and a later attempt starts afresh.
        self.client.recover()
        await self.storage.put_file("media/transfers/ab/large", path)
        self.assertEqual(await self.storage.size("media/transfers/ab/large"), 2 * MIN_PART + 1)

    async def test_an_abort_that_fails_too_is_logged_and_the_cause_told(self):
        path = self.spooled(b"y" * (MIN_PART + 1))
        self.client.fail("CompleteMultipartUpload", FakeClientError("InternalError", 500, "CompleteMultipartUpload"))
        self.client.fail("AbortMultipartUpload", FakeConnectionError("gone"))
        with self.assertRaises(Unavailable):
            await self.storage.put_file("media/transfers/ab/large", path)
        texts = [e["log_format"] for e in self.logged()]
        self.assertEqual(len(texts), 2)
        self.assertIn("cannot abort", texts[0])

    async def test_every_backend_failure_is_unavailable_with_the_cause_in_the_log(self):
        failures = [FakeConnectionError("Could not connect to the endpoint URL: \"http://127.0.0.1:9000/\""),
                    FakeClientError("AccessDenied", 403, "PutObject"),
                    FakeClientError("SlowDown", 503, "PutObject"),
                    FakeClientError("NoSuchBucket", 404, "PutObject")]
        for failure in failures:
            self.client.fail("PutObject", failure)
            with self.assertRaises(Unavailable) as caught:
                await self.storage.put_bytes("avatars/a.png", b"x")
            self.assertEqual((caught.exception.code, caught.exception.message),
                             (503, "file storage is unavailable right now: try again later"))
            self.client.recover()
        logged = self.logged()
        self.assertEqual([e["kind"] for e in logged],
                         ["FakeConnectionError", "FakeClientError", "FakeClientError", "FakeClientError"])
        self.assertIn("AccessDenied", logged[1]["error"])
        self.assertEqual(logged[0]["where"], "s3://bucket/tenant/wc/ at http://127.0.0.1:9000")

    async def test_a_bucket_that_is_not_there(self):
        storage = S3Storage(lambda: self.client, "other", "", synchronous_runner)
        for attempt in (storage.read("avatars/a.png", 0, 1), storage.size("avatars/a.png")):
            with self.assertRaises(Unavailable):
                await attempt

    async def test_reads_and_looks_fail_when_the_store_does(self):
        await self.storage.put_bytes("avatars/a.png", b"x")
        for operation in ("GetObject", "HeadObject", "DeleteObject"):
            self.client.fail(operation, FakeConnectionError("timed out"))
        for attempt in (self.storage.read("avatars/a.png", 0, 1), self.storage.size("avatars/a.png"),
                        self.storage.delete("avatars/a.png")):
            with self.assertRaises(Unavailable):
                await attempt


class ShapeTests(SynchronousTestCase):
    def test_error_codes_from_the_response(self):
        self.assertEqual(error_code(FakeClientError("NoSuchKey", 404, "GetObject")), "NoSuchKey")
        missing_code = FakeClientError("x", 404, "HeadObject")
        del missing_code.response["Error"]["Code"]
        self.assertEqual(error_code(missing_code), "404")
        self.assertIsNone(error_code(FakeConnectionError("refused")))
        self.assertIsNone(error_code(ValueError()))

    def test_part_size_and_prefix_are_checked(self):
        self.assertRaises(ValueError, S3Storage, FakeS3Client, "bucket", "", synchronous_runner,
                          part_size=MIN_PART - 1)
        self.assertRaises(ValueError, S3Storage, FakeS3Client, "bucket", "no-slash", synchronous_runner)

    def test_open_storage_for_an_s3_location(self):
        client = FakeS3Client(buckets=["media"])
        storage = open_storage(S3Location("media", "p/", "http://127.0.0.1:9000", "eu-west-1"), "/unused",
                               synchronous_runner, s3_client_factory=lambda: client)
        self.assertIsInstance(storage, S3Storage)
        self.assertEqual((storage.bucket, storage.prefix, storage.endpoint), ("media", "p/", "http://127.0.0.1:9000"))
        self.assertIs(storage.client(), client)
