"""
Optional server-side recording of relayed call media (``--record-calls DIR``).

One file per call and direction, ``<call_id>-<caller|callee>.wcrec``. Each
packet is stored as ``[u64 milliseconds since the first packet of that file]
[u32 length][bytes]`` (big-endian), so a player can reproduce the timing.

Writing happens on one background thread fed by a bounded queue: the reactor
only enqueues, and when the disk cannot keep up packets are dropped and
counted (media is real time; memory stays bounded).
"""

from __future__ import annotations

import os
import queue
import struct
import threading

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wecompany.privatefs import make_private_dir, open_private

_HEADER = struct.Struct(">QI")
_CLOSE = object()
_STOP = object()


class CallRecorder:
    log = Logger()

    def __init__(self, directory: str, reactor, max_queue: int = 4096, start_thread: bool = True) -> None:
        self.directory = os.path.abspath(directory)
        make_private_dir(self.directory)
        self._reactor = reactor
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._files: dict[tuple[str, str], tuple[object, float]] = {}
        self.dropped = 0
        self.written = 0
        self._stopped: Deferred | None = None
        self._thread = None
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="wecompany-recorder", daemon=True)
            self._thread.start()

    def write(self, call_id: str, direction: str, data: bytes) -> None:
        try:
            self._queue.put_nowait((call_id, direction, self._reactor.seconds(), data))
        except queue.Full:
            self.dropped += 1

    def close_call(self, call_id: str) -> None:
        try:
            self._queue.put_nowait((_CLOSE, call_id))
        except queue.Full:
            # Files of this call are closed at stop() at the latest.
            pass

    def path_for(self, call_id: str, direction: str) -> str:
        return os.path.join(self.directory, f"{call_id}-{direction}.wcrec")

    def stop(self) -> Deferred:
        """Write what is queued, close every file; the Deferred fires when done."""
        if self._stopped is None:
            self._stopped = Deferred()
            if self._thread is None:
                self.drain()
                self._close_all()
                self._stopped.callback(None)
            else:
                self._queue.put(_STOP)  # blocking put is fine: the writer is draining
        return self._stopped

    # -- writer side (background thread, or drain() in tests) ---------------
    def drain(self) -> None:
        """Process everything queued now (tests without a thread)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            self._handle(item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._close_all()
                self._reactor.callFromThread(self._thread_done)
                return
            try:
                self._handle(item)
            except Exception:
                self.log.failure("recording a media packet failed")

    def _thread_done(self) -> None:
        # The thread has nothing left to do but return: joining is immediate.
        self._thread.join()
        self._stopped.callback(None)

    def _handle(self, item) -> None:
        if item[0] is _CLOSE:
            for key in [k for k in self._files if k[0] == item[1]]:
                self._files.pop(key)[0].close()
            return
        call_id, direction, when, data = item
        entry = self._files.get((call_id, direction))
        if entry is None:
            entry = (open_private(self.path_for(call_id, direction), "ab"), when)
            self._files[(call_id, direction)] = entry
        fh, start = entry
        fh.write(_HEADER.pack(max(0, int((when - start) * 1000)), len(data)))
        fh.write(data)
        self.written += 1

    def _close_all(self) -> None:
        for fh, _ in self._files.values():
            fh.close()
        self._files.clear()
