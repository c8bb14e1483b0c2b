"""
Recordings (wecompany.sfu.recording) fed synthetic encoded frames on an
asyncio loop with a fake clock: no sockets, no aiortc; the files are decoded
with PyAV. The same with real aiortc publishers through a real worker is in
test_worker.py (record_clients.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from tests.sfu.synthetic_media import Clock, Publisher, decode, play, video_clip
from wecompany.errors import InvalidInput, NotFound
from wecompany.sfu import recording
from wecompany.sfu.recording import Recordings

SYNTHETIC = os.path.join(os.path.dirname(__file__), "synthetic_media.py")
T0 = 1000.0  # the fake clock at the start of each recording


class ParsingTests(unittest.TestCase):
    def test_h264_parameter_sets_from_an_annex_b_keyframe(self) -> None:
        clip = video_clip("h264")
        extradata = recording.h264_parameter_sets(clip[0])
        units = recording.annexb_units(extradata)
        self.assertEqual([u[0] & 0x1F for u in units], [7, 8])
        self.assertTrue(recording.h264_has_idr(clip[0]))
        self.assertIsNone(recording.h264_parameter_sets(clip[1]))
        self.assertIsNone(recording.stream_params("p", "t", "video/H264", 90000, clip[1]))

    def test_vp8_size(self) -> None:
        clip = video_clip("vp8")
        self.assertEqual(recording.vp8_keyframe_size(clip[0]), (640, 360))
        self.assertIsNone(recording.vp8_keyframe_size(clip[1]))

    def test_unrecorded_codec(self) -> None:
        self.assertRaises(KeyError, recording.stream_params, "p", "t", "video/AV1", 90000, b"x")


def run(coroutine):
    return asyncio.run(coroutine)


class RecordingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.path = os.path.join(self.directory, "rec.mkv")
        self.events: list[dict] = []

    async def record(self, plan, seconds: float = 10.0, live=None, **options) -> dict:
        """Record ``plan`` [(publisher, from, until)] (times from the start) for ``seconds``; -> stop's result."""
        clock = Clock()
        # The frames come faster than real time here: a queue that holds them all, unless told otherwise.
        options.setdefault("queue_limit", 100_000)
        recordings = Recordings(self.events.append, clock=clock, seal_min=0.0, seal_wait=3.0, **options)
        live = [p for p, since, _ in plan if since == 0] if live is None else live
        await recordings.start("room", "rec-1", self.path, [t for p in live for t in (p.audio, p.video)])
        self.recordings = recordings
        await play(recordings.by_id["rec-1"], clock, [(p, T0 + a, T0 + b) for p, a, b in plan], T0, T0 + seconds)
        return await recordings.stop("rec-1")

    def check_stream(self, streams, title, first, last, frames) -> None:
        stream = streams[title]
        for field, expected, slack in (("first", first, 0.1), ("last", last, 0.1), ("frames", frames, 2)):
            self.assertLessEqual(abs(stream[field] - expected), slack, f"{title} {field}: {stream}")

    def test_three_publishers_ten_seconds(self) -> None:
        a, b = Publisher("peer-a"), Publisher("peer-b", video_base=12)
        c = Publisher("peer-c", "vp8", video_start_frame=10)  # starts mid-GOP: waits for the keyframe
        result = run(self.record([(a, 0, 10), (b, 0, 10), (c, 0, 10)]))
        self.assertEqual(result["size"], os.path.getsize(self.path))
        self.assertEqual(result["duration"], 10.0)
        self.assertEqual(result["dropped"], 0)
        self.assertNotIn("failed", result)
        self.assertEqual(sorted(t["peer_id"] + " " + t["kind"] for t in result["tracks"]),
                         [f"peer-{x} {k}" for x in "abc" for k in ("audio", "video")])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        streams = decode(self.path)
        self.assertEqual(len(streams), 6)
        for name in ("peer-a", "peer-b", "peer-c"):
            self.check_stream(streams, f"{name} audio", 0.0, 9.98, 500)
            self.assertEqual(streams[f"{name} audio"]["codec"], "opus")
            self.assertEqual(streams[f"{name} audio"]["peer_id"], name)
            self.assertEqual(streams[f"{name} audio"]["track_id"], f"{name}-audio")
            self.assertEqual(streams[f"{name} video"]["kind"], "video")
        self.check_stream(streams, "peer-a video", 0.0, 9.967, 300)
        self.check_stream(streams, "peer-b video", 0.0, 9.967, 300)
        # c's first keyframe is the clip's frame 30, its 20th frame sent (0.667 s).
        self.check_stream(streams, "peer-c video", 0.667, 9.967, 280)
        self.assertEqual(streams["peer-c video"]["codec"], "vp8")
        self.assertGreater(c.video.keyframe_requests, 0)
        self.assertEqual(os.listdir(self.directory), ["rec.mkv"])

    def test_a_publisher_leaves_and_one_joins_late(self) -> None:
        a, b, late = Publisher("peer-a"), Publisher("peer-b", "vp8"), Publisher("peer-late")

        async def scenario() -> dict:
            clock = Clock()
            recordings = Recordings(self.events.append, clock=clock, seal_min=0.0, seal_wait=3.0,
                                    queue_limit=100_000)
            await recordings.start("room", "rec-1", self.path, [t for p in (a, b) for t in (p.audio, p.video)])
            rec = recordings.by_id["rec-1"]
            await play(rec, clock, [(a, T0, T0 + 10), (b, T0, T0 + 4), (late, T0 + 5, T0 + 10)], T0, T0 + 4)
            rec.on_track_end(b.audio)
            rec.on_track_end(b.video)
            await play(rec, clock, [(a, T0, T0 + 10), (late, T0 + 5, T0 + 10)], T0 + 4, T0 + 10)
            return await recordings.stop("rec-1")

        result = run(scenario())
        self.assertEqual(len(result["tracks"]), 6)
        streams = decode(self.path)
        self.assertEqual(len(streams), 6)
        self.check_stream(streams, "peer-a video", 0.0, 9.967, 300)
        self.check_stream(streams, "peer-b audio", 0.0, 3.98, 200)
        self.check_stream(streams, "peer-b video", 0.0, 3.967, 120)
        self.check_stream(streams, "peer-late audio", 5.0, 9.98, 250)
        self.check_stream(streams, "peer-late video", 5.0, 9.967, 150)
        # The late streams' part file was merged into the recording and removed.
        self.assertEqual(os.listdir(self.directory), ["rec.mkv"])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_an_empty_room_then_a_publisher(self) -> None:
        late = Publisher("peer-late")
        result = run(self.record([(late, 2, 10)], live=[]))
        self.check_stream(decode(self.path), "peer-late video", 2.0, 9.967, 240)
        self.assertEqual(len(result["tracks"]), 2)

    def test_a_full_queue_drops_and_counts(self) -> None:
        for limit in ({"queue_limit": 0}, {"queue_bytes": 0}):
            a = Publisher("peer-a")
            result = run(self.record([(a, 0, 3)], seconds=3, **limit))
            # Every audio frame; of the video, the keyframes (a video stream that lost
            # a frame ignores the rest until a keyframe, and asks for one).
            self.assertEqual(result["dropped"], 150 + 3, limit)
            self.assertGreater(a.video.keyframe_requests, 80)

    def test_unwritable_path_is_refused(self) -> None:
        self.path = os.path.join(self.directory, "missing", "rec.mkv")
        error = self.assertRaises(InvalidInput, run, self.record([(Publisher("p"), 0, 1)]))
        self.assertIn("cannot write the recording", error.message)

    def test_stop_unknown_and_twice(self) -> None:
        async def scenario() -> None:
            recordings = Recordings(self.events.append)
            with self.assertRaises(NotFound):
                await recordings.stop("nope")
            await recordings.start("room", "r", self.path, [])
            with self.assertRaises(InvalidInput):
                await recordings.start("room", "r", self.path, [])
            result = await recordings.stop("r")
            self.assertEqual((result["size"], result["tracks"]), (0, []))
            with self.assertRaises(NotFound):
                await recordings.stop("r")

        run(scenario())

    def test_disk_full_fails_the_recording_and_keeps_the_file(self) -> None:
        out = subprocess.run([sys.executable, SYNTHETIC, "disk-full", self.path, "300000"],
                             capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
        self.assertEqual(out.returncode, 0, out.stderr.decode()[-3000:])
        report = json.loads(out.stdout)
        self.assertEqual(len(report["events"]), 1, report)
        event = report["events"][0]
        self.assertEqual((event["event"], event["recording_id"]), ("recording_failed", "rec-1"))
        self.assertIn("File too large", event["reason"])
        self.assertIn("failed", report["result"])
        # What was written before the limit decodes.
        streams = decode(self.path)
        self.assertEqual(len(streams), 4)
        self.assertGreater(min(s["frames"] for s in streams.values()), 10)

    def test_a_file_cut_by_a_crash_reads_up_to_the_cut(self) -> None:
        process = subprocess.Popen([sys.executable, SYNTHETIC, "until-killed", self.path], stdout=subprocess.PIPE,
                                   env={**os.environ, "PYTHONPATH": os.getcwd()})
        try:
            for line in process.stdout:
                if line.strip() == b"at 4":
                    break
        finally:
            process.kill()
            process.wait()
        # Written cluster by cluster (CLUSTER_MS), so at most about a second per stream is lost.
        streams = decode(self.path)
        self.assertEqual(len(streams), 4)
        for title, stream in streams.items():
            self.assertGreaterEqual(stream["last"], 2.5, title)
            self.assertGreaterEqual(stream["frames"], 2.5 * (30 if title.endswith("video") else 50), title)
