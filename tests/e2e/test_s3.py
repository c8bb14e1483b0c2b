"""
S3 file storage against a real S3-compatible HTTP server on loopback
(moto's, :mod:`tests.e2e.s3server`), through the real boto3 client made the
way the daemon makes it, credentials from the environment: the behaviour
suite the fake S3 client runs in ``tests/storage``, and two real daemons
sharing one bucket. What the fake stands for is proven here.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.e2e.daemon import Daemon, daemon_environment
from tests.e2e.s3server import S3Server, boto_environment, use_test_credentials
from tests.e2e.test_daemon import DaemonTestCase
from tests.e2e.test_rest import Http
from tests.storage.behaviour import StorageBehaviour
from wecompany.config import S3Location
from wecompany.errors import Unavailable
from wecompany.privatefs import storage_errors_unavailable
from wecompany.storage import open_storage
from wecompany.tcp import codec
from wecompany.tcp.codec import MsgType

REGION = "us-east-1"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


async def s3_with_bucket(testcase, bucket: str) -> S3Server:
    """A fresh S3 server with ``bucket`` in it (made through boto3, in a thread)."""
    from wecompany.storage.s3 import make_client

    server = await S3Server(testcase).start()
    client = await deferToThread(make_client, S3Location(bucket, endpoint=server.endpoint, region=REGION))
    await deferToThread(client.create_bucket, Bucket=bucket)
    testcase.addCleanup(client.close)
    return server


class S3ServerBehaviourTests(StorageBehaviour, TestCase):
    """The storage behaviour, through the real client, against the real HTTP API."""

    timeout = 60

    def setUp(self):
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self):
        use_test_credentials(self)  # the standard chain finds them in the environment
        self.server = await s3_with_bucket(self, "behaviour")
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-disk")
        pool.start()
        self.addCleanup(pool.stop)
        self.location = S3Location("behaviour", "wc/", self.server.endpoint, REGION)
        self.storage = open_storage(self.location, "/unused", storage_errors_unavailable(
            partial(deferToThreadPool, reactor, pool)))
        self.addCleanup(lambda: self.storage._client is not None and self.storage._client.close())

    async def test_keys_are_under_the_prefix_and_large_files_in_parts(self):
        data = os.urandom(self.storage.part_size + 1000)  # two parts
        path = self.local_file(data)
        await self.storage.put_file("media/transfers/ab/x", path)
        client = self.storage.client()
        listed = await deferToThread(client.list_objects_v2, Bucket="behaviour")
        self.assertEqual([(o["Key"], o["Size"]) for o in listed["Contents"]],
                         [("wc/media/transfers/ab/x", len(data))])
        head = await deferToThread(client.head_object, Bucket="behaviour", Key="wc/media/transfers/ab/x")
        self.assertTrue(head["ETag"].endswith('-2"'), head["ETag"])  # a multipart object, of two parts
        uploads = await deferToThread(client.list_multipart_uploads, Bucket="behaviour")
        self.assertEqual(uploads.get("Uploads", []), [])

    async def test_a_server_that_is_gone_is_unavailable(self):
        await self.storage.put_bytes("avatars/a.png", b"x")
        await self.server.stop()
        for attempt in (self.storage.read("avatars/a.png", 0, 1), self.storage.put_bytes("avatars/b.png", b"y")):
            with self.assertRaises(Unavailable):
                await attempt

    async def test_a_bucket_that_is_not_there_is_unavailable(self):
        storage = open_storage(S3Location("no-such-bucket", "", self.server.endpoint, REGION), "/unused",
                               partial(deferToThreadPool, reactor, reactor.getThreadPool()))
        with self.assertRaises(Unavailable):
            await storage.put_bytes("avatars/a.png", b"x")
        storage.client().close()


def multipart(data: bytes) -> tuple[bytes, dict]:
    boundary = "wecompanyboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"me.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {b"Content-Type": [f"multipart/form-data; boundary={boundary}".encode()]}


class DaemonsSharingABucketTests(DaemonTestCase):
    """Real daemons with ``--file-storage s3://...``: what one stores, another serves."""

    async def daemons(self, count: int):
        use_test_credentials(self)
        server = await s3_with_bucket(self, "shared")
        self.server = server
        option = f"s3://shared/wc?endpoint={server.endpoint}&region={REGION}"
        env = boto_environment(daemon_environment())  # the credentials in the daemons' environment
        return [await Daemon(self, "--file-storage", option, environ=env).start() for _ in range(count)]

    async def objects(self) -> dict[str, int]:
        from wecompany.storage.s3 import make_client
        client = await deferToThread(make_client, S3Location("shared", endpoint=self.server.endpoint, region=REGION))
        self.addCleanup(client.close)
        listed = await deferToThread(client.list_objects_v2, Bucket="shared")
        return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}

    async def test_an_avatar_uploaded_to_one_daemon_is_served_by_another(self):
        one, other = await self.daemons(2)
        http = Http(self, one)
        await http.register("alice")
        token = (await http.login("alice"))["token"]
        raw, headers = multipart(PNG)
        headers[b"Authorization"] = [f"Bearer {token}".encode()]
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.post(f"http://127.0.0.1:{one.http_port}/api/v1/users/upload-avatar", data=raw,
                                   headers=headers, pool=pool, timeout=10)
        body = await response.json()
        self.assertEqual(response.code, 200, body)
        url = body["data"]["avatar"]
        response = await treq.get(f"http://127.0.0.1:{other.http_port}{url}", pool=pool, timeout=10)
        self.assertEqual((response.code, await response.content()), (200, PNG))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["image/png"])
        self.assertEqual(await self.objects(), {f"wc/avatars/{url.rsplit('/', 1)[1]}": len(PNG)})
        for daemon in (one, other):
            self.assertFalse(os.path.exists(os.path.join(daemon.data_dir, "avatars")))
            self.assertNotIn("wecompany-test-secret", daemon.log_text())

    async def test_a_file_sent_over_tcp_goes_through_the_bucket(self):
        (daemon,) = await self.daemons(1)
        alice = await self.user(daemon, "alice")
        bob = await self.user(daemon, "bob")
        await bob.close()
        data = os.urandom(9 << 20)  # more than one 8 MiB part
        alice.send(b"\x01\x01" + codec.qstr("t1") + codec.qstr("bob") + codec.qstr("big.bin")
                   + codec.u64(len(data)) + hashlib.sha256(data).digest())
        accepted = await alice.expect(MsgType.FILE)
        self.assertEqual(accepted["op"], codec.FILE_ACCEPTED, accepted.fields)
        chunk = accepted["chunk_size"]
        for offset in range(0, len(data), chunk):
            alice.send(b"\x01\x02" + codec.qstr("t1") + codec.u64(offset) + data[offset:offset + chunk])
        complete = await alice.expect(MsgType.FILE, timeout=30)
        self.assertEqual((complete["op"], complete["delivered"]), (codec.FILE_COMPLETE, False), complete.fields)
        stored = await self.objects()
        self.assertEqual(list(stored.values()), [len(data)])
        self.assertTrue(next(iter(stored)).startswith("wc/media/transfers/"))
        self.assertEqual(os.listdir(os.path.join(daemon.data_dir, "spool")), [])
        bob = await self.connect(daemon, "bob")
        await bob.login("bob")
        incoming = await bob.expect(MsgType.FILE)
        self.assertEqual((incoming["op"], incoming["size"]), (codec.FILE_INCOMING, len(data)))
        received = bytearray()
        while True:
            message = await bob.expect(MsgType.FILE, timeout=30)
            if message["op"] == codec.FILE_DONE:
                break
            self.assertEqual((message["op"], message["offset"]), (codec.FILE_DATA, len(received)))
            received += message["data"]
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(data).digest())
