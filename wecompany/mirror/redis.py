"""
The connections a node keeps to Redis, as Synapse keeps its own: one for
commands and publishing, one that only subscribes.

Both are made through the injected reactor (``ClientService`` with an
endpoint on it), reconnect for ever with exponential backoff, and are
checked with ``PING``: one that does not answer within ``ping_timeout``,
and brought nothing else meanwhile, is dropped and made again (a busy one
is late, not dead). The link is *up* while both connections are; the
cluster is told each time it goes down and comes back, so it can report the
outage and publish its state again.

txredisapi provides the Redis protocol (``RedisProtocol``,
``SubscriberProtocol``); its own connection factories are not used, as they
connect and time through the global reactor.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wecompany.errors import Unavailable


class _Factory(Factory):
    """What txredisapi's protocol asks of its factory, without txredisapi's connecting."""

    noisy = False

    def __init__(self, protocol_class, link: "RedisLink") -> None:
        self.protocol_class = protocol_class
        self.link = link
        self.isLazy = True

    def buildProtocol(self, addr):
        address = self.link.address
        proto = self.protocol_class(password=address.password, dbid=address.db or None, convertNumbers=False)
        proto.factory = self
        return proto

    # Called by the protocol when AUTH or SELECT fails.
    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        self.link.log.error("Redis refused the connection: {message}", message=message)


class RedisLink:
    """
    :param reactor: connects, times and pings through it.
    :param address: a :class:`~wecompany.config.RedisAddress`.
    """

    log = Logger()

    def __init__(self, reactor, address, *, ping_interval: float = 3.0, ping_timeout: float = 3.0) -> None:
        import txredisapi  # imported only when a node is clustered: it imports the global reactor

        self.reactor = reactor
        self.address = address
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.on_up: Callable[[], None] | None = None
        self.on_down: Callable[[], None] | None = None
        self.up = False
        self._stopping = False
        self.downs = 0  # how many times the link went down (metrics)
        self._commands = None
        self._subscriber = None
        self._handlers: dict[str, Callable[[str], None]] = {}
        link = self

        class Commands(txredisapi.RedisProtocol):
            heard_at = float("-inf")  # when the connection last brought anything (it is alive, however busy)

            def dataReceived(self, data, *more):  # txredisapi calls it again itself, with an argument more
                self.heard_at = link.reactor.seconds()
                super().dataReceived(data, *more)

        class Subscriber(txredisapi.SubscriberProtocol):
            heard_at = float("-inf")

            def dataReceived(self, data, *more):  # txredisapi calls it again itself, with an argument more
                self.heard_at = link.reactor.seconds()
                super().dataReceived(data, *more)

            def messageReceived(self, pattern, channel, message):
                link._dispatch(channel, message)

        self._services = {
            "commands": self._service(Commands, "commands"),
            "subscriber": self._service(Subscriber, "subscriber"),
        }
        self._connection_error = txredisapi.ConnectionError
        if not issubclass(txredisapi.SubscriberProtocol, txredisapi.HiredisProtocol):
            # Without hiredis, txredisapi parses replies in Python, a reactor turn per bulk string.
            self.log.warn("hiredis is not installed: the subscription to Redis will fall behind under load "
                          "(pip install hiredis)")
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor

    def _service(self, protocol_class, role: str) -> ClientService:
        endpoint = TCP4ClientEndpoint(self.reactor, self.address.host, self.address.port, timeout=5)
        return ClientService(endpoint, _Factory(protocol_class, self), clock=self.reactor,
                             retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=10.0),
                             prepareConnection=lambda proto: self._connected(proto, role))

    # -- life cycle -----------------------------------------------------------
    def watch(self, on_up: Callable[[], None], on_down: Callable[[], None]) -> None:
        """Call ``on_up()`` each time the link comes up, ``on_down()`` each time it goes down (from start on)."""
        self.on_up, self.on_down = on_up, on_down

    def start(self) -> None:
        for service in self._services.values():
            service.startService()
        self._pinger.start(self.ping_interval, now=False)

    def stop(self) -> Deferred:
        self._stopping = True
        if self._pinger.running:
            self._pinger.stop()
        return DeferredList([service.stopService() for service in self._services.values()], consumeErrors=True)

    def _connected(self, proto, role: str) -> Deferred:
        # Ready once AUTH and SELECT are done; ClientService hands it out after that.
        d = proto.whenConnected()
        d.addCallback(self._ready, role)
        return d

    def _ready(self, proto, role: str):
        setattr(self, f"_{role}", proto)
        proto.whenDisconnected().addCallback(lambda _: self._lost(proto, role))
        if role == "subscriber" and self._handlers:
            proto.subscribe(list(self._handlers)).addErrback(self._failed, "resubscribing to Redis channels")
        self._update()
        return proto

    def _lost(self, proto, role: str) -> None:
        if getattr(self, f"_{role}") is proto:
            setattr(self, f"_{role}", None)
        self._update()

    def _update(self) -> None:
        up = self._commands is not None and self._subscriber is not None
        if up == self.up:
            return
        self.up = up
        if up:
            self.log.info("Redis at {address} is up", address=str(self.address))
            if self.on_up is not None:
                self.on_up()
        elif self._stopping:
            self.log.info("the connections to Redis at {address} are closed", address=str(self.address))
        else:
            self.downs += 1
            self.log.warn("Redis at {address} is down: this node serves its own clients only until it is back",
                          address=str(self.address))
            if self.on_down is not None:
                self.on_down()

    def _ping(self) -> None:
        for proto in (self._commands, self._subscriber):
            if proto is None:
                continue
            sent_at = self.reactor.seconds()
            d = proto.ping()
            d.addTimeout(self.ping_timeout, self.reactor)
            d.addErrback(self._unanswered, proto, sent_at)

    def _unanswered(self, failure, proto, sent_at: float) -> None:
        # A PONG queued behind a burst of pub/sub traffic, or a reactor that
        # was itself behind, is late, not lost: dropping the connection then
        # would lose every message published meanwhile (pub/sub keeps
        # nothing). So the connection is dropped only if nothing at all came
        # from it since the PING, looked at after this reactor turn's reads.
        self.reactor.callLater(0, self._recheck, proto, sent_at, failure.getErrorMessage())

    def _recheck(self, proto, sent_at: float, why: str) -> None:
        if proto.heard_at >= sent_at:
            self.log.info("Redis answered PING late but is sending: the connection stays")
            return
        self.log.warn("Redis did not answer PING in time ({why}), and sent nothing since: reconnecting", why=why)
        if proto.transport is not None:
            proto.transport.abortConnection()

    # -- use ----------------------------------------------------------------------
    @property
    def redis(self):
        """The command connection (txredisapi's ``RedisProtocol`` methods); :class:`Unavailable` when down."""
        if self._commands is None:
            raise Unavailable("the cluster's Redis is not reachable")
        return self._commands

    def publish(self, channel: str, message: str) -> Deferred:
        if self._commands is None:
            return fail(Unavailable("the cluster's Redis is not reachable"))
        return self._commands.publish(channel, message)

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> Deferred:
        """
        Call ``handler(message)`` for each message on ``channel`` (kept
        across reconnections). Fires once Redis confirmed the subscription
        (at once when already subscribed, or while the link is down: the
        channel is subscribed again when it comes back).
        """
        fresh = channel not in self._handlers
        self._handlers[channel] = handler
        if not fresh or self._subscriber is None:
            return succeed(None)
        d = self._subscriber.subscribe(channel)
        d.addErrback(self._failed, f"subscribing to {channel}")
        return d

    def unsubscribe(self, channel: str) -> None:
        if self._handlers.pop(channel, None) is not None and self._subscriber is not None:
            self._subscriber.unsubscribe(channel).addErrback(self._failed, f"unsubscribing from {channel}")

    def _failed(self, failure, what: str) -> None:
        # A connection lost meanwhile is the link's to report (once, as "down"); its
        # subscriptions are made again when it is back.
        if failure.check(self._connection_error) is None:
            self.log.failure("{what} failed", failure, what=what)

    def _dispatch(self, channel, message) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(message)
        except Exception:
            self.log.failure("handling a message on {channel} failed", channel=channel)
