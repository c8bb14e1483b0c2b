"""
A fake boto3 S3 client: the few calls :class:`~wecompany.storage.s3.S3Storage`
makes, with S3's answers and errors as botocore shapes them, in memory.

It is injected (``S3Storage(lambda: fake, ...)``); nothing of boto is
patched. ``tests/e2e/test_s3.py`` runs the same behaviour against a real
S3-compatible server, so what this fakes is proven there.
"""

from __future__ import annotations

import hashlib
import itertools
import re

MIN_PART = 5 << 20
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


class FakeClientError(Exception):
    """What botocore's ``ClientError`` carries that S3Storage reads: ``response``."""

    def __init__(self, code: str, status: int, operation: str) -> None:
        super().__init__(f"An error occurred ({code}) when calling the {operation} operation: {code}")
        self.response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class FakeConnectionError(Exception):
    """Stands for botocore's ``EndpointConnectionError`` (no ``response``)."""


class FakeBody:
    """A ``StreamingBody``: read at most ``amt`` bytes, then close."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.closed = False

    def read(self, amt: int | None = None) -> bytes:
        data, self._data = (self._data, b"") if amt is None else (self._data[:amt], self._data[amt:])
        return data

    def close(self) -> None:
        self.closed = True


class FakeS3Client:
    """
    :ivar objects: ``(bucket, key) -> bytes``.
    :ivar uploads: multipart uploads in progress, ``id -> (bucket, key, {part: bytes})``.
    :ivar calls: ``(operation, key, detail)`` of every call, in order.
    :ivar bodies: every body :meth:`get_object` handed out.
    :ivar ignore_range: answer GETs with the whole object, as a store that
        does not do ranges would.
    """

    def __init__(self, buckets=("bucket",)) -> None:
        self.buckets = set(buckets)
        self.objects: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, tuple[str, str, dict[int, bytes]]] = {}
        self.calls: list[tuple[str, str, object]] = []
        self.bodies: list[FakeBody] = []
        self.ignore_range = False
        self._failures: list[tuple[str, Exception, list[int]]] = []
        self._ids = itertools.count(1)

    def fail(self, operation: str, error: Exception, after: int = 0) -> None:
        """Make ``operation`` raise ``error``, once it has succeeded ``after`` more times."""
        self._failures.append((operation, error, [after]))

    def recover(self) -> None:
        self._failures.clear()

    def _call(self, operation: str, bucket: str, key: str, detail: object = None) -> None:
        self.calls.append((operation, key, detail))
        for name, error, countdown in self._failures:
            if name == operation:
                if countdown[0] == 0:
                    raise error
                countdown[0] -= 1
        if bucket not in self.buckets:
            raise FakeClientError("NoSuchBucket", 404, operation)

    def _missing(self, operation: str):
        return FakeClientError("NoSuchKey", 404, operation)

    # -- objects ------------------------------------------------------------
    def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> dict:
        self._call("PutObject", Bucket, Key, len(Body))
        assert isinstance(Body, bytes)
        self.objects[(Bucket, Key)] = Body
        return {"ETag": _etag(Body)}

    def get_object(self, *, Bucket: str, Key: str, Range: str | None = None) -> dict:
        self._call("GetObject", Bucket, Key, Range)
        data = self.objects.get((Bucket, Key))
        if data is None:
            raise self._missing("GetObject")
        total = len(data)
        answer = {"ContentLength": total}
        if Range is not None and not self.ignore_range:
            match = _RANGE.fullmatch(Range)
            assert match, Range
            first, last = int(match.group(1)), int(match.group(2))
            if first >= total:
                raise FakeClientError("InvalidRange", 416, "GetObject")
            last = min(last, total - 1)
            data = data[first:last + 1]
            answer.update(ContentLength=len(data), ContentRange=f"bytes {first}-{last}/{total}")
        body = FakeBody(data)
        self.bodies.append(body)
        answer["Body"] = body
        return answer

    def head_object(self, *, Bucket: str, Key: str) -> dict:
        self._call("HeadObject", Bucket, Key)
        data = self.objects.get((Bucket, Key))
        if data is None:
            raise FakeClientError("404", 404, "HeadObject")  # a HEAD has no body to name the error
        return {"ContentLength": len(data), "ETag": _etag(data)}

    def delete_object(self, *, Bucket: str, Key: str) -> dict:
        self._call("DeleteObject", Bucket, Key)
        self.objects.pop((Bucket, Key), None)
        return {}

    # -- multipart uploads ------------------------------------------------------
    def create_multipart_upload(self, *, Bucket: str, Key: str) -> dict:
        self._call("CreateMultipartUpload", Bucket, Key)
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = (Bucket, Key, {})
        return {"UploadId": upload_id}

    def upload_part(self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes) -> dict:
        self._call("UploadPart", Bucket, Key, (PartNumber, len(Body)))
        if UploadId not in self.uploads:
            raise FakeClientError("NoSuchUpload", 404, "UploadPart")
        self.uploads[UploadId][2][PartNumber] = Body
        return {"ETag": _etag(Body)}

    def complete_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str, MultipartUpload: dict) -> dict:
        self._call("CompleteMultipartUpload", Bucket, Key)
        if UploadId not in self.uploads:
            raise FakeClientError("NoSuchUpload", 404, "CompleteMultipartUpload")
        parts = self.uploads[UploadId][2]
        listed = MultipartUpload["Parts"]
        numbers = [part["PartNumber"] for part in listed]
        if numbers != sorted(numbers) or any(parts.get(p["PartNumber"]) is None
                                              or _etag(parts[p["PartNumber"]]) != p["ETag"] for p in listed):
            raise FakeClientError("InvalidPart", 400, "CompleteMultipartUpload")
        if any(len(parts[number]) < MIN_PART for number in numbers[:-1]):
            raise FakeClientError("EntityTooSmall", 400, "CompleteMultipartUpload")
        del self.uploads[UploadId]
        self.objects[(Bucket, Key)] = b"".join(parts[number] for number in numbers)
        return {}

    def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> dict:
        self._call("AbortMultipartUpload", Bucket, Key)
        self.uploads.pop(UploadId, None)
        return {}


def _etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'
