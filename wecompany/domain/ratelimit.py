"""Rate limiting keyed by client address or user, bounded in memory."""

from __future__ import annotations

from collections import OrderedDict

from wecompany.errors import RateLimited


class FailureCounter:
    """
    Failed attempts per key inside a window, and the attempts under way.

    A key is refused once its failures plus its attempts under way reach
    ``max_failures``, until ``window`` seconds have passed since its first
    counted failure. An attempt takes its slot (:meth:`reserve`) before the
    work that decides it, so a burst of parallel attempts cannot all pass the
    check before the first of them fails.

    Memory is bounded: at most ``max_keys`` keys are remembered; the least
    recently touched go first (which can only make the counter more lenient).
    """

    def __init__(self, clock, max_failures: int = 5, window: float = 60.0, max_keys: int = 100_000) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self._max_keys = max_keys
        self._entries: OrderedDict[str, list] = OrderedDict()  # key -> [first failure at or None, failures, pending]

    def check(self, key: str) -> None:
        """Raise :class:`RateLimited` when ``key`` has no attempt left."""
        entry = self._entry(key, create=False)
        if entry is None or entry[1] + entry[2] < self.max_failures:
            return
        if entry[1] < self.max_failures:
            # Not failures yet, only attempts under way that could all become one.
            raise RateLimited("too many attempts under way, try again shortly", retry_after=1.0)
        retry = max(1.0, entry[0] + self.window - self._clock.seconds())
        raise RateLimited("too many failed attempts, try again later", retry_after=retry)

    def reserve(self, key: str) -> None:
        """:meth:`check`, then hold one attempt for ``key`` until :meth:`settle`."""
        self.check(key)
        self._entry(key, create=True)[2] += 1

    def settle(self, key: str, failed: bool) -> None:
        """The attempt :meth:`reserve` held is over; count it when it ``failed``."""
        entry = self._entry(key, create=True)
        entry[2] = max(0, entry[2] - 1)
        if failed:
            if entry[1] == 0:
                entry[0] = self._clock.seconds()
            entry[1] += 1
        self._forget_if_idle(key, entry)

    def forgive(self, key: str) -> None:
        """Forget ``key``'s failures (its attempts under way still count)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry[0], entry[1] = None, 0
            self._forget_if_idle(key, entry)

    def _entry(self, key: str, create: bool):
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            if entry[0] is not None and self._clock.seconds() - entry[0] >= self.window:
                entry[0], entry[1] = None, 0  # the window has passed: failures forgotten
        elif create:
            entry = self._entries[key] = [None, 0, 0]
            while len(self._entries) > self._max_keys:
                self._entries.popitem(last=False)
        return entry

    def _forget_if_idle(self, key: str, entry: list) -> None:
        if entry[1] == 0 and entry[2] == 0:
            self._entries.pop(key, None)


class LoginGuard:
    """
    The limits on guessing a secret (a password, a meeting's password), one
    set of rules for every transport.

    Failures are counted per client address and per target (an account, or
    a meeting): each attempt takes a slot on both before the slow hash, and a
    failure is kept on both for ``window`` seconds. A success forgives the
    target's own failures, and never the address's: a login to one's own
    account must not buy more guesses at someone else's.

    :param per_address: failures one address may have in the window.
    :param per_target: failures one target may have in the window, from
        anywhere (so many addresses cannot share out the guesses).
    :param shared: :class:`~wecompany.mirror.limits.SharedLimits` in a
        cluster: the same counts, kept for every node in Redis. This node's
        own counters count only while Redis is unreachable.
    """

    def __init__(self, clock, per_address: int = 20, per_target: int = 5, window: float = 60.0,
                 max_keys: int = 100_000, shared=None) -> None:
        self.addresses = FailureCounter(clock, per_address, window, max_keys)
        self.targets = FailureCounter(clock, per_target, window, max_keys)
        self.window = window
        self.shared = shared
        self.refused = 0  # attempts refused (metrics)

    async def check_address(self, address: str) -> None:
        """Refuse an address with no attempt left before anything is looked up for it."""
        try:
            if self.shared is not None and await self.shared.check(address, self.addresses.max_failures):
                return
            self.addresses.check(address)
        except RateLimited:
            self.refused += 1
            raise

    async def attempt(self, address: str, target: str) -> "GuessAttempt":
        """Take a slot on ``address`` and ``target`` (or raise :class:`RateLimited`)."""
        try:
            return await self._attempt(address, target)
        except RateLimited:
            self.refused += 1
            raise

    async def _attempt(self, address: str, target: str) -> "GuessAttempt":
        if self.shared is not None and await self.shared.reserve(address, target, self.addresses.max_failures,
                                                                 self.targets.max_failures):
            return GuessAttempt(self, address, target, shared=True)
        self.addresses.reserve(address)
        try:
            self.targets.reserve(target)
        except RateLimited:
            self.addresses.settle(address, failed=False)
            raise
        return GuessAttempt(self, address, target)


class GuessAttempt:
    """One attempt under way; exactly one of its three endings is called."""

    __slots__ = ("_guard", "_address", "_target", "_over", "_shared")

    def __init__(self, guard: LoginGuard, address: str, target: str, shared: bool = False) -> None:
        self._guard = guard
        self._address = address
        self._target = target
        self._over = False
        self._shared = shared  # a slot is held in Redis too

    def failed(self) -> None:
        self._end(failed=True)

    def succeeded(self) -> None:
        self._end(failed=False, forgive=True)

    def abandoned(self) -> None:
        """Not decided (the hash queue was full, the store failed): nothing is counted."""
        self._end(failed=False)

    def _end(self, failed: bool, forgive: bool = False) -> bool:
        if self._over:
            return False
        self._over = True
        guard = self._guard
        if self._shared:
            guard.shared.settle(self._address, self._target, failed, forgive, guard.window)
        else:
            guard.addresses.settle(self._address, failed)
            guard.targets.settle(self._target, failed)
            if forgive:
                guard.targets.forgive(self._target)
        return True


class TokenBucket:
    """
    A token bucket for message rates: ``rate`` tokens per second, at most
    ``burst`` saved up. One per connection; ``allow()`` is O(1).
    """

    __slots__ = ("_clock", "rate", "burst", "_tokens", "_at")

    def __init__(self, clock, rate: float, burst: float) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = clock.seconds()

    def allow(self, cost: float = 1.0) -> bool:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class KeyedRateLimiter:
    """
    A token bucket per key (client address): ``rate`` requests per second,
    bursts of ``burst``. Raises :class:`RateLimited` with the seconds until the
    next token. At most ``max_keys`` buckets are kept (least recently used go).
    With ``shared`` (:class:`~wecompany.mirror.limits.SharedLimits`, in a
    cluster) the same budget is also kept for every node in Redis.
    """

    def __init__(self, clock, rate: float, burst: float, max_keys: int = 100_000, shared=None) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.shared = shared
        self.refused = 0  # requests refused (metrics)

    async def hit(self, key: str) -> None:
        """One request from ``key``: on the cluster's budget, or (alone, or without Redis) this node's."""
        try:
            if self.shared is not None and await self.shared.hit(key, self.rate, self.burst):
                return
            self.hit_here(key)
        except RateLimited:
            self.refused += 1
            raise

    def hit_here(self, key: str) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._clock, self.rate, self.burst)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if not bucket.allow():
            raise RateLimited("too many requests, slow down", retry_after=(1.0 - bucket._tokens) / self.rate)


ALLOW, DROP, WARN, CLOSE = "allow", "drop", "warn", "close"


class FloodGuard:
    """
    Per-connection message flood control shared by the transports.

    Messages draw on a token bucket (``rate`` per second, ``burst`` at once).
    A message that finds it empty is dropped; dropped messages draw on a
    second budget of the same size, so a client that keeps sending at well
    over the rate exhausts it and should be closed. The client should be told
    about drops, but at most once a second, so the answers do not become a
    flood of their own. :meth:`check` says which of these applies.
    """

    __slots__ = ("_clock", "_messages", "_drops", "_warned")

    def __init__(self, clock, rate: float, burst: float) -> None:
        self._clock = clock
        self._messages = TokenBucket(clock, rate, burst)
        self._drops = TokenBucket(clock, rate, burst)
        self._warned = -1e18

    def check(self, cost: float = 1.0) -> str:
        """
        ALLOW the message; DROP it silently; WARN (drop and tell); or CLOSE
        the connection. A message may ``cost`` more than one (a large one:
        what it takes to handle grows with its size); one costing more than
        the whole burst is charged the burst.
        """
        cost = min(cost, self._messages.burst)
        if self._messages.allow(cost):
            return ALLOW
        if not self._drops.allow(cost):
            return CLOSE
        now = self._clock.seconds()
        if now - self._warned >= 1.0:
            self._warned = now
            return WARN
        return DROP
