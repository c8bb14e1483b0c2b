"""
One-to-one file transfer through the server's media store.

The sender offers a file (recipient, name, size, SHA-256) and sends it in
order, in chunks that fit the frame limit. The server writes and hashes the
chunks off the reactor thread into a spool file on its own disk, checks the
SHA-256 at the end, moves the file into the file storage
(:mod:`wecompany.storage`, which every node of a cluster reaches) and then
streams it to the recipient: at once if online, otherwise right after its next
login, from whichever node it is connected to. Streaming reads the storage a
block at a time and waits whenever the recipient's connection applies
back-pressure, so neither a large file nor a slow recipient costs more than
a block of memory.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections import deque

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from wecompany.domain.events import FileChunk, FileDone, FileOffered, FileUnavailable
from wecompany.domain.interfaces import ISessionListener
from wecompany.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    TooLarge,
    WeCompanyError,
)
from wecompany.privatefs import make_private_dir, open_private
from wecompany.storage import KeyMissing
from wecompany.times import MAX_TIME

MAX_TRANSFER_ID = 64
MAX_NAME = 255
#: Where transferred files are in the file storage: this, then the record's path.
MEDIA_KEYS = "media/"


class TransferFailed(WeCompanyError):
    """An upload failed; the transport tells the sender which transfer."""

    code = 400

    def __init__(self, transfer_id: str, message: str, code: int = 400) -> None:
        super().__init__(message, code=code)
        self.transfer_id = transfer_id


@attrs.define(eq=False)
class _Upload:
    record: object
    handle: object
    digest: object
    spool: str
    received: int = 0


@attrs.define(eq=False)
class _Delivery:
    queue: deque = attrs.Factory(deque)
    waiter: Deferred | None = None
    gone: bool = False


def safe_name(name: str) -> str:
    """The file's base name, without any path, control characters or leading dots."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip().lstrip(".")
    if not name:
        raise InvalidInput("file name is empty")
    return name[:MAX_NAME]


@implementer(ISessionListener)
class FileService:
    """
    :param store: :class:`IStore`.
    :param directory: the :class:`~wecompany.domain.sessions.UserDirectory` (recipients).
    :param registry: the :class:`~wecompany.domain.sessions.SessionRegistry` (recipients online).
    :param storage: the :class:`~wecompany.storage.IFileStorage` complete
        files are kept in, under ``media/`` and the record's path (which is
        always chosen here).
    :param spool_dir: a directory on this node's disk for uploads while
        they arrive (``<data dir>/spool``).
    :param run_in_thread: ``f(callable, *args) -> Deferred`` for disk work.
    :param media: the :class:`~wecompany.domain.media.MediaService` a
        complete file is added to (the sender's item, shared with the
        recipient), so that it is in both media lists and downloads over
        REST; None for none.
    """

    log = Logger()

    def __init__(self, store, directory, registry, storage, spool_dir: str, run_in_thread, clock,
                 max_file_size: int = 256 << 20, chunk_size: int = 64 << 10,
                 max_uploads_per_client: int = 4, node: str | None = None, media=None) -> None:
        self.store = store
        self.media = media
        # In a cluster, the node that receives an upload is in its path
        # (transfers/{node}/...), so that a node cleans up its own uploads
        # only: the others' are still on their way.
        self.node = node
        self.directory = directory
        self.registry = registry
        self.storage = storage
        self.spool_dir = os.path.abspath(spool_dir)
        self._run = run_in_thread
        self.clock = clock
        self.max_file_size = max_file_size
        self.chunk_size = chunk_size
        # What one storage read asks for: whole chunks, as many as the
        # storage reads efficiently (one for a disk, 1 MiB for S3). At most
        # one block per delivering connection is held in memory.
        self.read_size = max(chunk_size, storage.read_size // chunk_size * chunk_size)
        self.max_uploads = max_uploads_per_client
        self._uploads: dict[tuple[object, str], _Upload] = {}
        self._spooling: set[str] = set()  # spool files of uploads in progress
        self._deliveries: dict[object, _Delivery] = {}

    @staticmethod
    def storage_key(record) -> str:
        """Where the bytes of a complete file are in the file storage."""
        return MEDIA_KEYS + record.path

    # -- receiving from the sender ------------------------------------------------
    async def offer(self, client, transfer_id: str, to: str, name: str, size: int, sha256: bytes):
        """Start an upload -> the FileRecord (complete already when ``size`` is 0)."""
        owner = client.identity.account_id
        if owner is None:
            raise Forbidden("anonymous sessions cannot send files")
        if not 1 <= len(transfer_id) <= MAX_TRANSFER_ID:
            raise InvalidInput("transfer id must be 1-64 characters")
        if (client, transfer_id) in self._uploads:
            raise Conflict("transfer id already in use")
        if sum(1 for c, _ in self._uploads if c is client) >= self.max_uploads:
            raise Conflict(f"at most {self.max_uploads} uploads at a time")
        if size > self.max_file_size:
            raise TooLarge(f"file is larger than the limit of {self.max_file_size} bytes")
        name = safe_name(name)
        recipient = await self.directory.resolve_user(to)
        if recipient is None or recipient.account_id is None:
            raise NotFound(f"unknown user {to!r}")
        token = secrets.token_hex(12)
        rel = f"{self._transfers(self.node)}{secrets.token_hex(1)}/{token}"
        spool = os.path.join(self.spool_dir, token)
        self._spooling.add(spool)
        try:
            handle = await self._run(_open_new, spool)
            try:
                record = await self.store.create_file(owner, name, size, sha256.hex(), rel,
                                                      self.clock.seconds(), recipient_id=recipient.account_id)
            except BaseException:
                await self._run(_discard, handle, spool)
                raise
        except BaseException:
            self._spooling.discard(spool)
            raise
        upload = _Upload(record, handle, hashlib.sha256(), spool)
        self._uploads[(client, transfer_id)] = upload
        self.log.info("file {file_id} ({size} bytes) from {owner} to {recipient}", file_id=record.id,
                      size=size, owner=owner, recipient=recipient.account_id)
        return record

    async def chunk(self, client, transfer_id: str, offset: int, data: bytes):
        """
        Append a chunk. Returns ``None`` while more is expected, and
        ``(record, delivering_now)`` once the file is complete and verified.
        """
        upload = self._uploads.get((client, transfer_id))
        if upload is None:
            raise TransferFailed(transfer_id, "no such transfer", code=404)
        if offset != upload.received:
            await self._abort(client, transfer_id, upload)
            raise TransferFailed(transfer_id, f"expected offset {upload.received}, got {offset}")
        if upload.received + len(data) > upload.record.size:
            await self._abort(client, transfer_id, upload)
            raise TransferFailed(transfer_id, "more data than the offered size", code=413)
        await self._run(_append, upload.handle, upload.digest, data)
        upload.received += len(data)
        if upload.received < upload.record.size:
            return None
        return await self._finish(client, transfer_id, upload)

    async def finish_empty(self, client, transfer_id: str):
        """Complete a zero-byte offer right away."""
        upload = self._uploads[(client, transfer_id)]
        return await self._finish(client, transfer_id, upload)

    async def cancel(self, client, transfer_id: str) -> None:
        upload = self._uploads.get((client, transfer_id))
        if upload is None:
            raise TransferFailed(transfer_id, "no such transfer", code=404)
        await self._abort(client, transfer_id, upload)

    async def _finish(self, client, transfer_id: str, upload: _Upload):
        del self._uploads[(client, transfer_id)]
        record = upload.record
        try:
            await self._run(upload.handle.close)
            if upload.digest.hexdigest() != record.sha256:
                raise TransferFailed(transfer_id, "SHA-256 mismatch: file discarded")
            try:
                await self.storage.put_file(self.storage_key(record), upload.spool)
            except WeCompanyError as error:
                raise TransferFailed(transfer_id, f"{error.message} (file discarded)", code=error.code) from None
        except BaseException:
            await self._tidy("discarding an upload", lambda: self._run(_unlink, upload.spool),
                             lambda: self.store.delete_file(record.id))
            raise
        finally:
            self._spooling.discard(upload.spool)
        try:
            await self.store.complete_file(record.id)
        except BaseException:
            await self._tidy("discarding an upload", lambda: self.storage.delete(self.storage_key(record)),
                             lambda: self.store.delete_file(record.id))
            raise
        record = attrs.evolve(record, status="complete")
        if self.media is not None:
            # The transfer is done either way; an item that could not be
            # added only leaves the file out of the media lists.
            await self._tidy("adding a transferred file to the media store",
                             lambda: self.media.add_transfer(record, self.storage_key(record)))
        target = self.registry.chat_client(str(record.recipient_id))
        if target is not None:
            self._enqueue(target, record, 0)
        return record, target is not None

    async def _abort(self, client, transfer_id: str, upload: _Upload) -> None:
        self._uploads.pop((client, transfer_id), None)
        try:
            await self._run(_discard, upload.handle, upload.spool)
        finally:
            self._spooling.discard(upload.spool)
        await self.store.delete_file(upload.record.id)

    async def _tidy(self, what: str, *steps) -> None:
        """Run every step (``() -> awaitable``) of a clean-up; what fails is logged, not raised over the cause."""
        for step in steps:
            try:
                await step()
            except Exception:
                self.log.failure("{what} failed", what=what)

    async def remove_interrupted(self, started_at: float) -> int:
        """
        At start-up: uploads left unfinished by an earlier run (it stopped or
        crashed mid-transfer) can never complete; remove their rows, their
        spool files and whatever of them reached the storage. Uploads begun
        since ``started_at`` are not touched. -> how many.
        """
        prefix = self._transfers(self.node) if self.node is not None else None
        stale = await self._remove_unfinished(started_at, prefix)
        leftovers = await self._run(_list_dir, self.spool_dir)
        await self._run(_unlink_all, [path for path in leftovers if path not in self._spooling])
        if stale:
            self.log.info("removed {count} uploads interrupted by an earlier stop", count=stale)
        return stale

    async def remove_uploads_of(self, node: str) -> int:
        """Node ``node`` of the cluster died: its unfinished uploads can never complete. -> how many."""
        return await self._remove_unfinished(MAX_TIME, self._transfers(node))  # whenever begun

    async def _remove_unfinished(self, before: float, prefix: str | None) -> int:
        stale = await self.store.delete_incomplete_files(before, prefix)
        for record in stale:
            # Stored, but not yet recorded complete when the run ended.
            await self._tidy("removing an interrupted upload",
                             lambda record=record: self.storage.delete(self.storage_key(record)))
        return len(stale)

    @staticmethod
    def _transfers(node: str | None) -> str:
        return f"transfers/{node}/" if node is not None else "transfers/"

    # -- delivering to the recipient ----------------------------------------------
    # -- ISessionListener -------------------------------------------------------------
    def session_opened(self, client) -> None:
        """A desktop client logged in: files waiting for the user start to flow."""
        if client.kind == "tcp" and client.identity.account_id is not None:
            d = Deferred.fromCoroutine(self.deliver_pending(client))
            d.addErrback(lambda f: self.log.failure("delivering waiting files failed", f))

    async def deliver_pending(self, client) -> None:
        """After login: queue every complete file addressed to this user and not yet delivered."""
        self._enqueue_all(client, [(record, 0) for record in
                                   await self.store.undelivered_files_for(client.identity.account_id)])

    async def fetch(self, client, file_id: int, offset: int) -> None:
        """Send (the rest of) a file to its recipient or owner again."""
        record = await self.store.get_file(file_id)
        me = client.identity.account_id
        if record is None or record.status != "complete" or me not in (record.owner_id, record.recipient_id):
            raise NotFound("no such file")
        if offset > record.size:
            raise InvalidInput("offset past the end of the file")
        self._enqueue(client, record, offset)

    def _enqueue(self, client, record, offset: int) -> None:
        self._enqueue_all(client, [(record, offset)])

    def _enqueue_all(self, client, files) -> None:
        """Queue ``(record, offset)`` s for ``client``, all before the first is sent."""
        if not files:
            return
        delivery = self._deliveries.get(client)
        sending = delivery is not None
        if not sending:
            delivery = self._deliveries[client] = _Delivery()
        for record, offset in files:
            if not any(r.id == record.id for r, _ in delivery.queue):
                delivery.queue.append((record, offset))
        if sending:
            return
        d = Deferred.fromCoroutine(self._deliver(client, delivery))
        d.addErrback(lambda f: self.log.failure("delivering files to {user} failed", f,
                                                user=client.identity.user_id))

    async def _deliver(self, client, delivery: _Delivery) -> None:
        try:
            while delivery.queue and not delivery.gone:
                record, offset = delivery.queue[0]
                try:
                    sent = await self._send(client, delivery, record, offset)
                except WeCompanyError as error:
                    # The storage is down, or lost the bytes: the client is
                    # told, and may fetch the file again (from where it got
                    # to); it stays undelivered, so the next login tries too.
                    self.log.warn("file {file_id} not delivered to {user}: {error}", file_id=record.id,
                                  user=client.identity.user_id, error=error.message)
                    client.send_event(FileUnavailable(record.id, error.wire_code,
                                                      f"file {record.id}: {error.message}"))
                    if isinstance(error, NotFound):
                        delivery.queue.popleft()  # only this file is gone
                        continue
                    return  # the others would fail the same way
                if not sent:
                    return
                if record.recipient_id == client.identity.account_id and not record.delivered:
                    await self.store.mark_file_delivered(record.id)
                delivery.queue.popleft()
        finally:
            if self._deliveries.get(client) is delivery:
                del self._deliveries[client]

    async def _send(self, client, delivery: _Delivery, record, offset: int) -> bool:
        """Stream one file from ``offset`` -> False if the client went away meanwhile."""
        key = self.storage_key(record)
        stored = await self.storage.size(key)
        if stored is None:
            raise KeyMissing("the file is missing from the file storage")
        if stored != record.size:
            raise KeyMissing(f"the file storage holds {stored} of its {record.size} bytes")
        if delivery.gone:
            return False
        sender = await self.store.get_user(record.owner_id)
        client.send_event(FileOffered(record.id, str(record.owner_id), sender.username if sender else "",
                                      record.name, record.size, bytes.fromhex(record.sha256)))
        block, block_offset = b"", offset
        while offset < record.size:
            if getattr(client, "write_blocked", False):
                delivery.waiter = Deferred()
                await delivery.waiter
            if delivery.gone:
                return False
            start = offset - block_offset
            if start >= len(block):
                block, block_offset, start = await self.storage.read(key, offset, self.read_size), offset, 0
                if not block:
                    raise KeyMissing("the file in the file storage is shorter than recorded")
                if delivery.gone:
                    return False
            data = block[start:start + self.chunk_size]
            client.send_event(FileChunk(record.id, offset, data))
            offset += len(data)
        client.send_event(FileDone(record.id))
        return True

    def writable(self, client) -> None:
        delivery = self._deliveries.get(client)
        if delivery is not None and delivery.waiter is not None:
            waiter, delivery.waiter = delivery.waiter, None
            waiter.callback(None)

    def session_closed(self, client) -> None:
        """Abort the client's uploads (partial files are removed) and stop its deliveries."""
        for key in [k for k in self._uploads if k[0] is client]:
            upload = self._uploads[key]
            d = Deferred.fromCoroutine(self._abort(client, key[1], upload))
            d.addErrback(lambda f: self.log.failure("removing a partial upload failed", f))
        delivery = self._deliveries.pop(client, None)
        if delivery is not None:
            delivery.gone = True
            if delivery.waiter is not None:
                waiter, delivery.waiter = delivery.waiter, None
                waiter.callback(None)

    @property
    def upload_count(self) -> int:
        return len(self._uploads)


# Disk work, run in a thread.

def _open_new(path: str):
    make_private_dir(os.path.dirname(path))
    return open_private(path, "xb")


def _append(handle, digest, data: bytes) -> None:
    handle.write(data)
    digest.update(data)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _discard(handle, path: str) -> None:
    handle.close()
    _unlink(path)


def _list_dir(directory: str) -> list[str]:
    """The files (not the directories: the recordings' spool is one) directly in ``directory``."""
    try:
        with os.scandir(directory) as entries:
            return [entry.path for entry in entries if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _unlink_all(paths) -> None:
    for path in paths:
        _unlink(path)


# FILE_DATA adds 18 bytes of header to each chunk; leave room for it.
FILE_DATA_OVERHEAD = 64


def file_chunk_size(max_frame: int) -> int:
    """The chunk size that fits the frame limit (at most 64 KiB)."""
    return max(256, min(64 << 10, max_frame - FILE_DATA_OVERHEAD))
