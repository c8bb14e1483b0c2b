"""
Files streamed out of the file storage to an HTTP client.

:class:`StoredFile` is the resource a download handler returns: it answers
``Range`` (one range of ``bytes=a-b``, ``a-`` or ``-n`` -> 206 with
``Content-Range``; one that cannot be satisfied -> 416 with ``Content-Range:
bytes */size``; several ranges -> the whole file, 200, as RFC 9110 allows),
``If-None-Match`` against the ``ETag`` (-> 304), ``If-Range``, and ``HEAD``;
and it names the file in a ``Content-Disposition`` that no file name can
break out of.

The body is read from the storage one block at a time, in the disk thread
pool, by a push producer registered on the request: while the client's
connection is paused (its send buffer full) nothing more is read, so a
download costs one block of memory however large the file and however slow
the client.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from wecompany.api.envelope import failure
from wecompany.errors import WeCompanyError

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
#: Characters RFC 5987 lets an ext-value keep as they are (besides letters and digits).
_ATTR_CHARS = "!#$&+-.^_`|~"
MAX_FALLBACK_NAME = 150


class Unsatisfiable(Exception):
    """The Range names no byte of the file."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """
    The one byte range ``header`` asks of a file of ``size`` bytes ->
    (first, last), inclusive; None for the whole file (no header, another
    unit, several ranges, or a header that is not well formed, all of which
    a server may answer with the whole file).

    :raises Unsatisfiable: for a well-formed range that names no byte.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE.match(spec)
    if match is None or not (match[1] or match[2]):
        return None
    first, last = match[1], match[2]
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None  # not a valid range at all: ignored
        if start >= size:
            raise Unsatisfiable()
        return start, min(end, size - 1)
    suffix = int(last)  # the last n bytes
    if suffix == 0 or size == 0:
        raise Unsatisfiable()
    return max(0, size - suffix), size - 1


def content_disposition(filename: str, disposition: str = "attachment") -> bytes:
    """
    ``attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>``
    (RFC 6266, RFC 5987): nothing of ``filename`` can end the header or the
    quoted string, whatever it holds.
    """
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%;' else "_" for c in filename)
    fallback = fallback[:MAX_FALLBACK_NAME].strip() or "download"
    encoded = quote(filename, safe=_ATTR_CHARS, encoding="utf-8", errors="replace")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}".encode("ascii")


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (weakly compared, as RFC 9110 says for it)."""
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == wanted for candidate in header.split(","))


class StoredFile(Resource):
    """
    One file of the storage as the response to a GET or HEAD.

    :param storage: the :class:`~wecompany.storage.IFileStorage`.
    :param key: where the bytes are.
    :param size: how many there are (as recorded).
    :param etag: the strong entity tag, quoted (``"<sha256>"``).
    :param clock: the reactor (``seconds()``), for error envelopes.
    :param block_size: bytes read from the storage at a time.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, storage, key: str, size: int, content_type: str, filename: str, etag: str, clock,
                 block_size: int = 256 << 10) -> None:
        super().__init__()
        self.storage = storage
        self.key = key
        self.size = size
        self.content_type = content_type
        self.filename = filename
        self.etag = etag
        self.clock = clock
        self.block_size = block_size

    def render(self, request):
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"etag", self.etag.encode("ascii"))
        request.setHeader(b"x-content-type-options", b"nosniff")
        # Behind a token: never in a shared cache; a client revalidates with the ETag.
        request.setHeader(b"cache-control", b"private, no-cache")
        none_match = request.getHeader(b"if-none-match")
        if none_match is not None and etag_matches(none_match.decode("latin-1"), self.etag):
            request.setResponseCode(304)
            return b""
        wanted = request.getHeader(b"range")
        if_range = request.getHeader(b"if-range")
        if if_range is not None and if_range.decode("latin-1").strip() != self.etag:
            wanted = None  # the client's copy is another version: send it all
        try:
            span = parse_range(wanted.decode("latin-1") if wanted is not None else None, self.size)
        except Unsatisfiable:
            request.setHeader(b"content-range", b"bytes */%d" % self.size)
            error = WeCompanyError(f"range not satisfiable: the file has {self.size} bytes", code=416)
            return failure(request, error, self.clock.seconds())
        request.setHeader(b"content-type", self.content_type.encode("ascii", "replace"))
        request.setHeader(b"content-disposition", content_disposition(self.filename))
        if span is None:
            start, length = 0, self.size
        else:
            start, length = span[0], span[1] - span[0] + 1
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (span[0], span[1], self.size))
        request.setHeader(b"content-length", b"%d" % length)
        if request.method == b"HEAD" or length == 0:
            return b""
        StorageStream(request, self.storage, self.key, start, length, self.block_size).begin()
        return NOT_DONE_YET


@implementer(IPushProducer)
class StorageStream:
    """
    Writes ``length`` bytes of ``key`` from ``start`` to ``request``, a
    block at a time, reading the next block only while the request is not
    paused; then finishes the request. A storage that fails, or holds fewer
    bytes than recorded, after the headers went out can only be told by
    closing the connection before the promised length: a client sees the
    download as cut short.
    """

    log = Logger()

    def __init__(self, request, storage, key: str, start: int, length: int, block_size: int) -> None:
        self.request = request
        self.storage = storage
        self.key = key
        self.offset = start
        self.remaining = length
        self.block_size = block_size
        self._paused = False
        self._stopped = False
        self._waiter: Deferred | None = None

    def begin(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        d = Deferred.fromCoroutine(self._stream())
        d.addErrback(lambda f: self.log.failure("streaming {key} failed", f, key=self.key))

    async def _stream(self) -> None:
        try:
            while self.remaining > 0:
                while self._paused and not self._stopped:
                    self._waiter = Deferred()
                    await self._waiter
                if self._stopped:
                    return
                data = await self.storage.read(self.key, self.offset, min(self.block_size, self.remaining))
                if self._stopped:
                    return
                if not data:
                    raise WeCompanyError(f"the file storage holds fewer bytes of {self.key} than recorded",
                                         code=500)
                self.offset += len(data)
                self.remaining -= len(data)
                self.request.write(data)
        except WeCompanyError as error:
            self.log.error("download of {key} cut short: {error}", key=self.key, error=error.message)
            self._abort()
            return
        except Exception:  # a read that failed some other way (a local file removed): cut short too
            self.log.failure("download of {key} cut short", key=self.key)
            self._abort()
            return
        self.request.unregisterProducer()
        self.request.finish()

    def _abort(self) -> None:
        self._stopped = True
        self.request.unregisterProducer()
        channel = self.request.channel
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()

    # -- IPushProducer -------------------------------------------------------------
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(None)
