"""The daemon's garbage-collector tuning and its pause timing."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wecompany.domain.stats import Timings
from wecompany.runtime import CollectorTuning, PauseRecorder


class FakeGC:
    def __init__(self) -> None:
        self.callbacks: list = []
        self.threshold = None

    def set_threshold(self, *threshold) -> None:
        self.threshold = threshold


class PauseTests(SynchronousTestCase):
    def test_each_collection_is_timed_by_generation(self) -> None:
        now = [100.0]
        pauses = Timings((0.001, 0.01, 0.1))
        recorder = PauseRecorder(pauses, timer=lambda: now[0])
        recorder("start", {"generation": 2})
        now[0] += 0.05
        recorder("stop", {"generation": 2, "collected": 10})
        recorder("start", {"generation": 0})
        now[0] += 0.0005
        recorder("stop", {"generation": 0})
        recorder("stop", {"generation": 1})  # no start seen: nothing to time
        self.assertEqual(pauses.data["2"][:-1], [0, 0, 1, 0])
        self.assertEqual(pauses.data["0"][:-1], [1, 0, 0, 0])
        self.assertNotIn("1", pauses.data)
        self.assertAlmostEqual(pauses.data["2"][-1], 0.05)

    def test_the_daemon_times_the_collector_from_the_start(self) -> None:
        gc, pauses = FakeGC(), Timings((1.0,))
        CollectorTuning(collector=gc, pauses=pauses).at_start()
        self.assertEqual(gc.threshold, (10_000, 10, 10))
        [recorder] = gc.callbacks
        self.assertIs(recorder.pauses, pauses)
        gc2 = FakeGC()
        CollectorTuning(collector=gc2).at_start()
        self.assertEqual(gc2.callbacks, [])

    def test_the_real_collector_feeds_the_timings(self) -> None:
        import gc
        pauses = Timings((1.0,))
        recorder = PauseRecorder(pauses)
        gc.callbacks.append(recorder)
        self.addCleanup(gc.callbacks.remove, recorder)
        gc.collect()
        self.assertEqual(sum(pauses.data["2"][:-1]), 1)
