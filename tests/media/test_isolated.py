"""
wecompany.media.isolated: jobs in a child process. These tests start real
child processes (that is what the module is for), each a second or so.
"""

from __future__ import annotations

import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from tests.media import generate
from wecompany.errors import InvalidInput
from wecompany.media import process
from wecompany.media.isolated import run_isolated
from wecompany.media.process import ProcessingCancelled, ProcessingFailed


class IsolatedTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.video = generate.write_video(os.path.join(self.dir, "in.mp4"))

    def test_the_result_and_the_progress_come_back(self):
        reports = []
        result = run_isolated("transcode", self.video, os.path.join(self.dir, "out"),
                              process.validate("transcode", {"format": "webm"}), progress=reports.append)
        self.assertEqual(result.content_type, "video/webm")
        self.assertEqual(result.size, os.path.getsize(result.path))
        self.assertEqual(process.probe(result.path)["kind"], "video")
        self.assertEqual(reports[-1], 1.0)
        self.assertEqual(reports, sorted(reports))

    def test_the_childs_errors_are_the_same_errors(self):
        with self.assertRaises(InvalidInput):
            run_isolated("transcode", os.path.join(self.dir, "missing.mp4"), os.path.join(self.dir, "out"),
                         process.validate("transcode", {"format": "webm"}))

    def test_cancelling_kills_the_child_and_removes_its_output(self):
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        out = os.path.join(self.dir, "out")
        big = generate.write_video(os.path.join(self.dir, "big.mp4"), seconds=20.0, width=320, height=240)
        with self.assertRaises(ProcessingCancelled):
            run_isolated("enhance", big, out, process.validate("enhance", {"operations": ["denoise"]}),
                         cancelled=stop.is_set)
        self.assertFalse(os.path.exists(out))

    def test_a_child_that_dies_without_an_answer_is_a_failed_run(self):
        out = os.path.join(self.dir, "out")
        with self.assertRaises(ProcessingFailed):
            run_isolated("thumbnail", self.video, out, process.validate("thumbnail", {}), python="/bin/false")
        self.assertFalse(os.path.exists(out))
        self.flushLoggedErrors()

    def test_a_child_over_its_memory_limit_fails_cleanly(self):
        with self.assertRaises(ProcessingFailed):
            run_isolated("transcode", self.video, os.path.join(self.dir, "out"),
                         process.validate("transcode", {"format": "webm"}), address_space=64 << 20)
        self.flushLoggedErrors()
