"""
Meeting recordings: the room's forwarded tracks remuxed, without
transcoding, into one Matroska file per recording, which becomes a media
item of the media store when it ends.

A host or moderator starts one (``POST /meetings/:id/recording/start``)
while the meeting is live, its settings have ``enable_recording`` and its
SFU room exists; a meeting has one recording at a time. The media engine
writes the file under ``<data dir>/spool/recordings`` (0700), named by the
recording id, with a small JSON sidecar saying whose it is; when it stops
(``/stop``, the meeting's end, the daemon's stop, or the engine reporting a
failure) the file is moved into the file storage as an item of whoever
started it: ``file_type`` ``recording``, the meeting's, shared with the
participants whose tracks it holds. Downloading (with ``Range``) and
deleting (the host and moderators) are the media API's.

Nothing but media items is stored: what a recording was is read back from
its item. The id, and how it ended, are in the storage key the server chose
(``media/recordings/<recording id>-<status>.mkv``), the title is the file
name, the end is the item's ``created_at`` and the start that minus the
duration; the participants are the item's read grants, plus who started
it. The recording id begins with the meeting id (``<meeting>-<random>``),
so a recording named only by its id is found among its meeting's items.
What is recording now is in memory only.

After a crash the recordings directory may hold files the engine never
finished. At start (:meth:`MeetingRecordings.recover`), each one PyAV can
read packets from (Matroska cut short is readable up to its last complete
cluster) becomes an item marked ``recovered``, with the tracks that joined
it late merged in from their own files; the others, and empty ones, are
removed, since nothing could play them.
"""

from __future__ import annotations

import json
import os
import secrets
from collections import OrderedDict

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wecompany.domain.interfaces import IMeetingListener
from wecompany.domain.media import MODERATING_ROLES, hash_file, inspect, upload_name
from wecompany.domain.meetings import CANCELLED, ENDED, HOST, ONGOING
from wecompany.errors import (
    Conflict, Forbidden, InvalidInput, MeetingEnded, MeetingNotFound, NotFound, Unavailable, WeCompanyError,
)
from wecompany.privatefs import make_private_dir, open_private

#: The media items' ``file_type``.
FILE_TYPE = "recording"
#: Where recordings are in the file storage.
STORAGE_PREFIX = "media/recordings/"
EXTENSION = ".mkv"
# Statuses
STARTING, RECORDING, STOPPING = "starting", "recording", "stopping"
COMPLETED, FAILED, RECOVERED = "completed", "failed", "recovered"
STORED_STATUSES = (COMPLETED, FAILED, RECOVERED)
MAX_TITLE = 100
#: Finished recordings remembered in memory (those that left no item are only known here).
KEEP_FINISHED = 256
#: A meeting's items looked through when a recording is searched or listed (there is no file_type index).
MAX_SCAN = 10_000
_SCAN_PAGE = 200


@attrs.define(eq=False)
class Recording:
    """One recording: in progress, or as read back from its item."""

    recording_id: str
    meeting_id: int | None
    room_id: str | None
    started_by: int
    title: str
    started_at: float
    status: str = STARTING
    path: str | None = None  # the file the engine writes, while it is ours
    publishers: dict = attrs.Factory(dict)  # SFU peer id -> user id, of every track seen while recording
    ended_at: float | None = None
    duration: float | None = None
    size: int | None = None
    media_id: int | None = None
    participants: tuple = ()
    failure: str | None = None
    started: _Once | None = None  # the engine's start_recording
    finished: _Once | None = None  # the one finishing, shared by every stop asked for


def recording_meeting(recording_id) -> int:
    """The meeting id a recording id begins with; :class:`NotFound` for anything that is not one."""
    if isinstance(recording_id, str) and 0 < len(recording_id) <= 64:
        head, sep, tail = recording_id.partition("-")
        if sep and head.isascii() and head.isdigit() and tail.isascii() and tail.isalnum():
            return int(head)
    raise NotFound("recording not found")


def _parse_key(key: str) -> tuple[str, str] | None:
    """``media/recordings/<id>-<status>.mkv`` -> (id, status), else None."""
    if not key.startswith(STORAGE_PREFIX) or not key.endswith(EXTENSION):
        return None
    recording_id, sep, status = key[len(STORAGE_PREFIX):-len(EXTENSION)].rpartition("-")
    if not sep or status not in STORED_STATUSES:
        return None
    return recording_id, status


def check_title(title) -> str | None:
    if title is None:
        return None
    if not isinstance(title, str):
        raise InvalidInput("title must be a string")
    title = title.strip()
    if len(title) > MAX_TITLE:
        raise InvalidInput(f"title must be at most {MAX_TITLE} characters")
    return title or None


# -- blocking file work (the disk thread pool) -----------------------------------------

def readable_duration(path: str) -> float | None:
    """
    Seconds of media PyAV can demux from ``path`` (no decoding), or None
    when it cannot open it or finds no packet: a file cut short by a crash
    is read up to its last complete block.
    """
    import av

    try:
        container = av.open(path)
    except Exception:
        return None
    try:
        first = last = None
        streams = [s for s in container.streams if s.type in ("audio", "video")]
        if not streams:
            return None
        try:
            for packet in container.demux(streams):
                if packet.pts is None or packet.time_base is None:
                    continue
                t = float(packet.pts * packet.time_base)
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
        except Exception:  # the cut: what came before it is what there is
            pass
        if last is None:
            return None
        return max(0.0, last - first)
    finally:
        container.close()


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _write_sidecar(path: str, data: dict) -> None:
    """Replace the JSON sidecar at ``path`` (written aside, then renamed: never half a file)."""
    temporary = path + ".new"
    _remove(temporary)
    with open_private(temporary, "xb") as fh:
        fh.write(json.dumps(data).encode())
    os.replace(temporary, path)


#: The files of tracks that joined a recording late (the media worker merges them at stop).
PART = EXTENSION + ".part-"


def _merge_parts(path: str, parts: list[str]) -> None:
    """
    Repair a recording a crash left in pieces: the tracks that joined late
    were written to files of their own (``<id>.mkv.part-N.mkv``), which the
    media worker merges into the recording at its stop. Merged here instead
    (remuxed, as the worker does), keeping what PyAV can read of each; the
    pieces are removed either way.
    """
    from wecompany.sfu.recording import merge

    readable = [part for part in parts if readable_duration(part) is not None]
    try:
        if readable and readable_duration(path) is not None:
            merge([path, *readable], path)
    finally:
        _remove(*parts)


def _leftovers(directory: str) -> list[tuple[str, dict | None, list[str]]]:
    """
    The media files in ``directory``, their sidecars and their late tracks'
    pieces; sidecars and pieces without a file are removed.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    parts: dict[str, list[str]] = {}
    for name in sorted(names):
        if PART in name and name.endswith(EXTENSION):
            parts.setdefault(os.path.join(directory, name.split(PART, 1)[0] + EXTENSION), []).append(
                os.path.join(directory, name))
    for name in sorted(names):
        path = os.path.join(directory, name)
        if PART in name:
            if path.split(PART, 1)[0] + EXTENSION not in {p for p in parts if os.path.exists(p)}:
                _remove(path)
            continue
        if name.endswith(EXTENSION):
            meta = None
            try:
                with open(path[:-len(EXTENSION)] + ".json", "rb") as fh:
                    meta = json.loads(fh.read())
            except (OSError, ValueError):
                pass
            found.append((path, meta if isinstance(meta, dict) else None, parts.get(path, [])))
        elif name.endswith(".json") or name.endswith(".new"):
            if not os.path.exists(path.rsplit(".", 1)[0] + EXTENSION) or name.endswith(".new"):
                _remove(path)
    return found


@implementer(IMeetingListener)
class MeetingRecordings:
    """
    The recordings of the meetings' SFU rooms.

    :param engine: the :class:`~wecompany.domain.interfaces.IMediaEngine`
        (``start_recording``, ``stop_recording``), or None without an SFU.
    :param sfu: the :class:`~wecompany.domain.sfu.SfuService` (its rooms and
        who publishes what), or None.
    :param store: the store (meetings and their participants; read only).
    :param media: the :class:`~wecompany.domain.media.MediaService` (its
        store and file storage keep the items).
    :param rooms: the :class:`~wecompany.domain.rooms.RoomService`: who is
        told over signaling.
    :param run_disk: the disk thread pool's runner.
    :param directory: where recordings are written (this node's disk).
    :param events: the :class:`SfuRecordingEvents` the SFU reports to.
    """

    log = Logger()

    def __init__(self, engine, sfu, store, media, rooms, clock, run_disk, directory: str,
                 events=None) -> None:
        self.engine = engine
        self.sfu = sfu
        self.store = store
        self.media = media
        self.rooms = rooms
        self.clock = clock
        self._run = run_disk
        self.directory = os.path.abspath(directory)
        self.active: dict[int, Recording] = {}  # meeting id -> its recording in progress
        self._by_id: dict[str, Recording] = {}  # in progress
        self._finished: OrderedDict[str, Recording] = OrderedDict()
        self._stopping = False
        if events is not None:
            events.subscribe(self)

    # -- start and stop ---------------------------------------------------------------
    async def start(self, user, meeting_id: int, title: str | None = None) -> Recording:
        """Start recording the meeting's SFU room (its host or a moderator) -> the Recording."""
        title = check_title(title)
        meeting = await self._meeting(meeting_id)
        await self._require_manager(user, meeting)
        if meeting.status in (ENDED, CANCELLED):
            raise MeetingEnded(f"meeting has {meeting.status}" if meeting.status == ENDED else "meeting was cancelled")
        if not meeting.settings.get("enable_recording", False):
            raise Forbidden("recording is disabled in this meeting (settings.enable_recording)")
        if self.engine is None or self.sfu is None:
            raise Unavailable("this server has no SFU (--no-sfu): nothing can be recorded")
        if self._stopping:
            raise Unavailable("the server is stopping")
        room_ids = self.sfu.rooms_of_meeting(meeting.id)
        if meeting.status != ONGOING or not room_ids:
            raise Conflict("nobody is sending media in this meeting yet")
        if meeting.id in self.active:
            raise Conflict("this meeting is already being recorded")
        now = self.clock.seconds()
        recording_id = f"{meeting.id}-{secrets.token_hex(8)}"
        room_id = room_ids[0]
        recording = Recording(recording_id, meeting.id, room_id, user.id,
                              title or f"{meeting.title} {_stamp(now)}", now,
                              path=os.path.join(self.directory, recording_id + EXTENSION))
        # Reserved before anything is awaited: a second start meanwhile is refused.
        self.active[meeting.id] = self._by_id[recording_id] = recording
        for track in self.sfu.published_tracks(room_id):
            recording.publishers[track.peer_id] = track.user_id
        recording.started = _Once(Deferred.fromCoroutine(self._start_in_engine(recording)))
        try:
            await recording.started.wait()
        except BaseException:
            self._forget(recording)
            raise
        self._tell(recording, "started")
        self.log.info("recording {recording_id} of meeting {meeting_id} started by user {user_id}",
                      recording_id=recording_id, meeting_id=meeting.id, user_id=user.id)
        return recording

    async def _start_in_engine(self, recording: Recording) -> None:
        await self._run(make_private_dir, self.directory)
        await self._run(_write_sidecar, self._sidecar(recording), self._sidecar_data(recording))
        try:
            await self.engine.start_recording(recording.room_id, recording.recording_id, recording.path)
        except BaseException:
            await self._run(_remove, recording.path, self._sidecar(recording))
            raise
        if recording.status == STARTING:
            recording.status = RECORDING

    async def stop(self, user, meeting_id: int | None = None, recording_id: str | None = None) -> Recording:
        """
        Stop the meeting's recording (or the one named ``recording_id``):
        its host or a moderator. -> the Recording, stored (its item made).
        """
        if recording_id is not None:
            recording = self._by_id.get(recording_id)
            if recording is None:
                found = await self.find(user, recording_id)  # 404, or it is over already
                raise Conflict(f"the recording has {found.status}" if found.status != RECORDING
                               else "the recording is not on this server")
            meeting_id = recording.meeting_id
        meeting = await self._meeting(meeting_id)
        await self._require_manager(user, meeting)
        recording = self.active.get(meeting.id)
        if recording is None or (recording_id is not None and recording.recording_id != recording_id):
            raise Conflict("this meeting is not being recorded")
        return await self._finish(recording, user.id)

    def _finish(self, recording: Recording, stopped_by: int | None, failure: str | None = None) -> Deferred:
        """
        Stop the engine's recording and store what it wrote (once, however
        many ask) -> Deferred[Recording]; it fails only if the item could not
        be stored.
        """
        if recording.finished is None:
            d = Deferred.fromCoroutine(self._finish_now(recording, stopped_by, failure))
            recording.finished = _Once(d.addErrback(self._finish_failed, recording))
        return recording.finished.wait()

    async def _finish_now(self, recording: Recording, stopped_by, failure) -> Recording:
        if recording.started is not None:
            try:
                await recording.started.wait()
            except Exception:
                return recording  # never started: start() answered the error and forgot it
        recording.status = STOPPING
        result = {}
        try:
            result = await self.engine.stop_recording(recording.recording_id)
        except Exception as e:
            # The engine lost it (a worker gone): what reached the disk is what there is.
            if isinstance(e, WeCompanyError):
                self.log.warn("stopping recording {recording_id} failed: {why}", recording_id=recording.recording_id,
                              why=e.message)
            else:
                self.log.failure("stopping recording {recording_id} failed", recording_id=recording.recording_id)
            failure = failure or (e.message if isinstance(e, WeCompanyError) else "the media engine failed")
        recording.ended_at = self.clock.seconds()
        for track in (result or {}).get("tracks", ()):
            peer_id = track.get("peer_id") if isinstance(track, dict) else None
            if peer_id is not None and peer_id not in recording.publishers:
                user_id = self._user_of(recording.room_id, peer_id)
                if user_id is not None:
                    recording.publishers[peer_id] = user_id
        held = {track.get("peer_id") for track in (result or {}).get("tracks", ()) if isinstance(track, dict)}
        users = {user for peer, user in recording.publishers.items() if not held or peer in held}
        recording.participants = tuple(sorted(users | {recording.started_by}))
        recording.failure = failure
        await self._store(recording, FAILED if failure else COMPLETED, result.get("duration"))
        self._forget(recording)
        self._tell(recording, "stopped" if not failure else "failed", stopped_by)
        self.log.info("recording {recording_id} of meeting {meeting_id}: {status}, {size} bytes, item {media_id}",
                      recording_id=recording.recording_id, meeting_id=recording.meeting_id,
                      status=recording.status, size=recording.size, media_id=recording.media_id)
        return recording

    def _finish_failed(self, failure, recording: Recording):
        # Storing failed (the file storage, the database): the file stays in the
        # recordings directory and becomes an item at the next start (recover).
        self.log.failure("storing recording {recording_id} failed; its file is kept for the next start",
                         failure, recording_id=recording.recording_id)
        recording.status = FAILED
        recording.failure = recording.failure or "the recording could not be stored"
        self._forget(recording)
        return failure

    async def _store(self, recording: Recording, status: str, duration) -> None:
        """The file becomes the recording's item (or, empty, is removed)."""
        path = recording.path
        size = await self._run(_file_size, path)
        if size == 0:
            await self._run(_remove, path, self._sidecar(recording))
            recording.status, recording.size, recording.duration = FAILED, 0, 0.0
            recording.failure = recording.failure or "nothing was recorded"
            return
        if not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration < 0:
            duration = await self._run(readable_duration, path)
        recording.duration = float(duration) if duration is not None else None
        recording.status = status
        record = await self._add_item(recording, path, size)
        recording.media_id, recording.size = record.id, record.size
        await self._run(_remove, self._sidecar(recording))

    async def _add_item(self, recording: Recording, path: str, size: int):
        """Move the file into the file storage as the recording's item -> MediaRecord."""
        _, sha256 = await self._run(hash_file, path)
        info = await self._run(inspect, path)
        content_type = info.content_type if info.kind in ("audio", "video") else "video/x-matroska"
        key = f"{STORAGE_PREFIX}{recording.recording_id}-{recording.status}{EXTENSION}"
        duration_ms = round(recording.duration * 1000) if recording.duration is not None else info.duration_ms
        # Bytes first, then the row, as the media store does: a crash between
        # leaves bytes no row names (invisible), never a row without bytes.
        await self.media.storage.put_file(key, path)
        try:
            return await self._insert(recording, key, size, sha256, content_type, duration_ms, info)
        except BaseException:
            try:
                await self.media.storage.delete(key)
            except Exception:
                self.log.failure("removing the bytes of an unstored recording ({key}) failed", key=key)
            raise

    async def _insert(self, recording: Recording, key, size, sha256, content_type, duration_ms, info):
        store = self.store
        shared = [u for u in recording.participants if u != recording.started_by]
        ended = recording.ended_at if recording.ended_at is not None else self.clock.seconds()
        while True:
            try:
                # No quota: a recording is not refused at its end (it counts in its starter's usage).
                return await store.add_media(recording.started_by, upload_name(recording.title + EXTENSION),
                                             content_type, size, sha256, FILE_TYPE, key, ended,
                                             meeting_id=recording.meeting_id, duration_ms=duration_ms,
                                             width=info.width, height=info.height, shared_with=shared)
            except MeetingNotFound:
                if recording.meeting_id is None:
                    raise
                # The meeting was deleted while it recorded: the recording stays its starter's.
                recording.meeting_id = None
            except NotFound:
                # A participant's account went meanwhile: shared with those still there.
                kept = [u for u in shared if await store.get_user(u) is not None]
                if kept == shared:
                    raise
                shared = kept

    # -- the daemon's start and stop -----------------------------------------------------
    def stop_all(self) -> Deferred:
        """The daemon stops: every recording is finished and stored (before the media engine stops)."""
        self._stopping = True
        finishing = [self._finish(recording, None) for recording in list(self.active.values())]
        if not finishing:
            return succeed(None)
        return DeferredList(finishing, consumeErrors=True).addCallback(lambda _: None)

    async def recover(self) -> list[Recording]:
        """
        At start, before any recording: what a crash left in the recordings
        directory becomes items marked ``recovered`` (files PyAV can read) or
        is removed. -> the recovered Recordings.
        """
        recovered = []
        for path, meta, parts in await self._run(_leftovers, self.directory):
            recording_id = os.path.basename(path)[:-len(EXTENSION)]
            sidecar = path[:-len(EXTENSION)] + ".json"
            if parts:
                try:
                    await self._run(_merge_parts, path, parts)
                except Exception:
                    self.log.failure("merging the late tracks of the recording {path} failed; it is kept "
                                     "without them", path=path)
            duration = await self._run(readable_duration, path)
            size = await self._run(_file_size, path)
            owner = meta.get("started_by") if meta else None
            if duration is None or size == 0 or not isinstance(owner, int) \
                    or recording_id in self._by_id or await self.store.get_user(owner) is None:
                self.log.warn("removing the unreadable or ownerless recording {path} an earlier run left", path=path)
                await self._run(_remove, path, sidecar)
                continue
            meeting_id = meta.get("meeting_id")
            mtime = await self._run(os.path.getmtime, path)
            publishers = meta.get("publishers") or {}
            recording = Recording(recording_id, meeting_id if isinstance(meeting_id, int) else None,
                                  meta.get("room_id"), owner, str(meta.get("title") or recording_id),
                                  float(meta.get("started_at") or mtime - duration), status=RECOVERED, path=path,
                                  ended_at=mtime, duration=duration)
            recording.participants = tuple(sorted({u for u in publishers.values() if isinstance(u, int)} | {owner}))
            try:
                record = await self._add_item(recording, path, size)
            except Exception:
                self.log.failure("storing the recovered recording {path} failed; it stays for the next start",
                                 path=path)
                continue
            recording.media_id, recording.size = record.id, record.size
            await self._run(_remove, sidecar)
            self._remember(recording)
            recovered.append(recording)
            self.log.info("recovered recording {recording_id} ({duration:.1f} s) as item {media_id}",
                          recording_id=recording_id, duration=duration, media_id=record.id)
        return recovered

    # -- what the SFU and the meetings say ----------------------------------------------
    def recording_failed(self, recording_id, reason) -> None:
        recording = self._by_id.get(recording_id)
        if recording is not None:
            d = self._finish(recording, None, failure=str(reason)[:200] or "the recording failed")
            d.addErrback(lambda f: None)  # logged by _finish_failed

    def track_published(self, room_id, track) -> None:
        """A track joined the room (``track``: a PublishedTrack): its publisher is in the recording."""
        for recording in self._by_id.values():
            if recording.room_id == room_id and track.peer_id not in recording.publishers:
                recording.publishers[track.peer_id] = track.user_id
                d = self._run(_write_sidecar, self._sidecar(recording), self._sidecar_data(recording))
                d.addErrback(lambda f: self.log.failure("writing a recording's sidecar failed", f))

    def meeting_changed(self, meeting) -> None:
        if getattr(meeting, "status", None) in (ENDED, CANCELLED):
            self._end_of(meeting.id)

    def meeting_deleted(self, meeting_id) -> None:
        self._end_of(meeting_id)

    def participant_left(self, meeting_id, user_id, reason) -> None:
        pass  # their tracks end in the SFU; the recording goes on

    def _end_of(self, meeting_id) -> None:
        recording = self.active.get(meeting_id)
        if recording is not None:
            self._finish(recording, None).addErrback(lambda f: None)  # logged by _finish_failed

    # -- reading ----------------------------------------------------------------------------
    async def for_meeting(self, user, meeting_id: int, offset: int, limit: int) -> tuple[int, list[Recording]]:
        """The meeting's recordings, newest first, for its participants -> (total, page)."""
        meeting = await self._meeting(meeting_id)
        await self._require_member(user, meeting)
        found = await self._stored(meeting_id=meeting.id)
        live = [r for r in self._by_id.values() if r.meeting_id == meeting.id]
        remembered = [r for r in self._finished.values() if r.meeting_id == meeting.id and r.media_id is None]
        everything = sorted(live + remembered + found, key=lambda r: r.started_at, reverse=True)
        return len(everything), everything[offset:offset + limit]

    async def for_user(self, user, offset: int, limit: int) -> tuple[int, list[Recording]]:
        """Recordings ``user`` started or is in, newest first -> (total, page)."""
        found = await self._stored(user_id=user.id)
        live = [r for r in self._by_id.values() if r.started_by == user.id]
        everything = sorted(live + found, key=lambda r: r.started_at, reverse=True)
        return len(everything), everything[offset:offset + limit]

    async def find(self, user, recording_id) -> Recording:
        """The recording named ``recording_id``, if ``user`` may see it (a participant of its meeting)."""
        meeting_id = recording_meeting(recording_id)
        recording = self._by_id.get(recording_id) or self._finished.get(recording_id)
        if recording is not None and recording.media_id is None:  # in progress, or over without an item
            if recording.meeting_id is None:
                if recording.started_by != user.id:
                    raise NotFound("recording not found")
                return recording
            try:
                meeting = await self._meeting(recording.meeting_id)
            except MeetingNotFound:
                raise NotFound("recording not found") from None
            await self._require_member(user, meeting, NotFound("recording not found"))
            return recording
        for found in await self._stored(meeting_id=meeting_id):
            if found.recording_id == recording_id:
                await self.media.readable(user.id, found.media_id)  # 404 unless they may read it
                return found
        # A recording whose meeting was deleted is its starter's only.
        for found in await self._stored(user_id=user.id):
            if found.recording_id == recording_id and found.meeting_id is None:
                return found
        raise NotFound("recording not found")

    async def delete(self, user, recording_id) -> Recording:
        """Remove a stored recording (its starter, or the meeting's host or a moderator), as the media API does."""
        recording = await self.find(user, recording_id)
        if recording.media_id is None:
            if recording.status in (STARTING, RECORDING, STOPPING):
                raise Conflict("stop the recording first")
            raise NotFound("recording not found")
        await self.media.delete(user.id, recording.media_id)
        self._finished.pop(recording_id, None)
        return recording

    async def _stored(self, meeting_id=None, user_id=None) -> list[Recording]:
        """Recordings read back from their items (a meeting's, or those a user may list)."""
        store = self.store
        found, offset = [], 0
        while offset < MAX_SCAN:
            total, page = await store.list_media(offset, _SCAN_PAGE, user_id=user_id, meeting_id=meeting_id)
            offset += len(page)
            records = [record for record in page if record.file_type == FILE_TYPE]
            for record in records:
                recording = await self._from_item(record)
                if recording is not None:
                    found.append(recording)
            if not page or offset >= total:
                break
        return found

    async def _from_item(self, record) -> Recording | None:
        parsed = _parse_key(record.storage_key)
        if parsed is None:
            return None
        recording_id, status = parsed
        duration = record.duration_ms / 1000 if record.duration_ms is not None else None
        title = record.filename[:-len(EXTENSION)] if record.filename.endswith(EXTENSION) else record.filename
        known = self._finished.get(recording_id)
        if known is not None and known.media_id == record.id:
            participants = known.participants
        else:
            participants = await self._granted(record)
        return Recording(recording_id, record.meeting_id, None, record.uploader_id, title,
                         record.created_at - (duration or 0.0), status=status, ended_at=record.created_at,
                         duration=duration, size=record.size, media_id=record.id, participants=participants)

    async def _granted(self, record) -> tuple:
        users = {record.uploader_id}
        if record.meeting_id is not None:
            for participant in await self.store.list_participants(record.meeting_id):
                if participant.user_id not in users and await self.store.media_shared_with(
                        record.id, participant.user_id):
                    users.add(participant.user_id)
        return tuple(sorted(users))

    # -- rules and helpers ------------------------------------------------------------------
    async def _meeting(self, meeting_id: int):
        meeting = await self.store.get_meeting(meeting_id)
        if meeting is None:
            raise MeetingNotFound()
        return meeting

    async def _role(self, user, meeting) -> str | None:
        """The user's role in the meeting, as the MeetingService sees it (the creator is its host)."""
        if meeting.creator_id == user.id:
            return HOST
        participant = await self.store.get_participant(meeting.id, user.id)
        if participant is None or participant.status == "removed":
            return None
        return participant.role

    async def _require_member(self, user, meeting, error=None) -> str:
        """The user's role; a non-participant is told there is no such meeting (nothing is revealed)."""
        role = await self._role(user, meeting)
        if role is None and getattr(user, "role", None) != "admin":
            raise error or MeetingNotFound()
        return role or HOST

    async def _require_manager(self, user, meeting) -> str:
        role = await self._require_member(user, meeting)
        if role not in MODERATING_ROLES and getattr(user, "role", None) != "admin":
            raise Forbidden("only the host or a moderator may start or stop a recording")
        return role

    def _user_of(self, room_id, peer_id) -> int | None:
        if self.sfu is None:
            return None
        peer = self.sfu.peers.get(peer_id)
        return peer.user_id if peer is not None else None

    def _forget(self, recording: Recording) -> None:
        if self.active.get(recording.meeting_id) is recording:
            del self.active[recording.meeting_id]
        if self._by_id.get(recording.recording_id) is recording:
            del self._by_id[recording.recording_id]
            if recording.status in STORED_STATUSES:
                self._remember(recording)

    def _remember(self, recording: Recording) -> None:
        self._finished[recording.recording_id] = recording
        while len(self._finished) > KEEP_FINISHED:
            self._finished.popitem(last=False)

    def _sidecar(self, recording: Recording) -> str:
        return os.path.join(self.directory, recording.recording_id + ".json")

    @staticmethod
    def _sidecar_data(recording: Recording) -> dict:
        return {"recording_id": recording.recording_id, "meeting_id": recording.meeting_id,
                "room_id": recording.room_id, "started_by": recording.started_by, "title": recording.title,
                "started_at": recording.started_at, "publishers": dict(recording.publishers)}

    def _tell(self, recording: Recording, action: str, by: int | None = None) -> None:
        """Everyone in the meeting's room hears it over signaling."""
        if self.rooms is None or recording.meeting_id is None:
            return
        payload = {"action": action, "recording_id": recording.recording_id, "meeting_id": recording.meeting_id,
                   "status": recording.status, "title": recording.title, "started_by": recording.started_by,
                   "by_user_id": recording.started_by if action == "started" else by}
        if action != "started":
            payload.update(media_id=recording.media_id, duration=recording.duration, reason=recording.failure)
        try:
            self.rooms.announce(recording.meeting_id, "recording", payload)
        except Exception:
            self.log.failure("telling meeting {meeting_id} of its recording failed", meeting_id=recording.meeting_id)


class SfuRecordingEvents:
    """
    What the SFU tells the recordings: made before both, since the SFU is
    built with its methods as hooks and the recordings, which ask the SFU,
    after it (they subscribe when made).
    """

    def __init__(self) -> None:
        self._listener = None

    def subscribe(self, listener) -> None:
        if self._listener is not None:
            raise ValueError("these SFU events already have their listener")
        self._listener = listener

    def recording_failed(self, recording_id, reason) -> None:
        if self._listener is not None:
            self._listener.recording_failed(recording_id, reason)

    def track_published(self, room_id, track) -> None:
        if self._listener is not None:
            self._listener.track_published(room_id, track)


class _Once:
    """The result of one Deferred, for any number of waiters (a Deferred's own result goes to one)."""

    _PENDING = object()

    def __init__(self, d: Deferred) -> None:
        self._result = self._PENDING
        self._waiters: list[Deferred] = []
        d.addBoth(self._fire)

    def _fire(self, result) -> None:
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._deliver(waiter)

    def wait(self) -> Deferred:
        waiter = Deferred()
        if self._result is self._PENDING:
            self._waiters.append(waiter)
        else:
            self._deliver(waiter)
        return waiter

    def _deliver(self, waiter: Deferred) -> None:
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        else:
            waiter.callback(self._result)


def _stamp(seconds: float) -> str:
    from wecompany.times import rfc3339
    return rfc3339(seconds)
