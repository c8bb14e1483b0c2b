"""
The link to a real Redis (integration: the shared one from
``WECOMPANY_TEST_REDIS``, and a private redis-server for restarts), and
the cluster's Lua scripts run by the real Redis against their Python twins
in the fake one: what the unit tests fake is proven here.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.mirror.fakeredis import FakeCommands, FakeRedisServer
from tests.services import PrivateRedis, redis_url, unique_prefix
from wecompany.config import parse_redis
from wecompany.mirror import scripts
from wecompany.mirror.redis import RedisLink

TIMEOUT = 10.0


class LinkCase(TestCase):
    timeout = 60

    def link(self, url: str) -> RedisLink:
        link = RedisLink(reactor, parse_redis("redis", url), ping_interval=0.2, ping_timeout=1.0)
        self.ups, self.downs = [], []
        link.watch(lambda: self.ups.append(reactor.seconds()), lambda: self.downs.append(reactor.seconds()))
        self.addCleanup(link.stop)
        return link

    async def until(self, condition, what: str) -> None:
        deadline = reactor.seconds() + TIMEOUT
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            await deferLater(reactor, 0.01, lambda: None)


class LinkTests(LinkCase):
    async def test_commands_and_pub_sub(self):
        link = self.link(redis_url(self))
        link.start()
        await self.until(lambda: link.up, "the link to come up")
        prefix = unique_prefix("link")
        heard: list = []
        await link.subscribe(prefix + "channel", heard.append)  # fires once Redis confirmed it
        self.assertEqual(await link.publish(prefix + "channel", "hello"), 1)
        await self.until(lambda: heard, "the message")
        self.assertEqual(heard, ["hello"])
        await link.redis.set(prefix + "key", "value", expire=5)
        self.assertEqual(await link.redis.get(prefix + "key"), "value")
        await link.redis.delete(prefix + "key")
        link.unsubscribe(prefix + "channel")

    async def test_down_and_back_with_its_subscriptions(self):
        server = await PrivateRedis(self).start()
        link = self.link(server.url)
        link.start()
        await self.until(lambda: link.up, "the link to come up")
        heard: list = []
        await link.subscribe("news", heard.append)
        server.stop()
        await self.until(lambda: not link.up, "the link to notice Redis is gone")
        self.assertEqual(len(self.downs), 1)
        await server.start()  # the same port, empty
        await self.until(lambda: link.up, "the link to come back")
        self.assertEqual(len(self.ups), 2)
        await self.until(lambda: server_subscribers(server) == 1, "the resubscription")
        await link.publish("news", "after the restart")
        await self.until(lambda: heard, "a message after the restart")
        self.assertEqual(heard, ["after the restart"])


    async def test_a_redis_that_stops_answering_is_left_and_found_again(self):
        import os
        import signal
        server = await PrivateRedis(self).start()
        link = self.link(server.url)
        link.start()
        await self.until(lambda: link.up, "the link to come up")
        os.kill(server.process.pid, signal.SIGSTOP)  # the connections stay open; nothing answers
        try:
            await self.until(lambda: not link.up, "the link to give up on a silent Redis")
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        await self.until(lambda: link.up, "the link to come back")


class LatePongTests(SynchronousTestCase):
    """A PING answered late on a connection that keeps sending is not an outage (no sockets: a fake clock)."""

    def setUp(self):
        from twisted.internet.task import Clock
        self.clock = Clock()
        self.link = RedisLink(self.clock, parse_redis("redis", "redis://127.0.0.1:1/0"), ping_interval=3.0,
                              ping_timeout=3.0)
        self.proto = FakeConnection()
        self.link._commands = self.proto

    def test_silent_is_dropped(self):
        self.link._ping()
        self.clock.advance(3.0)
        self.clock.advance(0)
        self.assertTrue(self.proto.aborted)

    def test_busy_is_kept(self):
        self.link._ping()
        self.clock.advance(2.0)
        self.proto.heard_at = self.clock.seconds()  # pub/sub traffic, the PONG still queued behind it
        self.clock.advance(1.0)
        self.clock.advance(0)
        self.assertFalse(self.proto.aborted)

    def test_what_arrives_in_the_same_turn_as_the_timeout_counts(self):
        # The reactor was behind: the timer and the waiting bytes come due together; reads go first.
        self.link._ping()
        # Due at the same moment, after the PING's timer: as the reactor reads after running its timers.
        self.clock.callLater(3.0, setattr, self.proto, "heard_at", 3.0)
        self.clock.advance(3.0)
        self.assertFalse(self.proto.aborted)


class FakeConnection:
    heard_at = float("-inf")  # as a connection that never brought anything

    def __init__(self):
        self.aborted = False
        self.transport = self

    def ping(self):
        from twisted.internet.defer import Deferred
        return Deferred()

    def abortConnection(self):
        self.aborted = True


def server_subscribers(server: PrivateRedis) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as conn:
        conn.sendall(b"PUBSUB NUMSUB news\r\n")
        reply = conn.recv(256).split(b"\r\n")
    return int(reply[3][1:])  # *2 $4 news :N


class ScriptTwinTests(LinkCase):
    """Each script, step by step, on the real Redis and in the fake: the same answers."""

    async def prepare(self):
        self.real = self.link(redis_url(self))
        self.real.start()
        await self.until(lambda: self.real.up, "the link to come up")
        self.prefix = unique_prefix("scripts")
        self.clock = Clock()
        self.clock.advance(reactor.seconds())
        self.fake = FakeCommands(FakeRedisServer(self.clock))
        self.used: set[str] = set()

        self.addCleanup(self.forget)

    async def forget(self):
        if self.used and self.real.up:
            await self.real.redis.delete(sorted(self.used))

    async def both(self, script: str, keys: list[str], args: list, ttls=()) -> object:
        keys = [self.prefix + k for k in keys]
        self.used.update(keys)
        real = await self.real.redis.eval(script, keys, [str(a) for a in args])
        fake = self.fake.eval(script, keys, [str(a) for a in args]).result
        real, fake = _normal(real), _normal(fake)
        for index in ttls:  # milliseconds left: the real clock moved a little meanwhile
            self.assertTrue(0 <= fake[index] - real[index] < 2000 or real[index] == fake[index], (real, fake))
            real[index] = fake[index]
        self.assertEqual(real, fake, script)
        return real

    async def test_sessions(self):
        await self.prepare()
        self.assertEqual(await self.both(scripts.ADD_SESSION, ["u"], ["n1/s1", 60]), 1)
        self.assertEqual(await self.both(scripts.ADD_SESSION, ["u"], ["n2/s2", 60]), 2)
        self.assertEqual(await self.both(scripts.REMOVE_SESSION, ["u"], ["n1/s1"]), 1)
        self.assertEqual(await self.both(scripts.REMOVE_SESSION, ["u"], ["n2/s2"]), 0)
        await self.real.redis.set(self.prefix + "lock", "mine")
        self.fake.set(self.prefix + "lock", "mine")
        self.assertEqual(await self.both(scripts.DELETE_IF, ["lock"], ["theirs"]), 0)
        self.assertEqual(await self.both(scripts.DELETE_IF, ["lock"], ["mine"]), 1)

    async def test_attempts(self):
        await self.prepare()
        keys = ["fa", "pa", "ft", "pt"]
        reserve = (scripts.RESERVE_ATTEMPT, keys, [3, 2, 120])
        self.assertEqual(await self.both(*reserve), [0, 0, 0])
        self.assertEqual(await self.both(*reserve), [0, 0, 0])
        self.assertEqual(await self.both(*reserve, ttls=(2,)), [2, 0, -2])  # the target: two under way
        await self.both(scripts.SETTLE_ATTEMPT, keys, [1, 60, 0])  # one failed
        await self.both(scripts.SETTLE_ATTEMPT, keys, [1, 60, 0])  # and the other
        verdict = await self.both(*reserve, ttls=(2,))
        self.assertEqual(verdict[:2], [2, 2])
        self.assertEqual(await self.both(scripts.CHECK_ATTEMPTS, ["fa", "pa"], [3]), [0, 0, 0])
        self.assertEqual((await self.both(scripts.CHECK_ATTEMPTS, ["fa", "pa"], [2], ttls=(2,)))[:2], [1, 2])
        await self.both(scripts.RESERVE_ATTEMPT, ["fa", "pa", "other-f", "other-p"], [5, 5, 120])
        await self.both(scripts.SETTLE_ATTEMPT, ["fa", "pa", "ft", "pt"], [0, 60, 1])  # a success forgives
        self.assertEqual(await self.both(*reserve), [0, 0, 0])

    async def test_rate(self):
        await self.prepare()
        now = 1_800_000_000_000
        # A burst of three, then one a second.
        for step, expected in ((0, 0), (0, 0), (0, 0), (0, 1000), (500, 500), (1000, 0), (1000, 0), (0, 500)):
            now += step
            self.assertEqual(await self.both(scripts.RATE, ["r"], [now, 1000.0, 3000.0]), expected, step)

    async def test_claims(self):
        await self.prepare()
        self.assertEqual(await self.both(scripts.CLAIM, ["owner"], ["p1", 30]), 1)
        self.assertEqual(await self.both(scripts.CLAIM, ["owner"], ["p1", 30]), 1)
        self.assertEqual(await self.both(scripts.CLAIM, ["owner"], ["p2", 30]), 0)


def _normal(value):
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return int(value)



class ParserTests(SynchronousTestCase):
    def test_replies_are_parsed_by_hiredis(self):
        # txredisapi's pure-Python parser reads each bulk string of a pub/sub
        # message in a reactor turn of its own: too slow for a busy cluster.
        import txredisapi
        self.assertTrue(issubclass(txredisapi.SubscriberProtocol, txredisapi.HiredisProtocol))
        self.assertTrue(issubclass(txredisapi.RedisProtocol, txredisapi.HiredisProtocol))
