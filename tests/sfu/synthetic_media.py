"""
Encoded frames and fake published tracks for recording tests, without aiortc or sockets.

Also a script: ``python synthetic_media.py disk-full PATH LIMIT`` records
synthetic publishers into PATH with the file size limited to LIMIT bytes
(RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk) and prints
the events and the stop result as JSON; ``python synthetic_media.py
until-killed PATH`` records in real time until it is killed.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import json
import math
import os
import sys

import attrs
import av
import numpy

sys.path.insert(0, os.path.dirname(__file__))
from sfu_clients import FPS, encode_clip  # noqa: E402

AUDIO_FRAME = 960  # 20 ms at 48 kHz


@functools.lru_cache(maxsize=None)
def video_clip(codec: str) -> tuple[bytes, ...]:
    """2 s of 640x360 video at 30 fps, a keyframe each second (``h264`` or ``vp8``)."""
    return tuple(encode_clip({"h264": "libx264", "vp8": "libvpx"}[codec]))


@functools.lru_cache(maxsize=None)
def opus_clip(frames: int = 50) -> tuple[bytes, ...]:
    """1 s of a 440 Hz tone as 20 ms Opus frames."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"
    encoder.time_base = fractions.Fraction(1, 48000)
    out = []
    for k in range(frames + 10):
        samples = (8000 * numpy.sin(2 * math.pi * 440 * (numpy.arange(AUDIO_FRAME) + AUDIO_FRAME * k) / 48000))
        frame = av.AudioFrame.from_ndarray(samples.astype(numpy.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, AUDIO_FRAME * k
        out.extend(bytes(p) for p in encoder.encode(frame))
    return tuple(out[:frames])


@attrs.frozen
class Codec:
    mimeType: str
    clockRate: int


OPUS = Codec("audio/opus", 48000)
H264 = Codec("video/H264", 90000)
VP8 = Codec("video/VP8", 90000)


@attrs.frozen
class FakePeer:
    peer_id: str


@attrs.define(eq=False)
class FakeTrack:
    """What a Recording needs of a PublishedTrack."""

    peer: FakePeer
    track_id: str
    kind: str
    keyframe_requests: int = 0

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@attrs.define(eq=False, slots=False)
class Publisher:
    """One synthetic publisher: an Opus track and a video track, with RTP timestamps from a random base."""

    peer_id: str
    video_codec: str = "h264"
    video_start_frame: int = 0  # index into the clip of the first frame sent (not a keyframe: must wait)
    audio_base: int = 123_456
    video_base: int = 7_654_321

    def __attrs_post_init__(self) -> None:
        self.audio = FakeTrack(FakePeer(self.peer_id), f"{self.peer_id}-audio", "audio")
        self.video = FakeTrack(FakePeer(self.peer_id), f"{self.peer_id}-video", "video")

    def frames_between(self, start: float, end: float, since: float) -> list:
        """(time, track, codec, data, timestamp, keyframe) sent in [start, end), sending from ``since``."""
        out = []
        opus, clip = opus_clip(), video_clip(self.video_codec)
        codec = H264 if self.video_codec == "h264" else VP8
        for n in range(math.ceil((start - since) * 50 - 1e-9), math.ceil((end - since) * 50 - 1e-9)):
            out.append((since + n / 50, self.audio, OPUS, opus[n % len(opus)],
                        self.audio_base + n * AUDIO_FRAME, True))
        for n in range(math.ceil((start - since) * FPS - 1e-9), math.ceil((end - since) * FPS - 1e-9)):
            index = (self.video_start_frame + n) % len(clip)
            out.append((since + n / FPS, self.video, codec, clip[index],
                        self.video_base + n * (90000 // FPS), index % FPS == 0))
        return out


async def play(recording, clock: Clock, publishers: list[tuple[Publisher, float, float]],
               start: float, end: float, step: float = 0.1) -> None:
    """Feed ``recording`` the frames each (publisher, from, until) sends in [start, end) of clock time, in order."""
    t = start
    while t < end - 1e-9:
        frames = []
        for publisher, since, until in publishers:
            frames.extend(f for f in publisher.frames_between(max(t, since), min(t + step, until), since)
                          if since <= f[0] < until)
        frames.sort(key=lambda f: f[0])
        for when, track, codec, data, timestamp, keyframe in frames:
            clock.now = when
            recording.on_frame(track, codec, data, timestamp, keyframe)
        t += step
        clock.now = t
        await asyncio.sleep(0)  # timers (sealing) run


def decode(path: str) -> dict:
    """title -> {frames, first, last, kind, tags} for each stream of the file, by decoding it all."""
    found = {}
    with av.open(path) as container:
        streams = {s.index: s for s in container.streams}
        for s in streams.values():
            found[s.index] = {"title": s.metadata.get("title"), "peer_id": s.metadata.get("PEER_ID"),
                              "track_id": s.metadata.get("TRACK_ID"), "kind": s.metadata.get("KIND"),
                              "codec": s.codec_context.name, "frames": 0, "first": None, "last": None}
        for packet in container.demux():
            for frame in packet.decode():
                entry = found[packet.stream.index]
                entry["frames"] += 1
                t = float(frame.time)
                entry["first"] = t if entry["first"] is None else min(entry["first"], t)
                entry["last"] = t if entry["last"] is None else max(entry["last"], t)
    return {e["title"]: e for e in found.values()}


async def disk_full(path: str) -> dict:
    from wecompany.sfu.recording import Recordings

    events: list = []
    recordings = Recordings(events.append, clock=Clock(), seal_min=0.0, seal_wait=0.0)
    clock = recordings.options["clock"]
    publishers = [Publisher("a"), Publisher("b", "vp8")]
    await recordings.start("room", "rec-1", path, [t for p in publishers for t in (p.audio, p.video)])
    recording = recordings.by_id["rec-1"]
    for second in range(20):
        await play(recording, clock, [(p, 1000.0, 1030.0) for p in publishers], 1000.0 + second, 1001.0 + second)
        await asyncio.sleep(0.05)  # let the writer run into the limit
        if events:
            break
    result = await recordings.stop("rec-1")
    return {"events": events, "result": result}


async def until_killed(path: str) -> None:
    """Record two synthetic publishers in about real time, printing ``at N`` after N seconds of media."""
    from wecompany.sfu.recording import Recordings

    recordings = Recordings(lambda event: None, clock=Clock(), seal_min=0.0, seal_wait=0.0)
    clock = recordings.options["clock"]
    publishers = [Publisher("a"), Publisher("b", "vp8")]
    await recordings.start("room", "rec-1", path, [t for p in publishers for t in (p.audio, p.video)])
    recording = recordings.by_id["rec-1"]
    for step in range(1000):
        start = 1000.0 + step / 10
        await play(recording, clock, [(p, 1000.0, 1100.0) for p in publishers], start, start + 0.1)
        await asyncio.sleep(0.1)
        if step % 10 == 9:
            print(f"at {(step + 1) // 10}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "until-killed":
        asyncio.run(until_killed(sys.argv[2]))
    if sys.argv[1] == "disk-full":
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(sys.argv[3])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        print(json.dumps(asyncio.run(disk_full(sys.argv[2]))))
