"""
The one read-through map the domain's caches of stored rows are made of:
bounded, aged, and never filled by a read older than an invalidation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any


class ReadThrough:
    """
    Values by key, read through from the store, the least recently used
    dropped first past ``max_weight`` (each value weighs ``weigh(value)``,
    1 by default), none trusted longer than ``max_age`` seconds of
    ``clock`` time.

    :meth:`forget` and :meth:`forget_all` count as invalidations: a read
    that began before one does not fill the map when it ends (it may have
    seen the row as it was before the write that caused it). Absence (a
    read answering None) is never kept.
    """

    def __init__(self, clock, max_weight: int, max_age: float, weigh: Callable[[Any], int] | None = None) -> None:
        if max_weight < 1:
            raise ValueError("a cache must hold at least one value")
        self._clock = clock
        self.max_weight = max_weight
        self.max_age = max_age
        self._weigh = weigh
        self._kept: OrderedDict[Hashable, tuple[float, int, Any]] = OrderedDict()  # key -> (stored at, weight, value)
        self.weight = 0
        self._invalidations = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

    def forget(self, key: Hashable) -> None:
        self._invalidations += 1
        self._drop(key)

    def _drop(self, key: Hashable) -> None:
        entry = self._kept.pop(key, None)
        if entry is not None:
            self.weight -= entry[1]

    def forget_all(self) -> None:
        self._invalidations += 1
        self._kept.clear()
        self.weight = 0

    async def get(self, key: Hashable, read: Callable[[], Awaitable[Any]]):
        """The value of ``key``, kept or from ``read()``; None when there is none."""
        now = self._clock.seconds()
        entry = self._kept.get(key)
        if entry is not None:
            if now - entry[0] < self.max_age:
                self._kept.move_to_end(key)
                self.hits += 1
                return entry[2]
            self._drop(key)
        self.misses += 1
        invalidations = self._invalidations
        value = await read()
        if value is not None and invalidations == self._invalidations:
            self._put(key, now, value)
        return value

    def _put(self, key: Hashable, now: float, value: Any) -> None:
        weight = 1 if self._weigh is None else max(1, self._weigh(value))
        if weight > self.max_weight:
            return  # larger than the whole cache: not kept
        self._drop(key)  # another read of it may have filled it meanwhile
        self._kept[key] = (now, weight, value)
        self.weight += weight
        while self.weight > self.max_weight:
            _, (_, dropped, _) = self._kept.popitem(last=False)
            self.weight -= dropped
