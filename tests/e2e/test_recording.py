"""
Meeting recordings through the real daemon: three browser-like aiortc clients
(sfu_peers.py's ``record*`` scenarios) publish audio and video; the host
records; the file is read back over REST and decoded with PyAV.

What a recording holds is checked per publisher: an audio and a video stream
named by its SFU peer id, each lasting about as long as the recording ran,
at about the rate sent (30 fps video; Opus audio in 20 ms frames). The
machine is shared and noisy, so the rates are held to a floor, not to the
exact count.
"""

from __future__ import annotations

import os
import signal

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from tests.e2e.test_rest import Http
from tests.e2e.test_sfu import SfuDaemonCase
from tests.sfu.synthetic_media import decode

RECORD_SECONDS = 10.0
DURATION_SLACK = 1.5  # seconds: the start and stop reach the worker a moment after the REST call
FPS, AUDIO_FPS = 30, 50
RATE_FLOOR = 0.6  # of the frames sent: the machine is shared and noisy


class RecordingEndToEndTests(SfuDaemonCase):
    timeout = 300

    async def download(self, daemon, path: str, token: str, headers: dict | None = None):
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{daemon.http_port}{path}", timeout=30, pool=pool, headers={
            "Authorization": [f"Bearer {token}"], **(headers or {})})
        return response, await response.content()

    def save(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp()) + ".mkv"
        with open(path, "wb") as f:
            f.write(data)
        return path

    def check_file(self, path: str, result: dict, seconds: float, *, exact: bool = True) -> None:
        """Each publisher's audio and video, about ``seconds`` long (up to it, if not ``exact``), decodable."""
        streams = decode(path)
        for name, peer_id in result["peers"].items():
            for kind, rate in (("audio", AUDIO_FPS), ("video", FPS)):
                stream = streams.get(f"{peer_id} {kind}")
                self.assertIsNotNone(stream, f"no {kind} of {name} ({peer_id}) in {sorted(streams)}")
                self.assertEqual(stream["peer_id"], peer_id)
                length = stream["last"] - stream["first"]
                if exact:
                    self.assertLess(abs(length - seconds), DURATION_SLACK, f"{name} {kind}: {stream}")
                else:
                    self.assertGreater(length, seconds / 2, f"{name} {kind}: {stream}")
                    self.assertLess(length, seconds + DURATION_SLACK, f"{name} {kind}: {stream}")
                self.assertGreater(stream["frames"], RATE_FLOOR * rate * length, f"{name} {kind}: {stream}")
        self.assertEqual(len(streams), 2 * len(result["peers"]), sorted(streams))

    async def only_recording(self, http: Http, result: dict) -> dict:
        code, body = await http.call("GET", f"/api/v1/meetings/{result['meeting_id']}/recordings",
                                     token=result["token"])
        self.assertEqual(code, 200, body)
        [recording] = body["data"]["list"]
        return recording

    async def test_ten_seconds_of_three_publishers(self) -> None:
        daemon = await self.start_sfu_daemon()
        result = await self.run_peers(daemon, "record", seconds=RECORD_SECONDS)
        self.assertTrue(result["all_receiving"], result)
        self.assertEqual(result["participant_start"][0], 403, result)
        code, body = result["start"]
        self.assertIn(code, (200, 201), body)
        recording_id = body["data"]["id"]
        self.assertTrue(result["told_started"], result)
        code, body = result["stop"]
        self.assertEqual(code, 200, body)
        for name, told in result["told"].items():  # everyone in the room heard it start and stop
            self.assertEqual([m["action"] for m in told], ["started", "stopped"], (name, told))
            self.assertTrue(all(m["recording_id"] == recording_id for m in told), (name, told))

        http = Http(self, daemon)
        recording = await self.only_recording(http, result)
        self.assertEqual((recording["id"], recording["status"]), (recording_id, "completed"), recording)
        self.assertLess(abs(recording["duration"] - result["ran_s"]), DURATION_SLACK, recording)
        self.assertEqual(sorted(str(p["user_id"]) if isinstance(p, dict) else str(p)
                                for p in recording["participants"]), sorted(result["users"].values()))
        response, data = await self.download(daemon, recording["download_url"], result["token"])
        self.assertEqual(response.code, 200)
        self.assertEqual(len(data), recording["size"])
        self.check_file(self.save(data), result, result["ran_s"])
        response, part = await self.download(daemon, recording["download_url"], result["token"],
                                             {"Range": ["bytes=100-1099"]})
        self.assertEqual((response.code, part), (206, data[100:1100]))

        # The media service's routes, on the same recording.
        code, status = await http.call("GET", f"/api/v1/recording/status/{recording_id}", token=result["token"])
        self.assertEqual(code, 200, status)
        code, listed = await http.call("GET", f"/api/v1/recording/list?user_id={result['users']['alice']}",
                                       token=result["token"])
        self.assertEqual(code, 200, listed)
        self.assertIn(recording_id, str(listed))
        response, same = await self.download(daemon, f"/api/v1/recording/download/{recording_id}", result["token"])
        self.assertEqual((response.code, same == data), (200, True))
        await self.stop_clean(daemon)

    async def test_ending_the_meeting_stops_the_recording(self) -> None:
        daemon = await self.start_sfu_daemon()
        result = await self.run_peers(daemon, "record-end", seconds=4)
        self.assertIn(result["start"][0], (200, 201), result)
        self.assertEqual(result["end"][0], 200, result)
        http = Http(self, daemon)
        recording = await self.only_recording(http, result)
        for _ in range(50):  # the end reaches the recording as the meeting closes; it is then stored
            if recording["status"] != "recording":
                break
            await deferLater(reactor, 0.1, lambda: None)
            recording = await self.only_recording(http, result)
        await self.check_stored(daemon, recording, result, "completed")

    async def check_stored(self, daemon, recording: dict, result: dict, status: str, exact: bool = True) -> None:
        """The recording is ``status``; its file downloads and decodes; the daemon then stops cleanly."""
        self.assertEqual(recording["status"], status, recording)
        response, data = await self.download(daemon, recording["download_url"], result["token"])
        self.assertEqual(response.code, 200)
        self.check_file(self.save(data), result, result["ran_s"], exact=exact)
        await self.stop_clean(daemon)

    async def test_a_graceful_stop_finishes_the_file(self) -> None:
        """SIGTERM while recording: the file is finished and stored before the daemon exits."""
        daemon = await self.start_sfu_daemon()
        result = await self.run_peers(daemon, "record-term", seconds=5)
        self.assertIn(result["start"][0], (200, 201), result)
        self.assertEqual(await daemon.wait_exit(), 0, daemon.report())
        self.assertNotIn("Traceback", daemon.log_text(), daemon.report())
        await self.start_sfu_daemon(daemon=daemon)
        await self.check_stored(daemon, await self.only_recording(Http(self, daemon), result), result, "completed")

    async def test_a_crash_leaves_a_recovered_recording(self) -> None:
        """SIGKILL while recording: the next start makes what was written a ``recovered`` item."""
        daemon = await self.start_sfu_daemon()
        result = await self.run_peers(daemon, "record-kill", seconds=6)
        self.assertIn(result["start"][0], (200, 201), result)
        self.assertEqual(await daemon.wait_exit(), -signal.SIGKILL, daemon.report())
        await self.start_sfu_daemon(daemon=daemon)
        # Cut short: up to the last complete cluster the writer had flushed.
        await self.check_stored(daemon, await self.only_recording(Http(self, daemon), result), result, "recovered",
                                exact=False)
