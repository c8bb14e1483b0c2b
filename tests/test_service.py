"""
Start-up and shutdown order of :class:`wecompany.service.WeCompanyService`,
and the tree :func:`wecompany.tap.build_service` composes; no sockets, no
threads, no wall time (``MemoryReactorClock``).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from types import SimpleNamespace

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from tests.helpers import FakeClient
from wecompany.config import Config
from wecompany.connections import CappedFactory
from wecompany.control import ControlFactory
from wecompany.domain.calls import CallService
from wecompany.domain.events import CallEnded
from wecompany.domain.stats import Stats
from wecompany.errors import Unavailable
from wecompany.runtime import CollectorTuning
from wecompany.service import CannotStart, Listener, WeCompanyService, listen_failure
from wecompany.store.memory import MemoryStore
from wecompany.tcp.protocol import WeCompanyFactory


class GatedStore:
    """A MemoryStore whose start completes when the test says so; records start and stop."""

    def __init__(self, events: list, start_error: Exception | None = None) -> None:
        self.events = events
        self.inner = MemoryStore()
        self.gate: Deferred = Deferred()
        self.start_error = start_error

    prepare_error: Exception | None = None

    def prepare(self) -> None:
        self.events.append("store prepare")
        if self.prepare_error is not None:
            raise self.prepare_error

    def start(self) -> Deferred:
        self.events.append("store start")
        if self.start_error is not None:
            return fail(self.start_error)
        return self.gate.addCallback(lambda _: self.inner.start()).addCallback(
            lambda _: self.events.append("store ready"))

    def stop(self) -> Deferred:
        self.events.append("store stop")
        return self.inner.stop()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class FakePort:
    def __init__(self, name: str, events: list) -> None:
        self.name = name
        self.events = events

    def stopListening(self):
        self.events.append(f"{self.name} stop listening")
        return succeed(None)

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 4000 + len(self.name))


class FakeEndpoint:
    """An IStreamServerEndpoint that records ``listen`` and answers with ``result``."""

    def __init__(self, name: str, events: list, result: Deferred | None = None) -> None:
        self.name = name
        self.events = events
        self.result = result

    def listen(self, factory):
        self.events.append(f"{self.name} listen")
        if self.result is not None:
            return self.result
        return succeed(FakePort(self.name, self.events))


class RecordingCalls(CallService):
    def __init__(self, events: list, clock) -> None:
        super().__init__(clock)
        self.events = events

    def end_all(self, reason: str = "shutdown") -> None:
        self.events.append(f"end calls ({self.count})")
        super().end_all(reason)


class RecordingFactory(WeCompanyFactory):
    def __init__(self, events: list, clock, calls) -> None:
        # Only the calls and the clock of a domain take part in a shutdown.
        super().__init__(SimpleNamespace(chat=None, accounts=None, calls=calls, files=None, auth_limiter=None,
                                         clock=clock, stats=Stats()))
        self.events = events

    def shutdown(self, grace: float = 3.0) -> Deferred:
        self.events.append(f"factory shutdown ({len(self.connections)} connections)")
        d = super().shutdown(grace)
        d.addCallback(lambda r: (self.events.append("connections closed"), r)[1])
        return d


class SilentTransport:
    """A transport whose connection goes away only when aborted."""

    def __init__(self, proto) -> None:
        self.proto = proto

    def abortConnection(self) -> None:
        self.proto.gone()


class StubbornConnection:
    """A connected client that ignores the shutdown notice until it is aborted."""

    def __init__(self, factory: WeCompanyFactory) -> None:
        self.factory = factory
        self.transport = SilentTransport(self)
        self.told = None
        factory.connections.add(self)

    def disconnect(self, error) -> None:
        self.told = error

    def gone(self) -> None:
        self.factory.connections.discard(self)
        self.factory.connection_closed(self)


class FakePool:
    def __init__(self, events: list) -> None:
        self.events = events
        self.started = False

    def start(self) -> None:
        self.events.append("pool start")
        self.started = True

    def stop(self) -> None:
        self.events.append("pool stop")
        self.started = False


class FakeProcessPool:
    """Stands in for EngineProcesses: its stop is a Deferred the test fires."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.started = False
        self.stopped = Deferred()

    def start(self) -> None:
        self.events.append("processes start")
        self.started = True

    def stop(self) -> Deferred:
        self.events.append("processes stop")
        return self.stopped


class RecordingCollector:
    """Stands in for the gc module."""

    def __init__(self, events: list) -> None:
        self.events = events

    def set_threshold(self, *threshold) -> None:
        self.events.append(f"gc threshold {threshold}")

    def collect(self) -> None:
        self.events.append("gc collect")

    def freeze(self) -> None:
        self.events.append("gc freeze")


class WeCompanyServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list = []
        self.clock = MemoryReactorClock()
        self.store = GatedStore(self.events)
        self.calls = RecordingCalls(self.events, self.clock)
        self.factory = RecordingFactory(self.events, self.clock, self.calls)
        self.endpoints = [FakeEndpoint("tcp", self.events), FakeEndpoint("http", self.events)]

    def make_service(self, store=None, collector=None, files=None) -> WeCompanyService:
        return WeCompanyService(
            store=store or self.store,
            listeners=[Listener(e.name, e, Factory()) for e in self.endpoints],
            tcp_factory=self.factory, calls=self.calls, threadpools=[FakePool(self.events)],
            reactor=self.clock, shutdown_grace=3.0, collector=collector, files=files)

    def start(self, service) -> None:
        """As twistd does: privileged start, then start."""
        service.privilegedStartService()
        service.startService()

    def started_service(self) -> WeCompanyService:
        service = self.make_service()
        self.start(service)
        self.store.gate.callback(None)
        self.successResultOf(service.ready)
        del self.events[:]
        return service

    def test_schema_prepared_and_ports_listening_before_the_reactor(self) -> None:
        service = self.make_service()
        service.privilegedStartService()
        self.assertEqual(self.events, ["store prepare", "tcp listen", "http listen"])
        service.startService()
        self.assertEqual(self.events[3:], ["pool start", "store start"])
        self.assertNoResult(service.ready)
        self.store.gate.callback(None)
        self.assertIsNone(self.successResultOf(service.ready))

    def test_each_listener_says_where_it_listens(self) -> None:
        """One line per listener, naming its port: the e2e harness (tests/e2e/daemon.py) reads them."""
        from twisted.logger import capturedLogs, formatEvent
        service = self.make_service()
        with capturedLogs() as events:
            service.privilegedStartService()
        lines = [formatEvent(e) for e in events if "listening on" in e.get("log_format", "")]
        self.assertEqual(lines, ["listening on port 4003 for tcp", "listening on port 4004 for http"])

    def test_collector_tuned_at_start_and_start_up_frozen_once_ready(self) -> None:
        service = self.make_service(collector=CollectorTuning(collector=RecordingCollector(self.events)))
        self.start(service)
        self.assertEqual(self.events[:2], ["gc threshold (10000, 10, 10)", "store prepare"])
        self.assertNotIn("gc freeze", self.events)
        self.store.gate.callback(None)
        self.successResultOf(service.ready)
        self.assertEqual(self.events[-2:], ["gc collect", "gc freeze"])

    def test_interrupted_uploads_removed_once_the_store_runs(self) -> None:
        events = self.events

        class Files:
            async def remove_interrupted(self, started_at):
                events.append(f"remove uploads begun before {started_at}")
                return 0

        self.clock.advance(1000)
        service = self.make_service(files=Files())
        self.start(service)
        self.clock.advance(5)  # the store takes a while to start
        self.assertNotIn("remove uploads begun before 1000.0", self.events)
        self.store.gate.callback(None)
        self.successResultOf(service.ready)
        self.assertEqual(self.events[-1], "remove uploads begun before 1000.0")

    def test_failing_housekeeping_does_not_stop_the_start(self) -> None:
        class Files:
            async def remove_interrupted(self, started_at):
                raise OSError("media directory unreadable")

        service = self.make_service(files=Files())
        self.start(service)
        self.store.gate.callback(None)
        self.successResultOf(service.ready)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_prepare_failure_raises_and_nothing_listens(self) -> None:
        self.store.prepare_error = RuntimeError("schema version 9 is newer than this server knows")
        service = self.make_service()
        self.assertRaises(RuntimeError, service.privilegedStartService)
        self.assertFalse([e for e in self.events if "listen" in e])

    def test_a_database_the_operator_must_fix_is_one_line(self) -> None:
        """Unreachable, or migrated by a newer server: CannotStart (one line on stderr), not a traceback."""
        from wecompany.store.postgres import PreparationError
        from wecompany.store.schema import SchemaTooNew
        for error in (PreparationError("cannot connect to the PostgreSQL database postgresql://wc@db/x: refused"),
                      SchemaTooNew("the database is at schema version 9; this server knows up to 4")):
            self.store.prepare_error = error
            del self.events[:]
            raised = self.assertRaises(CannotStart, self.make_service().privilegedStartService)
            self.assertEqual((str(raised), raised.__cause__), (str(error), error))
            self.assertFalse([e for e in self.events if "listen" in e])
        self.flushLoggedErrors()

    def test_listen_failure_raises_and_stops_earlier_ports(self) -> None:
        import errno
        self.endpoints[1].result = fail(CannotListenError("127.0.0.1", 8000, OSError(errno.EADDRINUSE, "in use")))
        service = self.make_service()
        error = self.assertRaises(CannotStart, service.privilegedStartService)
        self.assertEqual(self.events[-3:], ["tcp listen", "http listen", "tcp stop listening"])
        self.assertEqual(str(error), "cannot listen on http: address already in use")
        self.assertIsInstance(error.__cause__, CannotListenError)

    def test_a_listen_failure_names_the_endpoint_and_its_option(self) -> None:
        import errno
        listener = Listener("http", None, None, description="tcp:80", option="http-port")
        for number, text in ((errno.EADDRINUSE, "address already in use"), (errno.EACCES, "permission denied")):
            failure = listen_failure(listener, CannotListenError("", 80, OSError(number, "x")))
            self.assertEqual(str(failure), f"cannot listen on tcp:80 (http-port): {text}")
        self.assertEqual(str(listen_failure(listener, ValueError("no such interface"))),
                         "cannot listen on tcp:80 (http-port): no such interface")

    def test_ready_waits_for_a_listener_that_listens_later(self) -> None:
        later: Deferred = Deferred()
        self.endpoints[0].result = later
        service = self.make_service()
        self.start(service)
        self.store.gate.callback(None)
        self.assertNoResult(service.ready)
        later.callback(FakePort("tcp", self.events))
        self.successResultOf(service.ready)

    def test_stop_stops_a_port_that_listened_later(self) -> None:
        later: Deferred = Deferred()
        self.endpoints[0].result = later
        service = self.make_service()
        self.start(service)
        self.store.gate.callback(None)
        later.callback(FakePort("tcp", self.events))
        self.successResultOf(service.ready)
        self.successResultOf(service.stopService())
        self.assertIn("tcp stop listening", self.events)

    def test_listen_failing_later_fails_start(self) -> None:
        """An endpoint may fail asynchronously; start-up must fail all the same."""
        later: Deferred = Deferred()
        self.endpoints[0].result = later
        service = self.make_service()
        self.start(service)
        self.store.gate.callback(None)
        later.errback(CannotListenError("127.0.0.1", 8888, OSError("in use")))
        self.failureResultOf(service.ready, CannotListenError)
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)

    def test_stop_order(self) -> None:
        """Stop listening, end calls, tell and close clients, then stop the store and the pools."""
        service = self.started_service()
        caller, callee = FakeClient("1"), FakeClient("2")
        self.calls.place(caller, callee.identity, callee, is_video=False)

        d = service.stopService()
        self.successResultOf(d)
        self.assertEqual(self.events, [
            "tcp stop listening", "http stop listening",
            "end calls (1)",
            "factory shutdown (0 connections)", "connections closed",
            "store stop", "pool stop",
        ])
        for party in (caller, callee):
            self.assertEqual(party.events[-1], CallEnded(party.events[-1].call_id, "shutdown"))

    def test_contacts_are_told_before_the_store_closes(self) -> None:
        """The sessions that closed announce themselves offline (reading the store): stop waits for that."""
        service = self.started_service()
        events, announced = self.events, Deferred()

        class Chat:
            def settle(self):
                events.append("chat settle")
                return announced

        service.chat = Chat()
        d = service.stopService()
        self.assertNoResult(d)
        self.assertEqual(self.events[-1], "chat settle")
        self.assertNotIn("store stop", self.events)
        announced.callback(None)
        self.successResultOf(d)
        self.assertEqual(self.events[-4:], ["connections closed", "chat settle", "store stop", "pool stop"])

    def test_ai_worker_processes_start_with_the_reactor_and_stop_after_the_store(self) -> None:
        processes = FakeProcessPool(self.events)
        service = WeCompanyService(
            store=self.store, listeners=[], tcp_factory=self.factory, calls=self.calls,
            threadpools=[FakePool(self.events)], process_pools=[processes], reactor=self.clock)
        self.start(service)
        self.assertEqual(self.events[:3], ["store prepare", "pool start", "processes start"])
        self.store.gate.callback(None)
        self.successResultOf(service.ready)
        del self.events[:]
        d = service.stopService()
        self.assertNoResult(d)  # waits for the workers to be gone
        self.assertEqual(self.events[-2:], ["store stop", "processes stop"])
        processes.stopped.callback(None)
        self.successResultOf(d)
        self.assertEqual(self.events[-1], "pool stop")

    def test_a_step_that_fails_does_not_skip_the_rest(self) -> None:
        """A stop step raising (closing WebSockets once did) is logged; the pools still stop, so the process exits."""
        service = self.started_service()

        class BrokenSignaling:
            def shutdown(self):
                raise RuntimeError("invalid close code")

        service.signaling = BrokenSignaling()
        self.successResultOf(service.stopService())
        self.assertEqual(self.events[-2:], ["store stop", "pool stop"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_store_stops_only_after_clients_are_gone(self) -> None:
        service = self.started_service()
        stubborn = StubbornConnection(self.factory)

        d = service.stopService()
        self.assertNoResult(d)
        self.assertIsInstance(stubborn.told, Unavailable)
        self.assertEqual(stubborn.told.code, 503)
        self.assertNotIn("store stop", self.events)

        self.clock.advance(2.9)
        self.assertNotIn("store stop", self.events)
        self.clock.advance(0.1)  # the grace period is over: the straggler is aborted
        self.successResultOf(d)
        self.assertEqual(self.events[-3:], ["connections closed", "store stop", "pool stop"])
        self.assertEqual(self.factory.connections, set())

    def test_store_start_failure_fails_ready_and_stops_the_reactor(self) -> None:
        store = GatedStore(self.events, start_error=RuntimeError("pool failed"))
        service = self.make_service(store)
        self.clock.running = True
        self.start(service)
        self.failureResultOf(service.ready, RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(self.clock.running)  # MemoryReactor.stop
        self.assertEqual(len(self.clock.triggers["after"]["shutdown"]), 1)

    def test_stop_while_the_store_starts(self) -> None:
        """A stop during start-up waits for the store, stops the ports, and leaves nothing listening."""
        later: Deferred = Deferred()
        self.endpoints[1].result = later
        service = self.make_service()
        self.start(service)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.store.gate.callback(None)
        self.successResultOf(stopped)
        later.callback(FakePort("http", self.events))
        self.assertIn("tcp stop listening", self.events)
        self.assertIn("http stop listening", self.events)
        self.assertEqual(service.ports, {})


class BuildServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Short enough for the control socket's Unix address (trial's own temporary paths may not be).
        base = tempfile.mkdtemp(prefix="wc-")
        self.addCleanup(shutil.rmtree, base, True)
        self.data_dir = os.path.join(base, "data")
        self.reactor = MemoryReactorClock()

    def build(self, **options):
        from wecompany.tap import build_service
        options = {"data_dir": self.data_dir, "port": "tcp:7001:interface=127.0.0.1",
                   "http_port": "tcp:7002", **options}
        return build_service(Config.from_sources(options, {}, None), self.reactor)

    def test_listeners_for_the_configured_endpoints(self) -> None:
        service = self.build(max_frame="64K", login_timeout="2", idle_timeout="30", ring_timeout="5",
                             max_call="60")
        self.assertIsInstance(service, WeCompanyService)
        self.assertEqual([listener.name for listener in service.listeners], ["tcp", "http", "control"])
        tcp, http, control = service.listeners
        control.endpoint.listen(control.factory)
        # The control socket: in the data directory, private, with a lock file (wantPID).
        path, factory, _, mode, want_pid = self.reactor.unixServers[-1]
        self.assertEqual((path, mode, want_pid), (os.path.join(self.data_dir, "control.sock"), 0o600, True))
        self.assertIsInstance(factory, ControlFactory)
        self.assertIs(factory.admin.accounts, service.tcp_factory.accounts)  # the daemon's own domain
        self.assertEqual(self.reactor.tcpServers, [])  # nothing listens until the service starts
        for listener_, port, interface in ((tcp, 7001, "127.0.0.1"), (http, 7002, "")):
            self.assertIsInstance(listener_.endpoint, TCP4ServerEndpoint)
            # Listening shows where, and on which reactor (nothing listened before this).
            listener_.endpoint.listen(listener_.factory)
            self.assertEqual(self.reactor.tcpServers[-1][0::3], (port, interface))
        self.assertIs(tcp.factory, service.tcp_factory)
        self.assertIsInstance(tcp.factory, WeCompanyFactory)
        self.assertIsInstance(http.factory, CappedFactory)  # connections per address counted
        self.assertIsInstance(http.factory.wrappedFactory, Site)
        self.assertEqual((http.factory.counter.limit, tcp.factory.connection_cap.limit), (256, 256))
        self.assertEqual(http.factory.wrappedFactory.timeouts.header_timeout, 20.0)
        factory = service.tcp_factory
        self.assertEqual((factory.max_frame, factory.login_timeout, factory.idle_timeout),
                         (64 * 1024, 2.0, 30.0))
        self.assertIs(factory.calls, service.calls)
        self.assertEqual((service.calls.ring_timeout, service.calls.max_duration), (5.0, 60.0))
        self.assertIsNone(service.recorder)
        self.assertTrue(service.handle_signals)
        self.assertEqual(service.collector, CollectorTuning())  # the daemon's, on the real gc module
        self.assertIsNotNone(service.collector.pauses)  # timing every collection, for the metrics
        self.assertIsNotNone(service.files)
        self.assertEqual(service.reactor, self.reactor)
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "jwt.secret")))

    def test_trusted_proxies_reach_every_transport(self) -> None:
        from wecompany.proxyprotocol import ProxyHeaderFactory
        service = self.build(trusted_proxies="10.0.0.0/8", port="haproxy:tcp:7001:interface=127.0.0.1")
        tcp, http, _ = service.listeners
        # The PROXY protocol is ours (trusted peers only), on the plain endpoint inside haproxy:.
        self.assertIsInstance(tcp.factory, ProxyHeaderFactory)
        self.assertIs(tcp.factory.wrappedFactory, service.tcp_factory)
        self.assertIsInstance(tcp.endpoint, TCP4ServerEndpoint)
        self.assertIsInstance(http.factory, CappedFactory)  # no haproxy: on it, so no PROXY protocol
        site = http.factory.wrappedFactory
        for trusted in (tcp.factory.trusted, site.trusted_proxies, http.factory.counter.exempt,
                        service.tcp_factory.connection_cap.exempt, service.signaling.trusted_proxies):
            self.assertTrue(trusted.trusts("10.1.2.3"))
            self.assertFalse(trusted.trusts("192.0.2.1"))
        self.assertEqual(service.startup_warnings, [])

    def test_a_proxy_protocol_port_without_trusted_proxies_is_warned_about(self) -> None:
        from wecompany.proxyprotocol import ProxyHeaderFactory
        service = self.build(http_port="haproxy:tcp:7002")
        self.assertNotIsInstance(service.listeners[1].factory, ProxyHeaderFactory)  # Twisted's wrapper, as before
        [warning] = service.startup_warnings
        self.assertIn("--http-port haproxy:tcp:7002: a PROXY header is believed from any peer", warning)

    def test_a_fresh_data_directory_is_private_whatever_the_umask(self) -> None:
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        service = self.build()
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.data_dir, "jwt.secret")).st_mode), 0o600)
        self.assertEqual(service.startup_warnings, [])

    def test_a_data_directory_open_to_others_is_warned_about(self) -> None:
        os.makedirs(self.data_dir)
        os.chmod(self.data_dir, 0o755)
        database = os.path.join(self.data_dir, "wecompany.sqlite3")
        with open(database, "wb"):
            pass
        os.chmod(database, 0o644)
        warnings = self.build().startup_warnings
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn(f"{self.data_dir} is open to other local users (mode 0755)", warnings[0])
        self.assertIn(f"chmod 600 {database}", warnings[1])
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o755)  # warned about, not changed

    def test_a_data_directory_too_long_for_a_control_socket_is_warned_about(self) -> None:
        self.data_dir = os.path.join(self.data_dir, "d" * 100)
        service = self.build()
        self.assertEqual([listener.name for listener in service.listeners], ["tcp", "http"])
        [warning] = service.startup_warnings
        self.assertIn("no control socket", warning)
        self.assertIn("too long for a Unix socket", warning)

    def test_listening_uses_the_injected_reactor(self) -> None:
        service = self.build()
        service.privilegedStartService()
        self.assertEqual([(port, interface) for port, _, _, interface in self.reactor.tcpServers],
                         [(7001, "127.0.0.1"), (7002, "")])
        self.assertIs(self.reactor.tcpServers[0][1], service.tcp_factory)

    def test_a_metrics_port_serves_metrics_apart_from_the_http_site(self) -> None:
        from treq.testing import StubTreq
        service = self.build(metrics_port="tcp:9100:interface=127.0.0.1")
        self.assertEqual([listener.name for listener in service.listeners], ["tcp", "http", "metrics", "control"])
        metrics = service.listeners[2]
        self.assertEqual((metrics.option, metrics.description), ("metrics-port", "tcp:9100:interface=127.0.0.1"))
        self.assertFalse(metrics.factory.noisy)
        site = service.listeners[1].factory.wrappedFactory

        def get(resource, path):
            response = self.successResultOf(StubTreq(resource).get(f"http://localhost{path}"))
            return response.code, self.successResultOf(response.content())

        code, body = get(metrics.factory.resource, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"wecompany_http_requests", body)
        self.assertEqual(get(metrics.factory.resource, "/health")[0], 404)  # only the metrics there
        self.assertEqual(get(site.resource, "/metrics")[0], 404)
        service.privilegedStartService()
        self.assertEqual([(port, interface) for port, _, _, interface in self.reactor.tcpServers],
                         [(7001, "127.0.0.1"), (7002, ""), (9100, "127.0.0.1")])

    def test_without_a_metrics_port_metrics_are_on_the_http_site(self) -> None:
        from treq.testing import StubTreq
        service = self.build()
        self.assertEqual([listener.name for listener in service.listeners], ["tcp", "http", "control"])
        site = service.listeners[1].factory.wrappedFactory
        response = self.successResultOf(StubTreq(site.resource).get("http://localhost/metrics"))
        self.assertEqual(response.code, 200)

    def test_record_calls(self) -> None:
        service = self.build(record_calls=os.path.join(self.data_dir, "recordings"))
        self.assertIsNotNone(service.recorder)
        self.assertIs(service.calls.recorder, service.recorder)

    def test_both_ports_ephemeral(self) -> None:
        """
        Port 0 means "any free port": two listeners on tcp:0 never collide, so
        this must be accepted (it is how tests run the daemon on free ports).
        """
        service = self.build(port="tcp:0", http_port="tcp:0")
        service.privilegedStartService()
        self.assertEqual([port for port, _, _, _ in self.reactor.tcpServers], [0, 0])

    def test_postgresql_url_builds_on_the_postgresql_store(self) -> None:
        from wecompany.store.postgres import PostgreSQLStore
        os.makedirs(self.data_dir, mode=0o700)
        stale = os.path.join(self.data_dir, "wecompany.sqlite3")
        with open(stale, "wb"):
            pass
        os.chmod(stale, 0o644)
        service = self.build(database="postgresql://wc:secret@db/wecompany")
        self.assertIsInstance(service.store, PostgreSQLStore)
        self.assertEqual(service.store.address, "postgresql://wc@db/wecompany")
        self.assertNotIn("secret", repr(service.store))
        self.assertEqual(service.startup_warnings, [])  # a SQLite file it does not use is none of its business

    def test_malformed_postgresql_url_is_a_usage_error(self) -> None:
        error = self.assertRaises(usage.UsageError, self.build, database="postgresql://wc:secret@db/wecompany?x=1")
        self.assertIn("--database", str(error))
        self.assertIn("is not a usable PostgreSQL URL", str(error))
        self.assertNotIn("secret", str(error))
        self.assertFalse(os.path.exists(self.data_dir))


    def test_a_cluster_needs_one_token_secret(self) -> None:
        error = self.assertRaises(usage.UsageError, self.build, redis="redis://127.0.0.1:6379/0")
        self.assertIn("--jwt-secret", str(error))
        self.assertFalse(os.path.exists(self.data_dir))

    def test_a_clustered_node(self) -> None:
        service = self.build(redis="redis://127.0.0.1:1/0", jwt_secret="s" * 32, node_id="n1")
        node = service.cluster_node
        self.assertIsNotNone(node)
        self.assertEqual((node.cluster.node_id, node.cluster.link.address.port), ("n1", 1))
        self.assertIs(node.rooms.mirror.cluster, node.cluster)
        self.assertIn("must share one database", service.startup_warnings[-1])
        self.assertEqual(self.reactor.tcpClients, [])  # nothing connects before the service starts

    def test_a_clustered_node_keeps_its_files_where_every_node_reaches_them(self) -> None:
        service = self.build(redis="redis://127.0.0.1:1/0", jwt_secret="s" * 32)
        self.assertTrue(any("--redis without --file-storage" in w for w in service.startup_warnings))
        shared = os.path.abspath(self.mktemp())
        service = self.build(redis="redis://127.0.0.1:1/0", jwt_secret="s" * 32, file_storage=f"file:{shared}")
        self.assertFalse(any("--file-storage" in w for w in service.startup_warnings))
        self.assertEqual(service.files.storage.root, shared)


class BacklogTests(SynchronousTestCase):
    def test_default_backlog_unless_given(self) -> None:
        from wecompany.tap import with_backlog
        self.assertEqual(with_backlog("tcp:8888"), "tcp:8888:backlog=1024")
        self.assertEqual(with_backlog("tcp:8888:backlog=64"), "tcp:8888:backlog=64")
        self.assertEqual(with_backlog("ssl:8443:privateKey=k.pem"), "ssl:8443:privateKey=k.pem:backlog=1024")
        self.assertEqual(with_backlog("unix:/run/wc.sock"), "unix:/run/wc.sock")

    def test_listening_uses_the_backlog(self) -> None:
        from wecompany.tap import build_service
        reactor = MemoryReactorClock()
        config = Config.from_sources({"data_dir": os.path.abspath(self.mktemp()), "port": "tcp:0",
                                      "http_port": "tcp:0:backlog=10"}, {}, None)
        service = build_service(config, reactor)
        service.privilegedStartService()
        self.assertEqual([backlog for _, _, backlog, _ in reactor.tcpServers], [1024, 10])
