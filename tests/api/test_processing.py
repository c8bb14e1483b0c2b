"""
POST /api/v1/media/process, GET /api/v1/media/process/:job_id and
POST /api/v1/video/enhancement, through the daemon's site on the in-memory
store. Jobs run at once in the test's thread: in place
(:func:`wecompany.media.process.run`), except where a test says it runs the
daemon's child process.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred

from tests.api.test_media import MEDIA, MediaCase
from tests.mediasamples import png, wav, webm
from wecompany.media import process


def in_place(process_type, src, dst, params, *, limits, progress, cancelled):
    return process.run(process_type, src, dst, params, progress=progress, cancelled=cancelled, limits=limits)


class ProcessingCase(MediaCase):
    api_options = {"run_job": in_place}

    def process(self, media_id: int, process_type: str, params=None, token: str | None = None, expect: int = 202):
        body = {"media_id": media_id, "process_type": process_type}
        if params is not None:
            body["params"] = params
        code, reply, _ = self.api.request("POST", f"{MEDIA}/process", body, token=token or self.alice)
        self.assertEqual(code, expect, reply)
        return reply.get("data", reply)

    def job(self, job_id: str, token: str | None = None, expect: int = 200):
        code, reply, _ = self.get(f"{MEDIA}/process/{job_id}", token=token)
        self.assertEqual(code, expect, reply)
        return reply.get("data", reply)

    def job_dirs(self):
        jobs = os.path.join(self.domain.media.spool_dir, "jobs")
        return os.listdir(jobs) if os.path.isdir(jobs) else []

    def result_of(self, started: dict) -> dict:
        job = self.job(started["job_id"])
        self.assertEqual((job["status"], job["error"], job["progress"]), ("done", None, 1.0), job)
        code, reply, _ = self.get(f"{MEDIA}/info/{job['result_media_id']}")
        self.assertEqual(code, 200, reply)
        return reply["data"]


class ProcessTests(ProcessingCase):
    def test_a_transcode_becomes_a_new_item_of_the_caller(self):
        source = self.upload(webm(seconds=1.0), filename="talk.webm")
        started = self.process(source["id"], "transcode", {"format": "mp4"})
        self.assertEqual(set(started), {"job_id", "status"})
        result = self.result_of(started)
        self.assertEqual((result["content_type"], result["file_type"], result["uploader_id"]),
                         ("video/mp4", "video", self.alice_id))
        self.assertEqual(result["filename"], "talk-transcode.mp4")
        self.assertAlmostEqual(result["duration_ms"], 1000, delta=150)
        code, body, _ = self.get(result["download_url"])
        self.assertEqual((code, len(body)), (200, result["size"]))
        listed = self.get(MEDIA)[1]["data"]["list"]
        self.assertEqual({item["id"] for item in listed}, {source["id"], result["id"]})
        self.assertEqual(self.job_dirs(), [])  # nothing left of the job

    def test_extract_audio_and_a_thumbnail(self):
        source = self.upload(webm(seconds=1.0))
        audio = self.result_of(self.process(source["id"], "extract_audio", {"format": "ogg"}))
        self.assertEqual(audio["file_type"], "audio")
        thumb = self.result_of(self.process(source["id"], "thumbnail", {"time": 0.5, "format": "png"}))
        self.assertEqual((thumb["content_type"], thumb["width"], thumb["height"]), ("image/png", 64, 48))

    def test_a_meetings_item_gives_a_result_in_that_meeting(self):
        meeting = self.meeting(self.alice, self.bob)
        source = self.upload(wav(seconds=1.0), None, "a.wav", ("meeting_id", str(meeting).encode()))
        # Bob, a participant, may read it, so he may process it: the result is his, in the meeting.
        result = self.result_of_for(self.process(source["id"], "transcode", {"format": "opus"}, token=self.bob),
                                    self.bob)
        self.assertEqual((result["uploader_id"], result["meeting_id"]), (self.bob_id, meeting))

    def result_of_for(self, started, token):
        job = self.job(started["job_id"], token=token)
        self.assertEqual(job["status"], "done", job)
        return self.get(f"{MEDIA}/info/{job['result_media_id']}", token=token)[1]["data"]

    def test_someone_elses_item_or_job_is_not_found(self):
        source = self.upload(webm(seconds=1.0))
        reply = self.process(source["id"], "transcode", {"format": "webm"}, token=self.bob, expect=404)
        self.assertEqual(reply["error_code"], 3002)
        started = self.process(source["id"], "thumbnail", {"time": 0})
        self.job(started["job_id"], token=self.bob, expect=404)
        self.job("no-such-job", expect=404)
        self.process(999999, "thumbnail", {}, expect=404)

    def test_bad_requests_are_400_with_a_reason(self):
        source = self.upload(webm(seconds=1.0))
        for body in ({"process_type": "transcode"}, {"media_id": source["id"]},
                     {"media_id": source["id"], "process_type": "explode"},
                     {"media_id": source["id"], "process_type": "transcode", "params": {"format": "exe"}},
                     {"media_id": source["id"], "process_type": "trim", "params": {"start": 2, "end": 1}},
                     {"media_id": source["id"], "process_type": "transcode", "params": [1]},
                     {"media_id": "1", "process_type": "transcode"}):
            code, reply, _ = self.api.request("POST", f"{MEDIA}/process", body, token=self.alice)
            self.assertEqual(code, 400, (body, reply))
            self.assertTrue(reply["message"], body)
        self.assertEqual(self.job_dirs(), [])

    def test_media_that_does_not_fit_the_process_fails_the_job_with_a_reason(self):
        source = self.upload(png(8, 8), filename="p.png")
        started = self.process(source["id"], "trim", {"start": 0, "end": 1})
        job = self.job(started["job_id"])
        self.assertEqual((job["status"], job["result_media_id"]), ("failed", None))
        self.assertTrue(job["error"])
        self.assertEqual(self.job_dirs(), [])

    def test_a_result_over_the_quota_fails_and_leaves_nothing(self):
        source = self.upload(webm(seconds=1.0))
        self.domain.media.quota = source["size"] + 10  # room for the source only
        started = self.process(source["id"], "transcode", {"format": "mp4"})
        job = self.job(started["job_id"])
        self.assertEqual(job["status"], "failed")
        self.assertIn("quota", job["error"])
        self.assertEqual([item["id"] for item in self.get(MEDIA)[1]["data"]["list"]], [source["id"]])
        self.assertEqual(self.job_dirs(), [])

    def test_unauthenticated(self):
        code, _, _ = self.api.request("POST", f"{MEDIA}/process", {"media_id": 1, "process_type": "trim"})
        self.assertEqual(code, 401)


class QueueTests(MediaCase):
    """One worker, one place in the queue: the third job is refused."""

    api_options = {"run_job": lambda *a, **k: None, "media_workers": 1, "media_queue": 1}

    def setUp(self):
        super().setUp()
        self.pending: list[Deferred] = []
        self.domain.processing.jobs._run_in_thread = lambda f, *args: self.pending.append(Deferred()) or \
            self.pending[-1]

    def test_a_full_queue_is_503(self):
        source = self.upload(webm(seconds=1.0))
        body = {"media_id": source["id"], "process_type": "thumbnail", "params": {"time": 0}}
        first = self.api.request("POST", f"{MEDIA}/process", body, token=self.alice)
        second = self.api.request("POST", f"{MEDIA}/process", body, token=self.alice)
        self.assertEqual([first[1]["data"]["status"], second[1]["data"]["status"]], ["running", "queued"])
        code, reply, _ = self.api.request("POST", f"{MEDIA}/process", body, token=self.alice)
        self.assertEqual((code, reply["message"]), (503, "processing queue full"))


class EnhancementTests(ProcessingCase):
    def test_low_light_brightens_an_image(self):
        import numpy as np

        dark = np.full((32, 32, 3), 20, dtype=np.uint8)
        dark[8:24, 8:24] = 40
        import av
        import io
        out = io.BytesIO()
        with av.open(out, "w", format="image2pipe") as container:
            stream = container.add_stream("png", rate=1)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "rgb24"
            for packet in stream.encode(av.VideoFrame.from_ndarray(dark, format="rgb24")):
                container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        source = self.upload(out.getvalue(), filename="dark.png")
        code, reply, _ = self.api.request("POST", "/api/v1/video/enhancement",
                                          {"media_id": source["id"], "operations": ["low_light"]}, token=self.alice)
        self.assertEqual(code, 202, reply)
        result = self.result_of(reply["data"])
        self.assertEqual(result["content_type"], "image/png")
        code, body, _ = self.get(result["download_url"])
        self.assertEqual(code, 200)
        with av.open(io.BytesIO(body), "r") as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
        self.assertGreater(frame.mean(), dark.mean() + 5)

    def test_bad_operations_are_400(self):
        source = self.upload(webm(seconds=1.0))
        for operations in ([], ["explode"], "sharpen", ["sharpen"] * 9):
            code, reply, _ = self.api.request("POST", "/api/v1/video/enhancement",
                                              {"media_id": source["id"], "operations": operations},
                                              token=self.alice)
            self.assertEqual(code, 400, (operations, reply))


class ChildProcessTests(MediaCase):
    """The daemon's way: each job in a child process (wecompany.media.isolated)."""

    def test_a_job_runs_in_a_child_process(self):
        source = self.upload(webm(seconds=1.0))
        code, reply, _ = self.api.request("POST", f"{MEDIA}/process",
                                          {"media_id": source["id"], "process_type": "transcode",
                                           "params": {"format": "webm"}}, token=self.alice)
        self.assertEqual(code, 202, reply)
        code, job, _ = self.get(f"{MEDIA}/process/{reply['data']['job_id']}")
        self.assertEqual(job["data"]["status"], "done", job)
        code, info, _ = self.get(f"{MEDIA}/info/{job['data']['result_media_id']}")
        self.assertEqual(info["data"]["content_type"], "video/webm")


class ObjectStorage:
    """The directory storage seen as object storage is: no local path for a key (S3's case)."""

    def __init__(self, inner):
        self._inner = inner
        self.read_size = inner.read_size

    def __getattr__(self, name):
        if name == "path_of":
            raise AttributeError(name)
        return getattr(self._inner, name)


class FetchedSourceTests(ProcessingCase):
    def test_an_item_without_a_local_path_is_fetched_for_the_job_and_the_copy_removed(self):
        source = self.upload(webm(seconds=1.0), filename="talk.webm")
        self.domain.media.storage = ObjectStorage(self.domain.media.storage)
        self.assertFalse(hasattr(self.domain.media.storage, "path_of"))
        result = self.result_of(self.process(source["id"], "transcode", {"format": "mp4"}))
        self.assertEqual(result["content_type"], "video/mp4")
        self.assertEqual(self.job_dirs(), [])
