"""
How the daemon's process runs its garbage collector.

CPython's cyclic collector stops the reactor while it works. A full
(generation 2) collection walks every tracked object: in a daemon holding
2,000 WebSocket connections that was 110-180 ms, long enough to put a
whole room's chat over its latency budget (bench/signaling.py --gc-log).
Two changes, both for the daemon process only (tests leave the collector
alone):

* the objects that exist once the daemon is ready -- modules, classes,
  configuration, about 50,000 of them -- live for as long as the process
  does; :func:`gc.freeze` moves them out of every later collection;
* the youngest generation is collected after 10,000 new objects instead
  of 700, so short-lived objects (a message on its way through the room)
  are far less often caught mid-flight and promoted towards the old
  generation, whose growth is what triggers full collections.
"""

from __future__ import annotations

import gc as _gc
import time

import attrs


class PauseRecorder:
    """
    A ``gc.callbacks`` entry: tells ``pauses.observe(generation, seconds)``
    how long each collection stopped the process. ``timer`` is
    ``time.perf_counter`` (the collector runs on whichever thread allocated:
    the reactor's clock does not see it).
    """

    def __init__(self, pauses, timer=time.perf_counter) -> None:
        self.pauses = pauses
        self.timer = timer
        self._started: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = self.timer()
        elif self._started is not None:
            self.pauses.observe(str(info.get("generation", "?")), self.timer() - self._started)
            self._started = None


@attrs.frozen
class CollectorTuning:
    """
    :param collector: the ``gc`` module (tests pass a recording fake).
    :param pauses: optional :class:`~wecompany.domain.stats.Timings` told of
        every collection's pause, by generation (the metrics read it).
    """

    threshold: tuple[int, int, int] = (10_000, 10, 10)
    collector: object = _gc
    pauses: object = attrs.field(default=None, eq=False)

    def at_start(self) -> None:
        """Before serving: collect less often, and time every collection when asked to."""
        self.collector.set_threshold(*self.threshold)
        if self.pauses is not None:
            self.collector.callbacks.append(PauseRecorder(self.pauses))

    def when_ready(self) -> None:
        """Everything made during start-up is permanent: keep it out of later collections."""
        self.collector.collect()
        self.collector.freeze()
