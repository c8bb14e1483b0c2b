"""The log observers --log-format and --log-level choose."""

from __future__ import annotations

import io
import json
import os

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from wecompany.logs import ObserverFactory, event_as_json, observer_for


def logged(log_format: str, level: str, emit) -> str:
    out = io.StringIO()
    publisher = LogPublisher(observer_for(out, log_format, level))
    emit(Logger(namespace="wecompany.test", observer=publisher))
    return out.getvalue()


class JSONTests(SynchronousTestCase):
    def test_one_object_per_line_with_the_structured_fields(self) -> None:
        def emit(log):
            log.info("user {user} logged in over {transport}", user="alice", transport="tcp")
            log.warn("a line\nwith a newline {n}", n=3)
        lines = logged("json", "info", emit).splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual({k: first[k] for k in ("level", "namespace", "message", "user", "transport")},
                         {"level": "info", "namespace": "wecompany.test",
                          "message": "user alice logged in over tcp", "user": "alice", "transport": "tcp"})
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        self.assertEqual((second["level"], second["message"], second["n"]), ("warn", "a line\nwith a newline 3", 3))
        self.assertFalse(any(key.startswith("log_") for key in first))

    def test_values_that_are_not_json_are_their_text(self) -> None:
        class Thing:
            def __str__(self):
                return "a thing"
        record = json.loads(event_as_json({"log_format": "{x}", "x": Thing(), "log_level": LogLevel.info,
                                           "log_time": 0.0, "log_namespace": "n"}))
        self.assertEqual((record["x"], record["message"], record["time"]),
                         ("a thing", "a thing", "1970-01-01T00:00:00.000+00:00"))

    def test_a_failure_has_its_traceback(self) -> None:
        def emit(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("dividing failed", Failure())
        record = json.loads(logged("json", "info", emit))
        self.assertEqual((record["level"], record["message"]), ("critical", "dividing failed"))
        self.assertIn("ZeroDivisionError", record["traceback"])


class AccessJSONTests(SynchronousTestCase):
    def test_an_access_batch_is_one_object_per_request(self) -> None:
        from twisted.internet.task import Clock

        from wecompany.web.site import AccessLog

        out = io.StringIO()
        from twisted.logger import globalLogPublisher
        observer = observer_for(out, "json", "info")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        log = AccessLog(Clock())
        log.add("203.0.113.9", "GET", "/health", 200, 151, duration=0.0042, request_id="r1", user_agent="probe/1")
        log.add("203.0.113.9", "POST", "/api/v1/auth/login", 401, 90, duration=None, request_id="r2")
        log.flush()
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertEqual((first["namespace"], first["message"]),
                         ("wecompany.access", '203.0.113.9 GET /health 200 151 4.2ms r1 "probe/1"'))
        self.assertEqual({k: first[k] for k in ("client", "method", "path", "status", "bytes", "duration_ms",
                                                "request_id", "user_agent")},
                         {"client": "203.0.113.9", "method": "GET", "path": "/health", "status": 200, "bytes": 151,
                          "duration_ms": 4.2, "request_id": "r1", "user_agent": "probe/1"})
        self.assertEqual((second["status"], second["duration_ms"], second["request_id"]), (401, None, "r2"))
        self.assertNotIn("requests", first)
        self.assertNotIn("lines", first)


class LevelTests(SynchronousTestCase):
    def emit(self, log):
        log.debug("debug line")
        log.info("info line")
        log.warn("warn line")
        log.error("error line")

    def test_debug_is_hidden_at_info(self) -> None:
        text = logged("text", "info", self.emit)
        self.assertNotIn("debug line", text)
        self.assertIn("info line", text)
        self.assertIn("error line", text)

    def test_each_level_keeps_itself_and_the_more_severe(self) -> None:
        for level, shown in (("debug", ["debug", "info", "warn", "error"]), ("warn", ["warn", "error"]),
                             ("critical", [])):
            lines = [json.loads(line)["message"] for line in logged("json", level, self.emit).splitlines()]
            self.assertEqual(lines, [f"{name} line" for name in shown], level)


class FactoryNoiseTests(SynchronousTestCase):
    def test_factory_start_and_stop_lines_are_dropped(self) -> None:
        from twisted.internet.protocol import Factory

        class Noisy(Factory):
            noisy = True

        out = io.StringIO()
        from twisted.logger import globalLogPublisher
        observer = observer_for(out, "text", "debug")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        factory = Noisy()
        factory.doStart()
        factory.doStop()
        Logger(namespace="t").info("kept")
        self.assertNotIn("factory", out.getvalue())
        self.assertIn("kept", out.getvalue())

    def test_our_factories_are_quiet(self) -> None:
        from wecompany.connections import CappedFactory
        from wecompany.mirror.medialink import _LinkFactory, _OneLink
        from wecompany.mirror.redis import _Factory
        from wecompany.proxyprotocol import ProxyHeaderFactory
        from wecompany.signaling.protocol import SignalingFactory
        from wecompany.tcp.protocol import WeCompanyFactory
        from wecompany.web.site import MetricsSite, WeCompanySite
        for factory in (CappedFactory, _LinkFactory, _OneLink, _Factory, ProxyHeaderFactory, SignalingFactory,
                        WeCompanyFactory, MetricsSite, WeCompanySite):
            self.assertFalse(factory.noisy, factory)


class DestinationTests(SynchronousTestCase):
    def test_stdout_under_nodaemon_without_a_logfile(self) -> None:
        import sys
        self.assertIs(ObserverFactory("text", "info", nodaemon=True).open(), sys.stdout)
        self.assertIs(ObserverFactory("text", "info", logfile="-", nodaemon=True).open(), sys.stdout)

    def test_a_daemon_cannot_log_to_stdout(self) -> None:
        self.assertRaises(SystemExit, ObserverFactory("text", "info", logfile="-").open)

    def test_the_logfile(self) -> None:
        path = os.path.abspath(self.mktemp())
        observer = ObserverFactory("json", "info", logfile=path)()
        observer({"log_format": "hello {who}", "who": "log", "log_level": LogLevel.info, "log_time": 1.0,
                  "log_namespace": "t"})
        with open(path) as f:
            self.assertEqual(json.loads(f.read())["message"], "hello log")
