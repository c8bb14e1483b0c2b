"""
One-to-one file transfer through the server's media store.

The sender offers a file (recipient, name, size, SHA-256) and sends it in
order, in chunks that fit the frame limit. The server writes and hashes the
chunks off the reactor thread, checks the SHA-256 at the end, records the file
in the media store (the same store the REST media API serves) and then
streams it to the recipient: at once if online, otherwise right after its next
login. Streaming waits whenever the recipient's connection applies
back-pressure, so a slow recipient costs no memory.
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

from wecompany.domain.events import FileChunk, FileDone, FileOffered
from wecompany.domain.interfaces import ISessionListener
from wecompany.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge, WeCompanyError
from wecompany.privatefs import make_private_dir, open_private

MAX_TRANSFER_ID = 64
MAX_NAME = 255


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
    :param media_dir: where files live (``<data dir>/media``); paths in the
        store are relative to it and always chosen here.
    :param run_in_thread: ``f(callable, *args) -> Deferred`` for disk work.
    """

    log = Logger()

    def __init__(self, store, directory, registry, media_dir: str, run_in_thread, clock,
                 max_file_size: int = 256 << 20, chunk_size: int = 64 << 10,
                 max_uploads_per_client: int = 4) -> None:
        self.store = store
        self.directory = directory
        self.registry = registry
        self.media_dir = os.path.abspath(media_dir)
        self._run = run_in_thread
        self.clock = clock
        self.max_file_size = max_file_size
        self.chunk_size = chunk_size
        self.max_uploads = max_uploads_per_client
        self._uploads: dict[tuple[object, str], _Upload] = {}
        self._deliveries: dict[object, _Delivery] = {}

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
        rel = os.path.join("transfers", secrets.token_hex(1), secrets.token_hex(12))
        handle = await self._run(_open_new, os.path.join(self.media_dir, rel))
        try:
            record = await self.store.create_file(owner, name, size, sha256.hex(), rel,
                                                  self.clock.seconds(), recipient_id=recipient.account_id)
        except BaseException:
            await self._run(_discard, handle, os.path.join(self.media_dir, rel))
            raise
        upload = _Upload(record, handle, hashlib.sha256())
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
        await self._run(upload.handle.close)
        if upload.digest.hexdigest() != record.sha256:
            await self._remove(record)
            raise TransferFailed(transfer_id, "SHA-256 mismatch: file discarded")
        await self.store.complete_file(record.id)
        record = attrs.evolve(record, status="complete")
        target = self.registry.chat_client(str(record.recipient_id))
        if target is not None:
            self._enqueue(target, record, 0)
        return record, target is not None

    async def _abort(self, client, transfer_id: str, upload: _Upload) -> None:
        self._uploads.pop((client, transfer_id), None)
        await self._run(upload.handle.close)
        await self._remove(upload.record)

    async def _remove(self, record) -> None:
        await self._run(_unlink, os.path.join(self.media_dir, record.path))
        await self.store.delete_file(record.id)

    async def remove_interrupted(self, started_at: float) -> int:
        """
        At start-up: uploads left unfinished by an earlier run (it stopped or
        crashed mid-transfer) can never complete; remove their rows and bytes.
        Uploads begun since ``started_at`` are not touched. -> how many.
        """
        stale = await self.store.delete_incomplete_files(started_at)
        for record in stale:
            await self._run(_unlink, os.path.join(self.media_dir, record.path))
        if stale:
            self.log.info("removed {count} uploads interrupted by an earlier stop", count=len(stale))
        return len(stale)

    # -- delivering to the recipient ----------------------------------------------
    # -- ISessionListener -------------------------------------------------------------
    def session_opened(self, client) -> None:
        """A desktop client logged in: files waiting for the user start to flow."""
        if client.kind == "tcp" and client.identity.account_id is not None:
            d = Deferred.fromCoroutine(self.deliver_pending(client))
            d.addErrback(lambda f: self.log.failure("delivering waiting files failed", f))

    async def deliver_pending(self, client) -> None:
        """After login: queue every complete file addressed to this user and not yet delivered."""
        for record in await self.store.undelivered_files_for(client.identity.account_id):
            self._enqueue(client, record, 0)

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
        delivery = self._deliveries.get(client)
        if delivery is not None:
            if any(r.id == record.id for r, _ in delivery.queue):
                return
            delivery.queue.append((record, offset))
            return
        delivery = self._deliveries[client] = _Delivery()
        delivery.queue.append((record, offset))
        d = Deferred.fromCoroutine(self._deliver(client, delivery))
        d.addErrback(lambda f: self.log.failure("delivering files to {user} failed", f,
                                                user=client.identity.user_id))

    async def _deliver(self, client, delivery: _Delivery) -> None:
        try:
            while delivery.queue and not delivery.gone:
                record, offset = delivery.queue[0]
                sender = await self.store.get_user(record.owner_id)
                client.send_event(FileOffered(record.id, str(record.owner_id),
                                              sender.username if sender else "", record.name,
                                              record.size, bytes.fromhex(record.sha256)))
                path = os.path.join(self.media_dir, record.path)
                while offset < record.size:
                    if getattr(client, "write_blocked", False):
                        delivery.waiter = Deferred()
                        await delivery.waiter
                    if delivery.gone:
                        return
                    data = await self._run(_read, path, offset, self.chunk_size)
                    if not data:
                        raise OSError(f"file {record.id} is shorter than recorded")
                    if delivery.gone:
                        return
                    client.send_event(FileChunk(record.id, offset, data))
                    offset += len(data)
                client.send_event(FileDone(record.id))
                if record.recipient_id == client.identity.account_id and not record.delivered:
                    await self.store.mark_file_delivered(record.id)
                delivery.queue.popleft()
        finally:
            if self._deliveries.get(client) is delivery:
                del self._deliveries[client]

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


def _read(path: str, offset: int, n: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _discard(handle, path: str) -> None:
    handle.close()
    _unlink(path)


# FILE_DATA adds 18 bytes of header to each chunk; leave room for it.
FILE_DATA_OVERHEAD = 64


def file_chunk_size(max_frame: int) -> int:
    """The chunk size that fits the frame limit (at most 64 KiB)."""
    return max(256, min(64 << 10, max_frame - FILE_DATA_OVERHEAD))
