"""Rate limiting keyed by client address or user, bounded in memory."""

from __future__ import annotations

from collections import OrderedDict

from wecompany.errors import RateLimited


class FailureLimiter:
    """
    Counts failures per key inside a sliding window and refuses a key that
    failed ``max_failures`` times until the window has passed since its
    first counted failure.

    Memory is bounded: at most ``max_keys`` keys are remembered; the oldest
    are forgotten first (which can only make the limiter more lenient).
    """

    def __init__(self, clock, max_failures: int = 5, window: float = 60.0,
                 max_keys: int = 100_000) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self._max_keys = max_keys
        self._entries: OrderedDict[str, list] = OrderedDict()  # key -> [first_failure_at, count]

    def check(self, key: str) -> None:
        """Raise :class:`RateLimited` when ``key`` is over its budget."""
        entry = self._live_entry(key)
        if entry is not None and entry[1] >= self.max_failures:
            retry = max(1.0, entry[0] + self.window - self._clock.seconds())
            raise RateLimited("too many failed attempts, try again later", retry_after=retry)

    def failed(self, key: str) -> None:
        entry = self._live_entry(key)
        if entry is None:
            self._entries[key] = [self._clock.seconds(), 1]
            while len(self._entries) > self._max_keys:
                self._entries.popitem(last=False)
        else:
            entry[1] += 1

    def succeeded(self, key: str) -> None:
        self._entries.pop(key, None)

    def _live_entry(self, key: str):
        entry = self._entries.get(key)
        if entry is not None and self._clock.seconds() - entry[0] >= self.window:
            del self._entries[key]
            return None
        return entry


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
    """

    def __init__(self, clock, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def hit(self, key: str) -> None:
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

    def check(self) -> str:
        """ALLOW the message; DROP it silently; WARN (drop and tell); or CLOSE the connection."""
        if self._messages.allow():
            return ALLOW
        if not self._drops.allow():
            return CLOSE
        now = self._clock.seconds()
        if now - self._warned >= 1.0:
            self._warned = now
            return WARN
        return DROP
