"""Call recording files: layout, bounded queue, thread shutdown."""

import os
import struct

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from wecompany.domain.recording import CallRecorder


class RecorderTests(SynchronousTestCase):
    def test_file_layout(self):
        clock = Clock()
        rec = CallRecorder(self.mktemp(), clock, start_thread=False)
        rec.write("c1", "caller", b"abc")
        clock.advance(0.25)
        rec.write("c1", "caller", b"de")
        rec.write("c1", "callee", b"z")
        rec.close_call("c1")
        rec.drain()
        with open(rec.path_for("c1", "caller"), "rb") as fh:
            self.assertEqual(fh.read(), struct.pack(">QI", 0, 3) + b"abc" + struct.pack(">QI", 250, 2) + b"de")
        with open(rec.path_for("c1", "callee"), "rb") as fh:
            self.assertEqual(fh.read(), struct.pack(">QI", 0, 1) + b"z")
        self.successResultOf(rec.stop())

    def test_full_queue_drops_and_counts(self):
        rec = CallRecorder(self.mktemp(), Clock(), max_queue=3, start_thread=False)
        for _ in range(5):
            rec.write("c", "caller", b"x")
        self.assertEqual(rec.dropped, 2)
        rec.drain()
        self.assertEqual(rec.written, 3)
        self.successResultOf(rec.stop())


class RecorderThreadTests(TestCase):
    async def test_thread_writes_and_stops(self):
        from twisted.internet import reactor
        directory = self.mktemp()
        rec = CallRecorder(directory, reactor)
        for i in range(100):
            rec.write("c9", "callee", bytes([i]) * 10)
        await rec.stop()
        self.assertEqual(os.path.getsize(rec.path_for("c9", "callee")), 100 * (12 + 10))
        self.assertFalse(rec._thread.is_alive())
