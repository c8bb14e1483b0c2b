"""
Plain counts the transports keep, for the metrics module to read when scraped.

The domain and the transports never import ``prometheus_client``: they add
to these ints and dicts (cheap: no locks, no label look-ups on a hot path),
and :mod:`wecompany.api.metrics` turns them into metric families at scrape
time. Every key is from a bounded set: a transport name, an outcome, a
message type (the TCP counts are lists indexed by the frame's type byte).
"""

from __future__ import annotations

from bisect import bisect_left

import attrs

#: The transports a login can come over.
TRANSPORTS = ("tcp", "rest", "ws")


def _per_type() -> list[int]:
    return [0] * 256


@attrs.define(eq=False)
class Stats:
    """One daemon's counts (``Domain.stats``)."""

    #: (transport, "ok" | "failed") -> logins.
    logins: dict = attrs.field(factory=dict)
    #: Binary-protocol frames and bytes (the 4-byte length prefix included), by the type byte.
    tcp_frames_in: list = attrs.field(factory=_per_type)
    tcp_bytes_in: list = attrs.field(factory=_per_type)
    tcp_frames_out: list = attrs.field(factory=_per_type)
    tcp_bytes_out: list = attrs.field(factory=_per_type)
    #: WebSocket signaling connections opened (handshake done) and closed, and messages each way.
    ws_opened: int = 0
    ws_closed: int = 0
    ws_messages_in: int = 0
    ws_messages_out: int = 0

    def login(self, transport: str, ok: bool) -> None:
        """One login over ``transport`` (one of :data:`TRANSPORTS`), succeeded or failed."""
        key = (transport, "ok" if ok else "failed")
        self.logins[key] = self.logins.get(key, 0) + 1


class Timings:
    """
    A histogram per label in plain ints and floats: ``observe(label, seconds)``
    is a bisect and two additions (no locks, no ``prometheus_client``); the
    metrics module exposes it at scrape time. Labels must come from a
    bounded set (operation names, GC generations).

    :ivar data: label -> [count per bucket (the last past every bound)..., sum of the values].
    """

    __slots__ = ("buckets", "data")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.data: dict[str, list] = {}

    def observe(self, label: str, seconds: float) -> None:
        row = self.data.get(label)
        if row is None:
            row = self.data[label] = [0] * (len(self.buckets) + 1) + [0.0]
        row[bisect_left(self.buckets, seconds)] += 1
        row[-1] += seconds
