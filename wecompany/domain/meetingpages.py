"""
Pages of the meeting list (``GET /meetings``) kept in memory between
requests, bounded, and all forgotten when any meeting changes.

A page is two queries (the count and the rows, sorted) through the
database's one thread; measured, that round trip was most of the cost of
``GET /meetings?page=1&page_size=10``, which every client polls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from wecompany.domain.readcache import ReadThrough

#: Meetings held at most, over all the pages kept (a record with its
#: settings is about 0.6 KiB plus its title and description, measured with
#: tracemalloc: a few MiB when full, 5,000 x the longest text allowed at worst).
DEFAULT_MAX_MEETINGS = 5_000
#: Seconds a page is trusted at most: the backstop for a missed invalidation.
DEFAULT_MAX_AGE = 10.0


class MeetingPages:
    """
    ``(total, [MeetingRecord])`` pages of the meeting list by what was asked
    (offset, limit, statuses, keyword), read through from the store.

    **The invalidation contract.** Every write to the meetings table calls
    :meth:`invalidate` with the meeting's id once it is stored (or has
    failed), before the writer hears of it: the store does this for the
    writes of this process (``meeting_caches``: ``create_meeting``,
    ``update_meeting``, ``delete_meeting``), a cluster bus is to do it for
    other processes' writes, and :meth:`invalidate_all` when it may have
    missed some. A page depends on every meeting (its total, and which
    meetings fall on it), so any change forgets every page. A read that
    began before an invalidation does not fill the cache, and nothing is
    trusted longer than ``max_age`` seconds.

    The pages are bounded by the meetings they hold in all
    (``max_meetings``); the least recently used go first. Only the public
    list is kept here: "my meetings" depend on participants as well.
    """

    def __init__(self, clock, max_meetings: int = DEFAULT_MAX_MEETINGS, max_age: float = DEFAULT_MAX_AGE) -> None:
        self._pages = ReadThrough(clock, max_meetings, max_age, weigh=lambda page: 1 + len(page[1]))

    def __len__(self) -> int:
        return len(self._pages)

    @property
    def weight(self) -> int:
        return self._pages.weight

    @property
    def misses(self) -> int:
        return self._pages.misses

    def invalidate(self, meeting_id: int) -> None:
        """Meeting ``meeting_id`` changed (here or on another node): forget every page."""
        self._pages.forget_all()

    def invalidate_all(self) -> None:
        self._pages.forget_all()

    async def page(self, offset: int, limit: int, statuses: tuple[str, ...] | None, keyword: str | None,
                   read: Callable[[], Awaitable[Any]]):
        """The page, from here or from ``read()`` (the store's ``list_meetings`` for the same arguments)."""
        return await self._pages.get((offset, limit, statuses, keyword), read)
