"""
The limits on guessing and on auth requests, shared by every node.

Without them an attacker who spreads guesses over the nodes behind a load
balancer gets each node's allowance once per node. Each count lives in
Redis under the cluster's prefix (``limit:fail:{key}``, ``limit:pend:{key}``,
``limit:rate:{key}``), is changed by one Lua script at a time (a read and a
write no other node comes between), and expires on its own: the keys held
are bounded by the activity of the last window. Restarting a node resets
nothing.

While Redis is unreachable, the node's own counters (those of the
:class:`~wecompany.domain.ratelimit.LoginGuard` and
:class:`~wecompany.domain.ratelimit.KeyedRateLimiter` it is given to) take
over: each node still applies the limits to what it sees. The outage is
logged once, by the link.
"""

from __future__ import annotations

from twisted.logger import Logger

from wecompany.errors import RateLimited, Unavailable
from wecompany.mirror import scripts

#: How long an attempt under way may hold its slot in Redis (a node that dies mid-attempt frees it then).
PENDING_TTL = 120


class SharedLimits:
    """
    :param cluster: this node's :class:`~wecompany.mirror.cluster.Cluster`
        (its link, keys and clock).
    """

    log = Logger()

    def __init__(self, cluster) -> None:
        self.cluster = cluster

    async def _ask(self, script: str, keys: list, args: list):
        """The script's answer, or None when Redis could not answer (down, or the command failed)."""
        try:
            return await self.cluster.link.redis.eval(script, keys, args)
        except Unavailable:
            return None
        except Exception:
            self.log.failure("cluster: a shared limit could not be read; this node's own applies")
            return None

    def _keys(self, key: str) -> list[str]:
        return [self.cluster.key("limit", "fail", key), self.cluster.key("limit", "pend", key)]

    # -- guesses ----------------------------------------------------------------
    async def check(self, key: str, limit: int) -> bool:
        """
        Raise :class:`RateLimited` when ``key`` has no attempt left
        cluster-wide. -> False when Redis could not be asked.
        """
        verdict = await self._ask(scripts.CHECK_ATTEMPTS, self._keys(key), [limit])
        if verdict is None:
            return False
        _refuse(verdict, limit)
        return True

    async def reserve(self, address: str, target: str, address_limit: int, target_limit: int) -> bool:
        """
        Take a slot on both, or raise :class:`RateLimited`. -> False when
        Redis could not be asked (the node's own counters take the attempt).
        """
        verdict = await self._ask(scripts.RESERVE_ATTEMPT, self._keys(address) + self._keys(target),
                                  [address_limit, target_limit, PENDING_TTL])
        if verdict is None:
            return False
        _refuse(verdict, address_limit if int(verdict[0]) == 1 else target_limit)
        return True

    def settle(self, address: str, target: str, failed: bool, forgive_target: bool, window: float) -> None:
        """The attempt is over (in the background: the slot stays held until this lands)."""
        if not self.cluster.link.up:
            return  # its slot is freed when it expires
        d = self.cluster.link.redis.eval(
            scripts.SETTLE_ATTEMPT, self._keys(address) + self._keys(target),
            ["1" if failed else "0", max(1, int(round(window))), "1" if forgive_target else "0"])
        self.cluster.track(d, "settling a login attempt")

    # -- request rates --------------------------------------------------------------
    async def hit(self, key: str, rate: float, burst: float) -> bool:
        """
        One request on ``key``'s shared budget (``rate`` per second, bursts
        of ``burst``), or :class:`RateLimited`. -> False when Redis could not be asked.
        """
        interval = 1000.0 / rate
        now = int(self.cluster.clock.seconds() * 1000)
        wait = await self._ask(scripts.RATE, [self.cluster.key("limit", "rate", key)], [now, interval, interval * burst])
        if wait is None:
            return False
        if int(wait) > 0:
            raise RateLimited("too many requests, slow down", retry_after=int(wait) / 1000.0)
        return True


def _refuse(verdict, limit: int) -> None:
    which, failures, ttl_ms = (int(v) for v in verdict)
    if which == 0:
        return
    if failures < limit:
        raise RateLimited("too many attempts under way, try again shortly", retry_after=1.0)
    raise RateLimited("too many failed attempts, try again later", retry_after=max(1.0, ttl_ms / 1000.0))
