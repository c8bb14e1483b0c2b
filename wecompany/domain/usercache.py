"""
Users' records and profiles kept in memory between requests, bounded, and
forgotten the moment they change.

Every authenticated request needs its user's row (the token version, the
status and the role are checked on each one), and ``GET /users/profile``
its profile too. Read from SQLite they cost a round trip through the
database's thread on every request (measured: about half of the cost of a
cheap authenticated read); this cache answers them from memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

#: Users (and, separately, profiles) kept at most: about 1 KiB each.
DEFAULT_MAX_USERS = 10_000
#: Seconds a record is trusted at most, whatever happens: a backstop for an
#: invalidation that never arrives (a lost cluster message), not the mechanism.
DEFAULT_MAX_AGE = 60.0


class UserCache:
    """
    ``UserRecord`` s and ``ProfileRecord`` s by user id, read through from the store.

    **The invalidation contract.** A record written to the store must not be
    answered from here once the write is done:

    * every write to a user's row or profile calls :meth:`invalidate` with
      the user's id once it is stored (or has failed), before the caller of
      the write hears of it. The store does this for the writes of this
      process (``user_caches``: ``create_user``, ``update_user``,
      ``set_password_hash``, ``record_login``, ``revoke_all_tokens``,
      ``update_profile``); a cluster bus calls it for the writes of other
      processes, and :meth:`invalidate_all` when it may have missed some
      (it reconnected);
    * a read that began before an invalidation does not fill the cache when
      it ends (it may have seen the row as it was): each fill carries the
      invalidation count at its start, and is dropped if that moved;
    * nothing is trusted longer than ``max_age`` seconds (``clock`` time),
      so a missed invalidation from another node costs at most that; this
      process's own writes are seen at once.

    A user who is not found is not remembered (absence is never cached).
    Records are frozen (``attrs.frozen``), so callers may keep what they get.

    :param clock: ``IReactorTime``.
    :param max_users: at most this many users, and as many profiles, are
        kept; the least recently used go first.
    """

    def __init__(self, clock, max_users: int = DEFAULT_MAX_USERS, max_age: float = DEFAULT_MAX_AGE) -> None:
        if max_users < 1:
            raise ValueError("max_users must be at least 1")
        self._clock = clock
        self.max_users = max_users
        self.max_age = max_age
        self._users: OrderedDict[int, tuple[float, Any]] = OrderedDict()  # id -> (stored at, record)
        self._profiles: OrderedDict[int, tuple[float, Any]] = OrderedDict()
        self._invalidations = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._users) + len(self._profiles)

    # -- the invalidation entry points ---------------------------------------------
    def invalidate(self, user_id: int) -> None:
        """Forget user ``user_id``'s record and profile (they changed, here or on another node)."""
        self._invalidations += 1
        self._users.pop(user_id, None)
        self._profiles.pop(user_id, None)

    def invalidate_all(self) -> None:
        """Forget everything (changes may have been missed)."""
        self._invalidations += 1
        self._users.clear()
        self._profiles.clear()

    # -- reads -------------------------------------------------------------------------
    async def user(self, user_id: int, read: Callable[[int], Awaitable[Any]]):
        """The user's record, from here or from ``read(user_id)`` (the store's ``get_user``); None if none."""
        return await self._through(self._users, user_id, read)

    async def profile(self, user_id: int, read: Callable[[int], Awaitable[Any]]):
        """The user's profile, from here or from ``read(user_id)`` (the store's ``get_profile``); None if none."""
        return await self._through(self._profiles, user_id, read)

    async def _through(self, kept: OrderedDict, user_id: int, read):
        now = self._clock.seconds()
        entry = kept.get(user_id)
        if entry is not None:
            if now - entry[0] < self.max_age:
                kept.move_to_end(user_id)
                self.hits += 1
                return entry[1]
            del kept[user_id]
        self.misses += 1
        invalidations = self._invalidations
        record = await read(user_id)
        if record is not None and invalidations == self._invalidations:
            kept[user_id] = (now, record)
            if len(kept) > self.max_users:
                kept.popitem(last=False)
        return record
