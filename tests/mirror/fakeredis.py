"""
A fake Redis for the cluster's logic: the txredisapi commands the cluster
uses, keys that expire on a fake clock, and pub/sub that delivers on the
next turn of that clock, shared by the nodes of one test (each has its own
:class:`FakeLink`). The cluster's Lua scripts run as their Python twins.
"""

from __future__ import annotations

import math

from twisted.internet.defer import fail, succeed

from wecompany.errors import Unavailable
from wecompany.mirror import scripts


class FakeRedisServer:
    def __init__(self, clock) -> None:
        self.clock = clock
        self.data: dict = {}
        self.expires: dict[str, float] = {}
        self.channels: dict[str, dict] = {}  # channel -> {link: handler}
        self.links: list[FakeLink] = []
        self.running = True
        self.published = 0
        self.heard: list[tuple] = []  # (link, channel, message) of every message delivered

    # -- keys ---------------------------------------------------------------
    def _live(self, key):
        at = self.expires.get(key)
        if at is not None and self.clock.seconds() >= at:
            self.data.pop(key, None)
            self.expires.pop(key, None)
        return self.data.get(key)

    def _expire(self, key, seconds) -> None:
        self.expires[key] = self.clock.seconds() + seconds

    def keys(self) -> list[str]:
        return [key for key in list(self.data) if self._live(key) is not None]

    # -- outages ----------------------------------------------------------------
    def crash(self, lose_data: bool = True) -> None:
        """Redis stops (and, run without persistence, forgets everything)."""
        self.running = False
        if lose_data:
            self.data.clear()
            self.expires.clear()
        for link in self.links:
            link.set_up(False)

    def restart(self) -> None:
        self.running = True
        for link in self.links:
            if link.started:
                link.set_up(True)

    # -- pub/sub ---------------------------------------------------------------
    def publish(self, channel: str, message: str) -> int:
        receivers = [(link, handler) for link, handler in self.channels.get(channel, {}).items() if link.up]
        for link, handler in receivers:
            self.published += 1
            self.clock.callLater(0, link.deliver, channel, handler, message)
        return len(receivers)


class FakeCommands:
    """The txredisapi ``RedisProtocol`` methods the cluster calls, answered at once."""

    def __init__(self, server: FakeRedisServer) -> None:
        self.s = server

    def set(self, key, value, expire=None, pexpire=None, only_if_not_exists=False, only_if_exists=False):
        exists = self.s._live(key) is not None
        if (only_if_not_exists and exists) or (only_if_exists and not exists):
            return succeed(None)
        self.s.data[key] = str(value)
        self.s.expires.pop(key, None)
        if expire is not None:
            self.s._expire(key, expire)
        if pexpire is not None:
            self.s._expire(key, pexpire / 1000)
        return succeed("OK")

    def get(self, key):
        return succeed(self.s._live(key))

    def getset(self, key, value):
        old = self.s._live(key)
        self.s.data[key] = str(value)
        self.s.expires.pop(key, None)
        return succeed(old)

    def delete(self, keys, *args):
        keys = [keys, *args] if isinstance(keys, str) else [*keys, *args]
        removed = sum(1 for key in keys if self.s._live(key) is not None)
        for key in keys:
            self.s.data.pop(key, None)
            self.s.expires.pop(key, None)
        return succeed(removed)

    def exists(self, key):
        return succeed(int(self.s._live(key) is not None))

    def expire(self, key, time):
        if self.s._live(key) is None:
            return succeed(0)
        self.s._expire(key, time)
        return succeed(1)

    def hset(self, key, field, value):
        h = self.s._live(key)
        if h is None:
            h = self.s.data[key] = {}
        new = field not in h
        h[field] = str(value)
        return succeed(int(new))

    def hdel(self, key, fields):
        h = self.s._live(key) or {}
        fields = [fields] if isinstance(fields, str) else list(fields)
        removed = sum(1 for field in fields if h.pop(field, None) is not None)
        if not h:
            self.s.data.pop(key, None)
        return succeed(removed)

    def hget(self, key, field):
        return succeed((self.s._live(key) or {}).get(field))

    def hgetall(self, key):
        return succeed(dict(self.s._live(key) or {}))

    def sadd(self, key, members, *args):
        s = self.s._live(key)
        if s is None:
            s = self.s.data[key] = set()
        members = [members, *args] if isinstance(members, str) else [*members, *args]
        before = len(s)
        s.update(members)
        return succeed(len(s) - before)

    def srem(self, key, members, *args):
        s = self.s._live(key) or set()
        members = [members, *args] if isinstance(members, str) else [*members, *args]
        before = len(s)
        s.difference_update(members)
        if not s:
            self.s.data.pop(key, None)
        return succeed(before - len(s))

    def smembers(self, key):
        return succeed(set(self.s._live(key) or ()))

    def publish(self, channel, message):
        return succeed(self.s.publish(channel, message))

    def ping(self):
        return succeed("PONG")

    def eval(self, script, keys=(), args=()):
        return succeed(SCRIPTS[script](self, list(keys), list(args)))


def _add_session(r: FakeCommands, keys, args):
    h = r.s._live(keys[0])
    if h is None:
        h = r.s.data[keys[0]] = {}
    h[args[0]] = "1"
    r.s._expire(keys[0], int(args[1]))
    return len(h)


def _remove_session(r: FakeCommands, keys, args):
    h = r.s._live(keys[0]) or {}
    h.pop(args[0], None)
    if not h:
        r.s.data.pop(keys[0], None)
    return len(h)


def _delete_if(r: FakeCommands, keys, args):
    if r.s._live(keys[0]) == args[0]:
        r.s.data.pop(keys[0], None)
        return 1
    return 0


def _int(r: FakeCommands, key) -> int:
    return int(r.s._live(key) or 0)


def _pttl(r: FakeCommands, key) -> int:
    if r.s._live(key) is None:
        return -2
    at = r.s.expires.get(key)
    return -1 if at is None else int((at - r.s.clock.seconds()) * 1000)


def _incr(r: FakeCommands, key, by: int = 1) -> int:
    value = _int(r, key) + by
    r.s.data[key] = str(value)
    return value


def _reserve_attempt(r: FakeCommands, keys, args):
    limits = (int(args[0]), int(args[1]))
    for i in range(2):
        failures, pending = _int(r, keys[2 * i]), _int(r, keys[2 * i + 1])
        if failures + pending >= limits[i]:
            return [i + 1, failures, _pttl(r, keys[2 * i])]
    for i in range(2):
        _incr(r, keys[2 * i + 1])
        r.s._expire(keys[2 * i + 1], int(args[2]))
    return [0, 0, 0]


def _settle_attempt(r: FakeCommands, keys, args):
    for i in range(2):
        if _incr(r, keys[2 * i + 1], -1) <= 0:
            r.s.data.pop(keys[2 * i + 1], None)
    if args[0] == "1":
        for i in range(2):
            if _incr(r, keys[2 * i]) == 1:
                r.s._expire(keys[2 * i], int(args[1]))
    if args[2] == "1":
        r.s.data.pop(keys[2], None)
    return 0


def _check_attempts(r: FakeCommands, keys, args):
    failures, pending = _int(r, keys[0]), _int(r, keys[1])
    if failures + pending >= int(args[0]):
        return [1, failures, _pttl(r, keys[0])]
    return [0, 0, 0]


def _rate(r: FakeCommands, keys, args):
    now, interval, span = float(args[0]), float(args[1]), float(args[2])
    tat = max(float(r.s._live(keys[0]) or now), now)
    later = tat + interval
    if later - now > span:
        return math.ceil(later - now - span)
    r.s.data[keys[0]] = repr(later)
    r.s._expire(keys[0], math.ceil(later - now) / 1000)
    return 0


def _claim(r: FakeCommands, keys, args):
    holder = r.s._live(keys[0])
    if holder is not None and holder != args[0]:
        return 0
    r.s.data[keys[0]] = args[0]
    r.s._expire(keys[0], int(args[1]))
    return 1


SCRIPTS = {scripts.ADD_SESSION: _add_session, scripts.REMOVE_SESSION: _remove_session,
           scripts.DELETE_IF: _delete_if, scripts.RESERVE_ATTEMPT: _reserve_attempt,
           scripts.SETTLE_ATTEMPT: _settle_attempt, scripts.CHECK_ATTEMPTS: _check_attempts,
           scripts.RATE: _rate, scripts.CLAIM: _claim}


class FakeLink:
    """One node's link to the fake server, with RedisLink's methods."""

    def __init__(self, server: FakeRedisServer) -> None:
        self.server = server
        self.up = False
        self.started = False
        self.downs = 0
        self.on_up = self.on_down = None
        self._commands = FakeCommands(server)
        self._handlers: dict = {}
        server.links.append(self)

    def watch(self, on_up, on_down) -> None:
        self.on_up, self.on_down = on_up, on_down

    def start(self) -> None:
        self.started = True
        for channel, handler in self._handlers.items():
            self.server.channels.setdefault(channel, {})[self] = handler
        if self.server.running:
            self.server.clock.callLater(0, self.set_up, True)

    def stop(self):
        self.started = False
        for channel in self._handlers:
            self.server.channels.get(channel, {}).pop(self, None)
        self.up = False
        return succeed(None)

    def set_up(self, up: bool) -> None:
        if up == self.up or not self.started:
            return
        self.up = up
        if not up:
            self.downs += 1
        callback = self.on_up if up else self.on_down
        if callback is not None:
            callback()

    def partition(self) -> None:
        """This node can no longer hear the cluster (nor is it told it cannot)."""
        for channel in self._handlers:
            self.server.channels.get(channel, {}).pop(self, None)

    @property
    def redis(self):
        if not self.up:
            raise Unavailable("the cluster's Redis is not reachable")
        return self._commands

    def publish(self, channel: str, message: str):
        if not self.up:
            return fail(Unavailable("the cluster's Redis is not reachable"))
        return succeed(self.server.publish(channel, message))

    def subscribe(self, channel: str, handler):
        self._handlers[channel] = handler
        if self.started:
            self.server.channels.setdefault(channel, {})[self] = handler
        return succeed(None)

    def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel, None)
        self.server.channels.get(channel, {}).pop(self, None)

    def deliver(self, channel, handler, message) -> None:
        if self.up and self.server.channels.get(channel, {}).get(self) is handler:
            self.server.heard.append((self, channel, message))
            handler(message)
