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

from collections.abc import Awaitable, Callable
from typing import Any

from wecompany.domain.readcache import ReadThrough

#: Users (and, separately, profiles) kept at most: a user and its profile
#: take about 0.8 KiB (measured with tracemalloc), 8 MiB when full.
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
      it ends (it may have seen the row as it was);
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
        self.max_users = max_users
        self._users = ReadThrough(clock, max_users, max_age)
        self._profiles = ReadThrough(clock, max_users, max_age)

    def __len__(self) -> int:
        return len(self._users) + len(self._profiles)

    @property
    def hits(self) -> int:
        return self._users.hits + self._profiles.hits

    @property
    def misses(self) -> int:
        return self._users.misses + self._profiles.misses

    # -- the invalidation entry points ---------------------------------------------
    def invalidate(self, user_id: int) -> None:
        """Forget user ``user_id``'s record and profile (they changed, here or on another node)."""
        self._users.forget(user_id)
        self._profiles.forget(user_id)

    def invalidate_all(self) -> None:
        """Forget everything (changes may have been missed)."""
        self._users.forget_all()
        self._profiles.forget_all()

    # -- reads -------------------------------------------------------------------------
    async def user(self, user_id: int, read: Callable[[int], Awaitable[Any]]):
        """The user's record, from here or from ``read(user_id)`` (the store's ``get_user``); None if none."""
        return await self._users.get(user_id, lambda: read(user_id))

    async def profile(self, user_id: int, read: Callable[[int], Awaitable[Any]]):
        """The user's profile, from here or from ``read(user_id)`` (the store's ``get_profile``); None if none."""
        return await self._profiles.get(user_id, lambda: read(user_id))
