"""
The file part of an upload, written to a spool file while it arrives.

A :class:`SpoolUpload` is the file sink of one ``multipart/form-data``
request (:class:`~wecompany.web.multipart.StreamingForm` hands it the bytes
of the file part as the push parser finds them). Nothing else happens on
the reactor thread: the bytes are queued, and one job at a time, in the disk
thread pool, appends what is queued to the spool file and feeds it to the
SHA-256. While more than ``high_water`` bytes wait for the disk, the
connection's transport is paused (it reads nothing more from the socket, so
TCP pushes back on the client); it is resumed once they are down to
``low_water``. However fast the client, the upload costs at most about
``high_water`` bytes of memory, plus one read from the socket.

The request owns the spool file until a handler :meth:`claims
<SpoolUpload.claim>` it; a request that ends unclaimed (refused, rejected,
or its client gone) discards it. The handler, once it has claimed it,
discards it when done, whatever happened: after the file was moved into the
file storage there is nothing left to remove.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections import deque

import attrs
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from wecompany.errors import InvalidInput, TooLarge, Unavailable, WeCompanyError
from wecompany.privatefs import make_private_dir, open_private

MiB = 1 << 20


@attrs.frozen
class Spooled:
    """A complete spool file: where it is, how long it is, its SHA-256 (lower-case hex)."""

    path: str
    size: int
    sha256: str


class _SpoolFile:
    """The spool file's handle and digest; used only in the disk thread pool, one job at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.handle = None
        self.digest = hashlib.sha256()

    def open(self) -> None:
        make_private_dir(os.path.dirname(self.path))
        self.handle = open_private(self.path, "xb")

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.handle.write(chunk)

    def hash(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.digest.update(chunk)  # hashlib lets go of the GIL for large chunks

    def sync(self) -> None:
        """Put what was written so far on disk (beside the writes), so the final fsync has little left."""
        os.fdatasync(self.handle.fileno())

    def finish(self) -> str:
        if self.handle is None:  # an empty file
            self.open()
        self.handle.close()
        return self.digest.hexdigest()

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SpoolUpload:
    """
    :param directory: where the spool file goes (this node's disk).
    :param run_in_thread: ``f(callable, *args) -> Deferred``, the disk thread pool's runner.
    :param producer: what to pause while the disk is behind (the
        connection's transport, an ``IPushProducer``).
    :param max_size: bytes the file may have; past it :meth:`write` raises
        :class:`TooLarge` (the request answers 413).
    :param high_water: bytes waiting for the disk above which ``producer`` is paused.
    :param low_water: bytes waiting for the disk at or below which it is resumed.

    The request gives :meth:`when_failed` what answers a failed write or
    a :meth:`refusal <refuse>` at once.
    """

    log = Logger()

    def __init__(self, directory: str, run_in_thread, producer, max_size: int,
                 high_water: int = 16 * MiB, low_water: int = 4 * MiB, max_batch: int = 4 * MiB,
                 sync_every: int = 32 * MiB) -> None:
        self.path = os.path.join(directory, f"upload-{secrets.token_hex(12)}")
        self.max_size = max_size
        self.high_water = high_water
        self.low_water = low_water
        self.max_batch = max_batch
        self.sync_every = sync_every
        self._on_error = None
        self.filename: str | None = None
        self.content_type: str | None = None
        self.received = 0  # bytes handed to write()
        self.claimed = False
        self._file = _SpoolFile(self.path)
        self._run = run_in_thread
        self._producer = producer
        self._queue: deque[bytes] = deque()
        self._waiting = 0  # bytes queued or being written
        self._busy = False
        self._paused = False
        self._opened = False
        self._error: WeCompanyError | None = None
        self._discarded: Deferred | None = None
        self._idle_waiters: list[Deferred] = []
        self._unsynced = 0  # bytes written since the last sync began
        self._syncing: Deferred | None = None

    @property
    def paused(self) -> bool:
        """Whether the transport is paused for the disk to catch up."""
        return self._paused

    @property
    def waiting(self) -> int:
        """Bytes queued for the disk or being written."""
        return self._waiting

    def when_failed(self, on_error) -> None:
        """Call ``on_error(WeCompanyError)`` once, when a write fails or the upload is refused (now, if it was)."""
        self._on_error = on_error
        if self._error is not None:
            on_error(self._error)

    # -- the form's file sink -------------------------------------------------
    def open(self, name: str, filename: str, content_type: str | None) -> None:
        """A file part starts; there may be one."""
        if self._opened:
            raise InvalidInput("send one file per upload")
        self._opened = True
        self.filename, self.content_type = filename, content_type

    def write(self, data: bytes) -> None:
        """Queue bytes of the file part for the disk (pausing the transport when too many wait)."""
        self.received += len(data)
        if self.received > self.max_size:
            raise TooLarge(f"file larger than the upload limit of {self.max_size} bytes")
        if self._error is not None or self._discarded is not None or not data:
            return
        self._queue.append(data)
        self._waiting += len(data)
        if self._waiting > self.high_water:
            # Also when already paused: whoever resumed the transport meanwhile
            # (the channel, when its send buffer drained) did not know of the disk.
            self._paused = True
            self._producer.pauseProducing()
        self._pump()

    def close(self) -> None:
        """The file part ended (the request may still be arriving)."""

    # -- for the handler ------------------------------------------------------
    @property
    def has_file(self) -> bool:
        return self._opened

    def claim(self) -> None:
        """The handler takes the spool file over: the request will not discard it."""
        self.claimed = True

    async def result(self) -> Spooled:
        """Once every byte is on disk: the spool file, closed. Raises what a write raised."""
        await self._idle()
        if self._error is not None:
            raise self._error
        if self._discarded is not None:
            raise Unavailable("the upload was discarded")
        sha256 = await self._run(self._file.finish)
        return Spooled(self.path, self.received, sha256)

    def refuse(self, error: WeCompanyError) -> None:
        """Refuse the upload (its admission check failed): ``on_error`` answers it, the file is discarded."""
        self._fail(error)

    def discard(self) -> Deferred:
        """Stop writing and remove the spool file (once the write under way is done). Idempotent."""
        if self._discarded is None:
            self._queue.clear()
            self._waiting = 0
            self._resume()
            self._discarded = Deferred.fromCoroutine(self._remove())
            self._discarded.addErrback(lambda f: self.log.failure("removing spool file {path} failed", f,
                                                                  path=self.path))
        return self._discarded

    async def _remove(self) -> None:
        await self._idle()
        await self._run(self._file.remove)

    # -- writing --------------------------------------------------------------
    def _pump(self) -> None:
        if self._busy:
            return
        if not self._queue or self._error is not None:
            self._wake()
            return
        chunks, size = [], 0
        while self._queue and size < self.max_batch:
            chunk = self._queue.popleft()
            chunks.append(chunk)
            size += len(chunk)
        self._busy = True
        d = Deferred.fromCoroutine(self._append(chunks))
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(size,))
        d.addErrback(lambda f: self.log.failure("spooling an upload failed", f))

    async def _append(self, chunks: list[bytes]) -> None:
        if self._file.handle is None:
            await self._run(self._file.open)
        # The write and the hash of a batch run side by side in two threads
        # (both let go of the GIL); batches run one after the other.
        try:
            await gatherResults([self._run(self._file.write, chunks), self._run(self._file.hash, chunks)],
                                consumeErrors=True)
        except FirstError as error:
            error.subFailure.raiseException()

    def _written(self, _, size: int) -> None:
        self._busy = False
        self._unsynced += size
        if self._unsynced >= self.sync_every and self._syncing is None and self._discarded is None:
            self._start_sync()
        if self._discarded is None:
            self._waiting -= size
            if self._waiting <= self.low_water:
                self._resume()
        self._pump()

    def _start_sync(self) -> None:
        # The storage fsyncs the file before it is named (nothing stored is
        # lost in a crash); syncing as it arrives spreads that wait over the
        # upload instead of making the client wait for it all at the end
        # (bench/media_transfer.py). It runs beside the next writes.
        self._unsynced = 0
        syncing = self._syncing = self._run(self._file.sync)

        def synced(result):
            self._syncing = None
            if isinstance(result, Failure):
                self._io_failed(result)
            else:
                self._wake()

        syncing.addBoth(synced)

    def _write_failed(self, failure) -> None:
        self._busy = False
        self._io_failed(failure)

    def _io_failed(self, failure) -> None:
        error = failure.value
        if not isinstance(error, WeCompanyError):
            self.log.failure("writing spool file {path} failed", failure, path=self.path)
            error = Unavailable("the server cannot store the upload right now: try again later")
        self._fail(error)
        self._wake()

    def _fail(self, error: WeCompanyError) -> None:
        if self._error is not None:
            return
        self._error = error
        if self._on_error is not None:
            self._on_error(error)
        self.discard()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._producer.resumeProducing()

    async def _idle(self) -> None:
        while self._busy or self._syncing is not None or (self._queue and self._error is None
                                                          and self._discarded is None):
            waiter: Deferred = Deferred()
            self._idle_waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)
