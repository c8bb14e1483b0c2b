"""
Recordings of a room's published tracks, remuxed without transcoding (PyAV).

A :class:`Recording` receives every encoded frame a publisher of its room
sends (the same frames :mod:`.forwarding` fans out) and writes them, as they
are, into one Matroska file: one stream per (publisher, track), titled and
tagged with the publisher's peer id, the track id and the kind.

Why Matroska: it holds Opus, H.264 and VP8 side by side, it keeps any
timestamp the RTP clocks give (milliseconds), and it is written cluster by
cluster (at most :data:`CLUSTER_MS` buffered), so a file cut short by a
crash or a full disk still reads up to the cut. MP4 would need its index
(``moov``) written at the end, and WebM refuses H.264.

Timestamps: each stream's RTP timestamp (its codec clock: 48 kHz Opus,
90 kHz video), offset so that its first frame lands at the time, since the
recording started, at which it arrived. All streams therefore share one
time line and line up to within the network's jitter.

Video streams start at a keyframe (the recording asks each publisher for one
with PLI); an H.264 stream's codec parameters (``extradata``) are the
SPS/PPS of that first keyframe, which lets libavformat's Matroska muxer
store ``avcC`` and length-prefixed NAL units as players expect, though the
browser sends Annex B.

Tracks that start later: Matroska's track list precedes the media and
libavformat cannot add a stream once the header is written. So the file at
``path`` is opened ("sealed") with the streams present at the start, once
each has its first keyframe (or after :data:`SEAL_WAIT`); a stream that
starts after that is written to a file of its own beside it
(``path.part-N.mkv``), and :meth:`Recording.stop` merges those into
``path`` (a remux, in the writer thread). Only recordings that someone
joined mid-way pay for the merge, and it costs a copy of the file.

Writing never happens on the event loop: frames go through a bounded queue
to one writer thread per recording. When the queue is full (the disk is
slower than the media), frames are dropped and counted (``dropped`` in the
stop result); a video stream then waits for its next keyframe. The queue
holds at most :data:`QUEUE_LIMIT` frames and :data:`QUEUE_BYTES` bytes. Files are
created 0600, fsynced when the recording stops. A write error (disk full,
...) ends the writing and calls ``on_failed(reason)`` once; what was written
is kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import heapq
import os
import queue
import struct
import threading
import time
from typing import Any, Callable, Optional

import attrs
import av

from wecompany.errors import InvalidInput, NotFound

QUEUE_LIMIT = 2000  # frames; three publishers send about 240 a second
QUEUE_BYTES = 64 << 20
SEAL_MIN = 0.5  # seconds after the first stream is ready, so a publisher's other track can be seen
SEAL_WAIT = 3.0  # at most this long for the streams present at the start to send a keyframe
CLUSTER_MS = 1000
MUXER_OPTIONS = {
    "cluster_time_limit": str(CLUSTER_MS),
    # Each cluster goes to the file when it is complete, not when PyAV's I/O buffer fills.
    "flush_packets": "1",
    # libavformat holds packets back until every stream has one (to interleave
    # them): without a bound, a stream whose publisher left would hold all the
    # others in memory for 10 s (its default).
    "max_interleave_delta": str(CLUSTER_MS * 1000),
}
MERGE_SUFFIX = ".merging"

# mime type -> (kind, PyAV codec name)
CODECS = {
    "audio/opus": ("audio", "opus"),
    "audio/pcmu": ("audio", "pcm_mulaw"),
    "audio/pcma": ("audio", "pcm_alaw"),
    "video/h264": ("video", "h264"),
    "video/vp8": ("video", "vp8"),
}

# RFC 7845 5.1 identification header: version 1, 2 channels (WebRTC's
# opus/48000/2), 312 samples of pre-skip, 48 kHz, no gain, mapping family 0.
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, 48000, 0, 0)


def annexb_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (without their start codes)."""
    units = []
    starts = []
    position = data.find(b"\x00\x00\x01")
    while position != -1:
        starts.append(position + 3)
        position = data.find(b"\x00\x00\x01", position + 3)
    for index, start in enumerate(starts):
        end = starts[index + 1] - 3 if index + 1 < len(starts) else len(data)
        unit = data[start:end]
        if index + 1 < len(starts):
            unit = unit.rstrip(b"\x00")  # the leading zero of a 4-byte start code, trailing zeros
        if unit:
            units.append(unit)
    return units


def h264_parameter_sets(data: bytes) -> Optional[bytes]:
    """SPS and PPS of an H.264 keyframe as Annex B extradata, or None if it lacks either."""
    sps = [u for u in annexb_units(data) if u[0] & 0x1F == 7]
    pps = [u for u in annexb_units(data) if u[0] & 0x1F == 8]
    if not sps or not pps:
        return None
    return b"".join(b"\x00\x00\x00\x01" + u for u in sps[:1] + pps)


def h264_has_idr(data: bytes) -> bool:
    return any(u[0] & 0x1F == 5 for u in annexb_units(data))


def vp8_keyframe_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) of a VP8 key frame (RFC 6386 9.1), or None for an inter frame."""
    if len(data) < 10 or data[0] & 0x01 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return width & 0x3FFF, height & 0x3FFF


@attrs.frozen
class StreamParams:
    """What the writer needs to declare one stream."""

    peer_id: str
    track_id: str
    kind: str
    codec_name: str
    clock_rate: int
    extradata: Optional[bytes] = None
    width: int = 0
    height: int = 0
    first_frame: Optional[bytes] = None  # H.264: decoded once in the writer for the size


def stream_params(peer_id: str, track_id: str, mime_type: str, clock_rate: int,
                  data: bytes) -> Optional[StreamParams]:
    """
    -> the parameters of a stream whose first frame is ``data``, or None if
    that frame cannot start it (a video frame that is not a keyframe, an
    H.264 keyframe without SPS/PPS). Raises KeyError for codecs not recorded.
    """
    kind, name = CODECS[mime_type.lower()]
    if name == "opus":
        return StreamParams(peer_id, track_id, kind, name, clock_rate, extradata=OPUS_HEAD)
    if kind == "audio":
        return StreamParams(peer_id, track_id, kind, name, clock_rate)
    if name == "vp8":
        size = vp8_keyframe_size(data)
        if size is None:
            return None
        return StreamParams(peer_id, track_id, kind, name, clock_rate, width=size[0], height=size[1])
    extradata = h264_parameter_sets(data)
    if extradata is None or not h264_has_idr(data):
        return None
    return StreamParams(peer_id, track_id, kind, name, clock_rate, extradata=extradata, first_frame=data)


def create_private(path: str) -> None:
    """Create (or truncate) ``path`` readable and writable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Output:
    """One Matroska file being written (the recording's file, or one late stream's part)."""

    def __init__(self, path: str, streams: list[StreamParams]) -> None:
        create_private(path)  # libavformat's file protocol keeps an existing file's mode
        self.path = path
        self.container = av.open(path, "w", format="matroska", options=MUXER_OPTIONS)
        self.streams: dict[tuple[str, str], Any] = {}
        self.time_bases: dict[tuple[str, str], fractions.Fraction] = {}
        for params in streams:
            self._add(params)

    def _add(self, params: StreamParams) -> None:
        if params.kind == "audio":
            stream = self.container.add_stream(params.codec_name, rate=params.clock_rate)
            if params.codec_name == "opus":
                stream.codec_context.layout = "stereo"
            else:
                stream.codec_context.layout = "mono"
        else:
            stream = self.container.add_stream(params.codec_name)
            width, height = params.width, params.height
            if params.first_frame is not None and not width:
                width, height = _decoded_size(params.codec_name, params.extradata, params.first_frame)
            stream.codec_context.width, stream.codec_context.height = width, height
        if params.extradata:
            stream.codec_context.extradata = params.extradata
        time_base = fractions.Fraction(1, params.clock_rate)
        stream.time_base = time_base
        stream.metadata["title"] = f"{params.peer_id} {params.kind}"
        stream.metadata["language"] = "und"
        stream.metadata["PEER_ID"] = params.peer_id
        stream.metadata["TRACK_ID"] = params.track_id
        stream.metadata["KIND"] = params.kind
        key = (params.peer_id, params.track_id)
        self.streams[key] = stream
        self.time_bases[key] = time_base

    def write(self, key: tuple[str, str], pts: int, data: bytes, keyframe: bool) -> None:
        stream = self.streams[key]
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = self.time_bases[key]
        packet.pts = packet.dts = pts
        packet.is_keyframe = keyframe
        self.container.mux(packet)

    def close(self) -> None:
        self.container.close()


def _decoded_size(codec_name: str, extradata: Optional[bytes], frame: bytes) -> tuple[int, int]:
    decoder = av.CodecContext.create(codec_name, "r")
    if extradata:
        decoder.extradata = extradata
    try:
        frames = decoder.decode(av.Packet(frame)) + decoder.decode(None)
    except av.FFmpegError:
        frames = []
    if frames:
        return frames[0].width, frames[0].height
    return decoder.width, decoder.height


def merge(paths: list[str], destination: str) -> None:
    """Remux the streams of the Matroska files ``paths`` into one file, ``destination`` (0600)."""
    inputs = [av.open(p) for p in paths]
    try:
        tmp = destination + MERGE_SUFFIX
        create_private(tmp)
        output = av.open(tmp, "w", format="matroska", options=MUXER_OPTIONS)
        mapping = {}
        for container in inputs:
            for stream in container.streams:
                out = output.add_stream_from_template(stream)
                for name, value in stream.metadata.items():
                    if name.upper() != "DURATION":
                        out.metadata[name] = value
                mapping[(id(container), stream.index)] = out
        def packets(container: Any):
            for packet in container.demux():
                if packet.size > 0 and packet.pts is not None:
                    yield container, packet

        iterators = [packets(container) for container in inputs]
        heap: list = []

        def push(n: int) -> None:
            for container, packet in iterators[n]:
                heapq.heappush(heap, (float(packet.pts * packet.time_base), n, id(packet), container, packet))
                return

        for n in range(len(inputs)):
            push(n)
        while heap:
            _, n, _, container, packet = heapq.heappop(heap)
            packet.stream = mapping[(id(container), packet.stream.index)]
            output.mux(packet)
            push(n)
        output.close()
        fsync_path(tmp)
        os.replace(tmp, destination)
    finally:
        for container in inputs:
            container.close()


class _Writer(threading.Thread):
    """
    The writer thread of one recording: takes commands from ``commands``
    (``("open", params)``, ``("packet", key, pts, data, keyframe)``,
    ``("seal",)``, ``("finish", future)``) and does all the file work.
    """

    def __init__(self, path: str, commands: queue.Queue, on_failed: Callable[[str], None]) -> None:
        super().__init__(name=f"recording {os.path.basename(path)}", daemon=True)
        self.path = path
        self.commands = commands
        self.on_failed = on_failed
        self.failed: Optional[str] = None
        self.sealed = False
        self.main: Optional[_Output] = None
        self.pending: list[StreamParams] = []
        self.buffered: list[tuple] = []
        self.parts: dict[tuple[str, str], _Output] = {}
        self.recorded: list[StreamParams] = []
        self.taken_bytes = 0  # only this thread writes it; the loop reads it

    def run(self) -> None:
        while True:
            command = self.commands.get()
            if command[0] == "finish":
                future = command[1]
                try:
                    future.set_result(self._finish())
                except BaseException as e:  # noqa: BLE001 - the loop must hear of it
                    future.set_exception(e)
                return
            if self.failed is not None:
                if command[0] == "packet":
                    self.taken_bytes += len(command[3])
                continue
            try:
                self._handle(command)
            except Exception as e:  # noqa: BLE001 - disk full, bad data: stop writing, keep the file
                self._fail(f"{type(e).__name__}: {e}")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._close_all()
        try:
            self.on_failed(reason)
        except Exception:  # noqa: BLE001 - the loop is gone (exiting); the result still says it
            pass

    def _handle(self, command: tuple) -> None:
        if command[0] == "open":
            params = command[1]
            if not self.sealed:
                self.pending.append(params)
            else:
                self.parts[(params.peer_id, params.track_id)] = _Output(
                    f"{self.path}.part-{len(self.parts) + 1}.mkv", [params])
            self.recorded.append(params)
        elif command[0] == "packet":
            self.taken_bytes += len(command[3])
            if not self.sealed:
                self.buffered.append(command)
            else:
                self._write(command)
        elif command[0] == "seal":
            self._seal()

    def _seal(self) -> None:
        if self.sealed:
            return
        self.sealed = True
        if self.pending:
            self.main = _Output(self.path, self.pending)
        # In time order, as the muxer wants them interleaved.
        rates = {(p.peer_id, p.track_id): p.clock_rate for p in self.pending}
        self.buffered.sort(key=lambda c: c[2] / rates[c[1]])
        buffered, self.buffered = self.buffered, []
        for command in buffered:
            self._write(command)

    def _write(self, command: tuple) -> None:
        _, key, pts, data, keyframe = command
        output = self.parts.get(key) or self.main
        output.write(key, pts, data, keyframe)

    def _close_all(self) -> None:
        for output in [self.main, *self.parts.values()]:
            if output is not None:
                try:
                    output.close()
                except Exception:  # noqa: BLE001 - already failing; keep what is on disk
                    pass

    def _finish(self) -> dict:
        if self.failed is None:
            try:
                self._seal()
                for output in [self.main, *self.parts.values()]:
                    if output is not None:
                        output.close()
                if self.parts:
                    merge(([self.path] if self.main else []) + [o.path for o in self.parts.values()],
                          self.path)
                    for output in self.parts.values():
                        os.unlink(output.path)
                fsync_path(self.path)
                directory = os.path.dirname(os.path.abspath(self.path))
                fsync_path(directory)
            except Exception as e:  # noqa: BLE001
                self._fail(f"{type(e).__name__}: {e}")
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        return {"size": size, "failed": self.failed,
                "tracks": [{"peer_id": p.peer_id, "track_id": p.track_id, "kind": p.kind} for p in self.recorded]}


@attrs.define
class _RecordedStream:
    """The event loop's view of one stream of a recording."""

    kind: str
    offset: int  # RTP timestamp + offset = pts, in the codec's clock
    opened: bool = False
    unsupported: bool = False
    need_keyframe: bool = False
    last_pts: int = -1


class Recording:
    """
    One recording of a room. Feed it with :meth:`on_frame` (on the event
    loop, for each encoded frame of each track of the room) and
    :meth:`on_track_end`; :meth:`stop` finishes the file.

    ``tracks`` are the objects frames come from: anything with ``peer.peer_id``,
    ``track_id``, ``kind`` and ``request_keyframe()`` (a
    :class:`~wecompany.sfu.forwarding.PublishedTrack`).
    """

    def __init__(self, recording_id: str, room: str, path: str, on_failed: Callable[[str], None], *,
                 clock: Callable[[], float] = time.monotonic, seal_min: float = SEAL_MIN,
                 seal_wait: float = SEAL_WAIT, queue_limit: int = QUEUE_LIMIT,
                 queue_bytes: int = QUEUE_BYTES) -> None:
        self.recording_id = recording_id
        self.room = room
        self.path = path
        self.clock = clock
        self.seal_min = seal_min
        self.seal_wait = seal_wait
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self._put_bytes = 0  # only the loop writes it
        self.dropped = 0
        self.failed: Optional[str] = None
        self.stopped = False
        self.started = 0.0
        self._on_failed = on_failed
        self._streams: dict[tuple[str, str], _RecordedStream] = {}
        self._expected: set[tuple[str, str]] = set()
        self._first_open: Optional[float] = None
        self._sealed = False
        self._seal_timer: Optional[asyncio.TimerHandle] = None
        self._commands: queue.Queue = queue.Queue()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._writer: Optional[_Writer] = None

    async def start(self, tracks: list) -> None:
        """Create the file (InvalidInput if it cannot be) and ask ``tracks`` (those live now) for keyframes."""
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(create_private, self.path)
        except OSError as e:
            raise InvalidInput(f"cannot write the recording to {self.path}: {e.strerror or e}") from e
        self.started = self.clock()
        self._writer = _Writer(self.path, self._commands, self._writer_failed)
        self._writer.start()
        for track in tracks:
            self._expected.add((track.peer.peer_id, track.track_id))
            track.request_keyframe()

    def _writer_failed(self, reason: str) -> None:
        # On the writer thread.
        self._loop.call_soon_threadsafe(self._failed, reason)

    def _failed(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self._on_failed(reason)

    def on_frame(self, track: Any, codec: Any, data: bytes, timestamp: int, keyframe: bool) -> None:
        """One encoded frame of ``track`` (``timestamp`` in ``codec.clockRate``, ``keyframe`` as the forwarder saw it)."""
        if self.stopped or self.failed is not None:
            return
        key = (track.peer.peer_id, track.track_id)
        stream = self._streams.get(key)
        if stream is None:
            elapsed = self.clock() - self.started
            stream = self._streams[key] = _RecordedStream(
                kind=track.kind, offset=round(elapsed * codec.clockRate) - timestamp)
        if stream.unsupported:
            return
        if not stream.opened:
            try:
                params = stream_params(key[0], key[1], codec.mimeType, codec.clockRate, data)
            except KeyError:
                stream.unsupported = True
                return
            if params is None:
                track.request_keyframe()
                return
            stream.opened = True
            self._commands.put(("open", params))
            if self._first_open is None:
                self._first_open = self.clock()
                self._seal_timer = self._loop.call_later(self.seal_min, self._check_seal)
        elif stream.need_keyframe:
            if not keyframe:
                track.request_keyframe()
                return
            stream.need_keyframe = False
        pts = timestamp + stream.offset
        if pts <= stream.last_pts:
            self.dropped += 1  # a repeated or reordered frame: Matroska wants rising times
            return
        if (self._commands.qsize() >= self.queue_limit
                or self._put_bytes - self._writer.taken_bytes + len(data) > self.queue_bytes):
            self.dropped += 1
            if stream.kind == "video":
                stream.need_keyframe = True
                track.request_keyframe()
            return
        stream.last_pts = pts
        self._put_bytes += len(data)
        self._commands.put(("packet", key, pts, data, keyframe))

    def on_track_end(self, track: Any) -> None:
        """``track`` stopped; its stream ends (if it comes back, video waits for a keyframe)."""
        stream = self._streams.get((track.peer.peer_id, track.track_id))
        if stream is not None and stream.kind == "video":
            stream.need_keyframe = True

    def _check_seal(self) -> None:
        self._seal_timer = None
        if self._sealed or self.stopped:
            return
        waiting = [k for k in self._expected | set(self._streams)
                   if not (k in self._streams and (self._streams[k].opened or self._streams[k].unsupported))]
        if not waiting or self.clock() - self._first_open >= self.seal_wait:
            self._seal()
        else:
            self._seal_timer = self._loop.call_later(0.1, self._check_seal)

    def _seal(self) -> None:
        if not self._sealed:
            self._sealed = True
            self._commands.put(("seal",))

    async def stop(self) -> dict:
        """Finish the file -> ``{duration, size, tracks, dropped}`` (and ``failed`` if it failed)."""
        if self.stopped:
            raise InvalidInput(f"recording {self.recording_id} is already stopping")
        self.stopped = True
        if self._seal_timer is not None:
            self._seal_timer.cancel()
        duration = self.clock() - self.started
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("finish", future))
        written = await asyncio.wrap_future(future)
        result = {"duration": round(duration, 3), "size": written["size"], "tracks": written["tracks"],
                  "dropped": self.dropped}
        if written["failed"] is not None:
            result["failed"] = written["failed"]
        return result


class Recordings:
    """The recordings of one worker, by id and by room; events go to ``emit``."""

    def __init__(self, emit: Callable[[dict], None], **options: Any) -> None:
        self.emit = emit
        self.options = options
        self.by_id: dict[str, Recording] = {}
        self.by_room: dict[str, list[Recording]] = {}

    async def start(self, room: str, recording_id: str, path: str, tracks: list) -> None:
        if not all(isinstance(v, str) and v for v in (room, recording_id, path)):
            raise InvalidInput("room, recording_id and path must be non-empty strings")
        if recording_id in self.by_id:
            raise InvalidInput(f"recording already started: {recording_id}")
        recording = Recording(recording_id, room, path, lambda reason: self.emit(
            {"event": "recording_failed", "recording_id": recording_id, "reason": reason}), **self.options)
        self.by_id[recording_id] = recording
        try:
            await recording.start(tracks)
        except BaseException:
            del self.by_id[recording_id]
            raise
        self.by_room.setdefault(room, []).append(recording)

    async def stop(self, recording_id: str) -> dict:
        if not isinstance(recording_id, str):
            raise InvalidInput("recording_id must be a string")
        recording = self.by_id.get(recording_id)
        if recording is None or recording.stopped:
            raise NotFound(f"recording not found: {recording_id}")
        if recording not in self.by_room.get(recording.room, []):
            raise InvalidInput(f"recording {recording_id} is still starting")
        in_room = self.by_room.get(recording.room, [])
        if recording in in_room:
            in_room.remove(recording)
            if not in_room:
                del self.by_room[recording.room]
        try:
            return await recording.stop()
        finally:
            del self.by_id[recording_id]

    def on_frame(self, room: str, track: Any, codec: Any, data: bytes, timestamp: int, keyframe: bool) -> None:
        for recording in self.by_room.get(room, ()):
            recording.on_frame(track, codec, data, timestamp, keyframe)

    def on_track_end(self, room: str, track: Any) -> None:
        for recording in self.by_room.get(room, ()):
            recording.on_track_end(track)

    async def close(self) -> None:
        """Finish every recording (shutdown, EOF, SIGTERM)."""
        for recording_id in list(self.by_id):
            if not self.by_id[recording_id].stopped:
                await self.stop(recording_id)
