"""
The HTTP site's deadlines and its body handling, on a real channel over a
StringTransport with a fake clock: what a slow or hostile client meets.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from wecompany.store.memory import MemoryStore
from wecompany.web.channel import TimeoutPolicy
from wecompany.web.site import make_site

POLICY = TimeoutPolicy(header_timeout=20, body_timeout=30, idle_timeout=75, min_body_rate=4096)


class Connection:
    def __init__(self, site):
        self.channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 5000))
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def status(self) -> int | None:
        head = self.transport.value().split(b"\r\n", 1)[0]
        return int(head.split()[1]) if head.startswith(b"HTTP/1.1") else None


class ChannelTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        store = MemoryStore()
        store.start()
        self.site = make_site(store, reactor=self.clock, timeouts=POLICY, body_limits=((b"/upload", 64 << 20),))
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)

    def connect(self) -> Connection:
        return Connection(self.site)

    def tick(self, conn: Connection, seconds: float, every: int, data: bytes) -> float:
        """
        Send ``data`` every ``every`` seconds until closed or ``seconds``
        passed, looking each second; -> how long the connection stayed open.
        """
        waited = 0
        while waited < seconds and not conn.closed:
            self.clock.advance(1)
            waited += 1
            if not conn.closed and waited % every == 0:
                conn.send(data)
        return waited


class HeaderDeadlineTests(ChannelTestCase):
    def test_headers_trickled_a_line_every_10_s_are_cut_off(self):
        conn = self.connect()
        conn.send(b"GET /health HTTP/1.1\r\n")
        closed_after = self.tick(conn, 70, 10, b"X-Slow: 1\r\n")
        self.assertEqual(closed_after, 20)  # not still open after 70 s, as before
        self.assertEqual(conn.status(), 408)
        self.assertIn(b"request headers not received in time", conn.transport.value())

    def test_a_silent_new_connection_is_closed(self):
        conn = self.connect()
        self.clock.advance(19.9)
        self.assertFalse(conn.closed)
        self.clock.advance(0.1)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.transport.value(), b"")  # nothing was asked: nothing is answered

    def test_a_prompt_request_is_answered_and_kept_alive_until_idle(self):
        conn = self.connect()
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(conn.status(), 200)
        conn.transport.clear()
        self.clock.advance(74)
        self.assertFalse(conn.closed)
        conn.send(b"GET /health HTTP/1.1\r\n")  # the next request starts: its own 20 s
        self.clock.advance(19)
        conn.send(b"Host: x\r\n\r\n")
        self.assertEqual(conn.status(), 200)
        conn.transport.clear()
        self.clock.advance(75)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.transport.value(), b"")


class OneTimerTests(ChannelTestCase):
    def timers(self, conn):
        return [call for call in self.clock.getDelayedCalls() if call.func == conn.channel._expired]

    def test_requests_on_a_kept_alive_connection_set_no_timer(self):
        conn = self.connect()
        [timer] = self.timers(conn)
        for _ in range(50):
            self.clock.advance(0.1)
            conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(conn.status(), 200)
            conn.transport.clear()
        self.assertEqual(self.timers(conn), [timer])
        # Idle, it looks every 20 s (a request may start any time) and closes at 75.
        self.clock.advance(74)
        self.assertFalse(conn.closed)
        self.clock.advance(1)
        self.assertTrue(conn.closed)

    def test_a_deadline_shorter_than_the_header_deadline_moves_the_timer_sooner(self):
        self.site.timeouts = TimeoutPolicy(header_timeout=20, body_timeout=5, idle_timeout=75, min_body_rate=4096)
        conn = self.connect()
        self.clock.advance(1)
        conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        self.clock.advance(4.9)
        self.assertFalse(conn.closed)
        self.clock.advance(0.2)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.status(), 408)

    def test_a_lost_connection_leaves_no_timer(self):
        conn = self.connect()
        conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.channel.connectionLost(None)
        self.assertEqual(self.timers(conn), [])


class BodyDeadlineTests(ChannelTestCase):
    def start_body(self, conn: Connection, length: int) -> None:
        conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)

    def test_a_body_trickled_a_byte_every_10_s_is_cut_off(self):
        conn = self.connect()
        self.start_body(conn, 1000)
        closed_after = self.tick(conn, 70, 10, b"x")
        self.assertEqual(closed_after, 31)  # 30 s, and a third of a millisecond for the three bytes
        self.assertEqual(conn.status(), 408)
        self.assertIn(b"request body not received in time", conn.transport.value())

    def test_a_slow_honest_upload_finishes(self):
        conn = self.connect()
        size = 60 * 1024  # at 8 KiB/s: 7.5 s of 30 + 15 s allowed
        self.start_body(conn, size)
        sent = 0
        while sent < size:
            self.clock.advance(1)
            conn.send(b"y" * 8192)
            sent += 8192
        self.assertFalse(conn.transport.value().startswith(b"HTTP/1.1 408"))
        self.assertEqual(conn.status(), 404)  # answered (there is no such resource), not timed out

    def test_a_body_just_under_the_rate_is_cut_off_later_not_sooner(self):
        conn = self.connect()
        self.start_body(conn, 10 * 1024 * 1024)
        closed_after = self.tick(conn, 200, 1, b"z" * 2048)  # 2 KiB/s: half the rate
        # 30 s, plus half a second for each 2 KiB received: by second t, t - 1 of them
        # have arrived, and 30 + (t - 1) / 2 = t at t = 59.
        self.assertEqual(closed_after, 59)
        self.assertEqual(conn.status(), 408)


class UpgradedTests(ChannelTestCase):
    def test_no_deadline_once_another_protocol_has_the_connection(self):
        conn = self.connect()
        conn.send(b"GET /health HTTP/1.1\r\n")
        conn.channel.transport = None  # what Autobahn's WebSocketResource does on an upgrade
        self.clock.advance(100)  # nothing raised, nothing written
        self.assertEqual(conn.transport.value(), b"")


class BodyLimitTests(ChannelTestCase):
    def test_the_path_limit_applies_before_the_body_is_stored(self):
        conn = self.connect()
        conn.send(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        self.assertEqual(conn.status(), 413)
        self.assertTrue(conn.closed)

    def test_a_form_of_30000_empty_parts_is_refused_in_the_first_read(self):
        boundary = b"bnd"
        raw = b"".join(b"--bnd\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\r\n" for _ in range(30_000))
        raw += b"--bnd--\r\n"
        conn = self.connect()
        conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary
                  + b"\r\nContent-Length: %d\r\n\r\n" % len(raw))
        conn.send(raw[:65536])
        self.assertEqual(conn.status(), 413)
        self.assertTrue(conn.closed)
        reply = json.loads(conn.transport.value().split(b"\r\n\r\n", 1)[1])
        self.assertIn("multipart body over a limit", reply["message"])
        conn.send(raw[65536:])  # whatever else arrives is not looked at
        self.assertEqual(conn.status(), 413)


class PublicApiTests(SynchronousTestCase):
    """The HTTP layer reads Twisted's request and channel through their public API only (issue 8, 17)."""

    def test_no_private_attributes_of_twisted_web_objects(self) -> None:
        import inspect
        import re

        import wecompany.web.channel
        import wecompany.web.request
        import wecompany.web.site
        for module in (wecompany.web.request, wecompany.web.channel, wecompany.web.site):
            source = inspect.getsource(module)
            # e.g. channel._path, request._disconnected, transport._tempDataBuffer
            found = re.findall(r"\b(?:channel|request|transport|site|factory)\._[a-zA-Z]\w*", source)
            self.assertEqual(found, [], module.__name__)
