"""
Files in an S3-compatible object store (``--file-storage s3://bucket/prefix``):
AWS S3, MinIO, Ceph RGW, Garage...

Every request is a blocking boto3 call, so each runs in the disk thread
pool, never on the reactor thread. Memory stays bounded: a file larger than
one part is uploaded in parts (multipart upload) read from the local file
one at a time, and reads are ranged GETs of at most the length asked for.
An object store writes atomically by itself: an object appears whole when
its PUT (or the multipart upload) completes.

Credentials are boto's business: the standard chain (``AWS_ACCESS_KEY_ID``
and friends, ``~/.aws/credentials`` and ``config``, ``AWS_PROFILE``, an
instance or container role). Nothing here reads, stores or logs one.

The boto3 client is made on first use, in the thread pool: making one
looks for credentials, which can mean a request to an instance metadata
service. boto3 is an optional dependency (``pip install 'wecompany[s3]'``);
:func:`require_boto3` turns its absence into a clear error at start.
"""

from __future__ import annotations

import os
import threading

from twisted.logger import Logger
from zope.interface import implementer

from wecompany.config import ConfigError, S3Location
from wecompany.errors import Unavailable, WeCompanyError
from wecompany.storage.interface import IFileStorage, KeyMissing, check_key

MiB = 1 << 20
#: S3 refuses parts smaller than this, but for the last.
MIN_PART = 5 * MiB
DEFAULT_PART = 8 * MiB

_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})


def require_boto3() -> None:
    """Raise :class:`ConfigError` saying how to install boto3 when it is not there."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise ConfigError("file-storage: s3:// needs boto3, which is not installed; "
                          "install it with: pip install 'wecompany[s3]'") from None


def make_client(location: S3Location, max_connections: int = 10):
    """
    A boto3 S3 client for ``location``: its endpoint and region, path-style
    addresses when an endpoint is given (what MinIO and Ceph expect),
    bounded retries and time-outs. Blocking (credential lookup): call it in
    a thread.
    """
    import boto3
    from botocore.config import Config

    options = dict(
        connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=max_connections,
        s3={"addressing_style": "path" if location.endpoint else "auto"},
    )
    if location.endpoint:
        # botocore's default CRC32 checksums on every upload are not
        # understood by every S3-compatible store; send them only where S3
        # requires them.
        options.update(request_checksum_calculation="when_required",
                       response_checksum_validation="when_required")
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=location.endpoint, region_name=location.region,
                          config=Config(**options))


def error_code(error: BaseException) -> str | None:
    """
    The S3 error code of what a client call raised (``NoSuchKey``,
    ``InvalidRange``, ``AccessDenied``...), read from the ``response`` that
    botocore's ``ClientError`` carries; None for anything else (a refused
    connection, a time-out, no credentials).
    """
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    if code is None:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status) if status is not None else None
    return str(code) if code is not None else None


@implementer(IFileStorage)
class S3Storage:
    """
    :param client_factory: makes the boto3 S3 client (or a fake with the
        same methods); called once, in the thread pool, on first use.
    :param bucket: the bucket, which must exist.
    :param prefix: put before every key (empty, or ending in ``/``).
    :param run_in_thread: ``f(callable, *args) -> Deferred``, the disk
        thread pool's runner: every request goes through it.
    :param part_size: bytes per part of a multipart upload, and the largest
        file sent in one PUT (at least 5 MiB, S3's minimum part).
    """

    log = Logger()
    read_size = 1 * MiB

    def __init__(self, client_factory, bucket: str, prefix: str, run_in_thread,
                 part_size: int = DEFAULT_PART, endpoint: str | None = None) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes")
        if prefix and not prefix.endswith("/"):
            raise ValueError("prefix must be empty or end with /")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.endpoint = endpoint
        self._run = run_in_thread
        self._factory = client_factory
        self._client = None
        self._client_lock = threading.Lock()

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def object_key(self, key: str) -> str:
        """The object's name in the bucket."""
        return self.prefix + check_key(key)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._call("write", key, self._put_bytes, self.object_key(key), data)

    async def put_file(self, key: str, path: str) -> None:
        await self._call("store", key, self._put_file, self.object_key(key), path)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        data = await self._call("read", key, self._read, self.object_key(key), offset, length)
        if data is None:
            raise KeyMissing()
        return data

    async def size(self, key: str) -> int | None:
        return await self._call("look at", key, self._size, self.object_key(key))

    async def delete(self, key: str) -> None:
        await self._call("delete", key, self._delete, self.object_key(key))

    async def _call(self, what: str, key: str, f, *args):
        try:
            return await self._run(f, *args)
        except WeCompanyError:
            raise
        except Exception as error:
            # A refused connection, a time-out, no credentials, AccessDenied,
            # NoSuchBucket, SlowDown...: the client can only try later; the
            # operator reads why here. botocore's messages name no secret.
            self.log.error("file storage: cannot {what} {key} in {where}: {kind}: {error}", what=what, key=key,
                           where=self.describe(), kind=type(error).__name__, error=str(error))
            raise Unavailable("file storage is unavailable right now: try again later") from None

    # -- in the thread pool ------------------------------------------------------
    def client(self):
        """The client, made on first use (by whichever thread gets here first)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def _put_bytes(self, name: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=name, Body=data)

    def _put_file(self, name: str, path: str) -> None:
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            if size <= self.part_size:
                self._put_bytes(name, source.read())
            else:
                self._upload_parts(name, source)
        os.unlink(path)

    def _upload_parts(self, name: str, source) -> None:
        client = self.client()
        upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        try:
            parts = []
            while True:
                data = source.read(self.part_size)
                if not data:
                    break
                number = len(parts) + 1
                answer = client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                            PartNumber=number, Body=data)
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            client.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id,
                                             MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            except Exception as error:
                # The parts stay until a bucket lifecycle rule removes them.
                self.log.warn("file storage: cannot abort the upload of {name}: {error}", name=name,
                              error=str(error))
            raise

    def _read(self, name: str, offset: int, length: int) -> bytes | None:
        try:
            answer = self.client().get_object(Bucket=self.bucket, Key=name,
                                              Range=f"bytes={offset}-{offset + length - 1}")
        except Exception as error:
            code = error_code(error)
            if code in _MISSING:
                return None
            if code == "InvalidRange":  # at or past the end (or an empty object)
                return b""
            raise
        body = answer["Body"]
        try:
            if offset and not answer.get("ContentRange"):
                # The whole object came back, not the range: its bytes are
                # not the ones asked for.
                raise OSError(f"the object store ignored the range of a read of {name}")
            return body.read(length)  # never more than asked for, whatever was sent
        finally:
            body.close()

    def _size(self, name: str) -> int | None:
        try:
            answer = self.client().head_object(Bucket=self.bucket, Key=name)
        except Exception as error:
            if error_code(error) in _MISSING:
                return None
            raise
        return int(answer["ContentLength"])

    def _delete(self, name: str) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=name)
