"""
The media store of the REST media API: uploads, processing results and the
files sent with the TCP protocol's FILE transfer, as one kind of item.

An item's bytes are in the file storage (:mod:`wecompany.storage`) under a
key chosen here (``media/uploads/<xx>/<random>``; a transfer keeps the key
:class:`~wecompany.domain.files.FileService` gave it), never under anything
a client chose. What an item is comes from its bytes, never from the
client: the content type is sniffed from the first bytes, and audio, video
and images are probed with PyAV for their duration and dimensions, in the
disk thread pool.

Who may do what: the uploader everything; a user the item is shared with
(the recipient of a transfer) may read it; for a meeting's item, the
meeting's participants may read it and its host and moderators may delete
it. Everyone else is told there is no such item (404, 3002), so an id says
nothing about what exists.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import attrs
from twisted.logger import Logger

from wecompany.domain.files import safe_name
from wecompany.errors import (
    Forbidden,
    InvalidInput,
    MediaNotFound,
    MeetingNotFound,
    QuotaExceeded,
    TooLarge,
    Unauthenticated,
)
from wecompany.media.process import probe

#: Where uploaded items and processing results are in the file storage.
UPLOAD_KEYS = "media/uploads/"
#: Bytes of a multipart body that are not the file (boundaries, part headers, small fields).
FORM_SLACK = 64 << 10
#: How much of a file the content type is sniffed from.
SNIFF_BYTES = 8192
MAX_FILE_TYPE = 32
FILE_KINDS = ("image", "audio", "video", "document", "other")
MODERATING_ROLES = ("host", "moderator")

_DOCUMENT_TYPES = frozenset({
    "application/pdf", "application/zip", "application/msword", "application/rtf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text", "text/plain",
})


@attrs.frozen
class Inspection:
    """What a file's bytes say it is."""

    content_type: str
    kind: str  # one of FILE_KINDS
    duration_ms: int | None = None
    width: int | None = None
    height: int | None = None


# -- looking at bytes (blocking: run in the disk thread pool) ----------------------

def sniff(head: bytes) -> tuple[str, str]:
    """The content type and kind of a file that starts with ``head`` -> (content_type, kind)."""
    import filetype

    guess = filetype.guess(head) if head else None
    if guess is not None:
        content_type = guess.mime
        if content_type == "audio/x-wav":
            content_type = "audio/wav"
    elif _looks_like_text(head):
        content_type = "text/plain"
    else:
        content_type = "application/octet-stream"
    major = content_type.split("/", 1)[0]
    if major in ("image", "audio", "video"):
        return content_type, major
    if content_type in _DOCUMENT_TYPES:
        return content_type, "document"
    return content_type, "other"


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut at the end of the head is still text.
        return error.start >= len(head) - 3
    return True


def inspect(path: str) -> Inspection:
    """Sniff and (for audio, video and images) probe the file at ``path``."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    content_type, kind = sniff(head)
    if kind not in ("image", "audio", "video"):
        return Inspection(content_type, kind)
    probed = probe(path)  # the processing engine's prober (PyAV): one view of what a file is
    duration, width, height = probed["duration_ms"], probed["width"], probed["height"]
    if kind == "video" and probed["kind"] == "audio":
        # A WebM or MP4 with sound only (what a browser records from a microphone).
        kind, content_type = "audio", "audio/" + content_type.split("/", 1)[1]
    if kind == "image":
        duration = None  # a still image lasts no time (PyAV reports one frame's)
    return Inspection(content_type, kind, duration, width, height)


def hash_file(path: str, block: int = 1 << 20) -> tuple[int, str]:
    """-> (size, SHA-256 hex) of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while data := fh.read(block):
            digest.update(data)
            size += len(data)
    return size, digest.hexdigest()


def check_file_type(value: str | None) -> str | None:
    """A client's ``file_type``: a short word (letters, digits, ``_``, ``-``), or None when not given."""
    if value is None or value == "":
        return None
    value = value.strip().lower()
    if not 0 < len(value) <= MAX_FILE_TYPE or not all(c.isascii() and (c.isalnum() or c in "_-") for c in value):
        raise InvalidInput(f"file_type must be 1-{MAX_FILE_TYPE} letters, digits, '_' or '-'")
    return value


def upload_name(filename: str | None) -> str:
    """The name an upload is kept under: its base name, without paths or control characters."""
    try:
        return safe_name(filename or "")
    except InvalidInput:
        return "upload"


class MediaService:
    """
    :param store: the :class:`~wecompany.store.interface.IMediaStore` (and
        the meeting store, for participants).
    :param storage: the :class:`~wecompany.storage.IFileStorage`.
    :param run_in_thread: the disk thread pool's runner.
    :param spool_dir: this node's directory for uploads while they arrive.
    :param max_upload: bytes one upload may have (``--max-upload``).
    :param quota: bytes of media one user may have (``--media-quota``).
    """

    log = Logger()

    def __init__(self, store, storage, run_in_thread, clock, spool_dir: str, max_upload: int, quota: int) -> None:
        self.store = store
        self.storage = storage
        self._run = run_in_thread
        self.clock = clock
        self.spool_dir = os.path.abspath(spool_dir)
        self.max_upload = max_upload
        self.quota = quota

    # -- uploads ----------------------------------------------------------------
    async def admit(self, user_id: int, declared_length: int | None) -> None:
        """
        Before an upload's body is read: refuse it if its declared length
        cannot fit the user's quota (the size is checked again once known).
        """
        if declared_length is None:
            return
        used = await self.store.media_usage(user_id)
        if used + max(0, declared_length - FORM_SLACK) > self.quota:
            raise QuotaExceeded(f"media quota exceeded: {used} of {self.quota} bytes are used, and this upload "
                                f"has {declared_length}")

    async def add_upload(self, user_id: int, spooled, filename: str | None, meeting_id: int | None = None,
                         file_type: str | None = None):
        """A complete spool file (:class:`~wecompany.web.spool.Spooled`) becomes an item -> MediaRecord."""
        if meeting_id is not None:
            await self.require_participant(meeting_id, user_id)
        info = await self._run(inspect, spooled.path)
        return await self._add(user_id, spooled.path, spooled.size, spooled.sha256, upload_name(filename), info,
                               meeting_id=meeting_id, file_type=file_type or info.kind, quota=self.quota)

    async def add_result(self, owner_id: int, source_media, local_path: str, filename: str,
                         content_type: str | None = None):
        """
        A processing result (a local file, moved into the storage) becomes a
        new item of ``owner_id``, of the same meeting as ``source_media``
        (a MediaRecord), within the owner's quota -> MediaRecord. The local
        file is gone on success; on failure it is left to the caller.
        """
        size, sha256 = await self._run(hash_file, local_path)
        info = await self._run(inspect, local_path)
        if content_type is not None:
            info = attrs.evolve(info, content_type=content_type)
        return await self._add(owner_id, local_path, size, sha256, upload_name(filename), info,
                               meeting_id=source_media.meeting_id, file_type=info.kind,
                               source_id=source_media.id, quota=self.quota)

    async def add_transfer(self, record, storage_key: str):
        """
        A complete TCP file transfer (a FileRecord, its bytes already at
        ``storage_key``) becomes an item of its sender, shared with its
        recipient -> MediaRecord.
        """
        path_of = getattr(self.storage, "path_of", None)
        if path_of is not None:  # a directory: probed like an upload
            info = await self._run(inspect, path_of(storage_key))
        else:  # object storage: sniffed from the first bytes, not fetched whole to be probed
            info = Inspection(*sniff(await self.storage.read(storage_key, 0, SNIFF_BYTES)))
        shared = [record.recipient_id] if record.recipient_id is not None else []
        return await self.store.add_media(record.owner_id, upload_name(record.name), info.content_type,
                                          record.size, record.sha256, info.kind, storage_key,
                                          self.clock.seconds(), duration_ms=info.duration_ms, width=info.width,
                                          height=info.height, shared_with=shared)

    async def _add(self, owner_id: int, path: str, size: int, sha256: str, filename: str, info: Inspection, *,
                   meeting_id, file_type, quota, source_id=None):
        key = f"{UPLOAD_KEYS}{secrets.token_hex(1)}/{secrets.token_hex(12)}"
        # Bytes first, then the row: a crash between leaves bytes no row
        # names (invisible), never a row that names no bytes.
        await self.storage.put_file(key, path)
        try:
            return await self.store.add_media(owner_id, filename, info.content_type, size, sha256, file_type, key,
                                              self.clock.seconds(), meeting_id=meeting_id,
                                              duration_ms=info.duration_ms, width=info.width, height=info.height,
                                              source_id=source_id, quota=quota)
        except BaseException:
            try:
                await self.storage.delete(key)
            except Exception:
                self.log.failure("removing the bytes of a refused upload ({key}) failed", key=key)
            raise

    # -- who may do what ---------------------------------------------------------
    async def require_participant(self, meeting_id: int, user_id: int):
        """The user's participant row of the meeting; MeetingNotFound (404) when there is none."""
        participant = await self.store.get_participant(meeting_id, user_id)
        if participant is None:
            raise MeetingNotFound()  # also for a meeting the user is not in: nothing is told
        return participant

    async def readable(self, user_id: int, media_id: int):
        """The item, if ``user_id`` may read it; else :class:`MediaNotFound`."""
        record = await self.store.get_media(media_id)
        if record is None:
            raise MediaNotFound()
        if record.uploader_id == user_id:
            return record
        if record.meeting_id is not None and await self.store.get_participant(record.meeting_id, user_id):
            return record
        if await self.store.media_shared_with(media_id, user_id):
            return record
        raise MediaNotFound()

    async def read_for_ai(self, user, media_id: int, limit: int) -> bytes:
        """
        The bytes of an item ``user`` may read, for an AI request that names
        it (``media_id``), if it has at most ``limit`` bytes.
        """
        if user is None:  # the token-less AI aliases: stored media are for their readers only
            raise Unauthenticated("media_id needs a bearer token")
        record = await self.readable(user.id, media_id)
        if record.size > limit:
            raise TooLarge(f"media item {media_id} has {record.size} bytes; an AI request takes at most {limit}")
        return b"".join([block async for block in self.blocks(record)])

    async def blocks(self, record, size: int = 1 << 20):
        """An item's bytes from the file storage, ``size`` at a time, in order."""
        offset = 0
        while offset < record.size:
            block = await self.storage.read(record.storage_key, offset, min(size, record.size - offset))
            if not block:
                return
            offset += len(block)
            yield block

    async def delete(self, user_id: int, media_id: int):
        """
        Remove an item and its bytes: its uploader, or a host or moderator of
        its meeting. Someone else who may read it is Forbidden (403); anyone
        else is told there is no such item. -> the removed MediaRecord.
        """
        record = await self.readable(user_id, media_id)
        if record.uploader_id != user_id:
            participant = None
            if record.meeting_id is not None:
                participant = await self.store.get_participant(record.meeting_id, user_id)
            if participant is None or participant.role not in MODERATING_ROLES:
                raise Forbidden("only the uploader or the meeting's host and moderators may delete this")
        removed = await self.store.delete_media(media_id)
        if removed is None:
            raise MediaNotFound()  # deleted meanwhile
        await self.storage.delete(removed.storage_key)
        return removed

    async def list_for(self, user_id: int, offset: int, limit: int, meeting_id: int | None = None):
        """
        -> (total, [MediaRecord]), newest first: a meeting's items (for its
        participants), or else the user's own and those shared with them.
        """
        if meeting_id is not None:
            await self.require_participant(meeting_id, user_id)
            return await self.store.list_media(offset, limit, meeting_id=meeting_id)
        return await self.store.list_media(offset, limit, user_id=user_id)
