"""``wecompany check-config`` through the real entry point, and its pieces on their own."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.cli.harness import CommandTestMixin
from wecompany.cli.check import check_redis
from wecompany.cli.common import CommandFailed
from wecompany.cli.database import known_version
from wecompany.config import RedisAddress

FREE = "tcp:0:interface=127.0.0.1"


class CheckConfigTests(CommandTestMixin, TestCase):
    async def test_a_good_configuration(self) -> None:
        await self.add_user("alice")
        outcome = await self.ok("--port", FREE, "--http-port", FREE, "check-config")
        lines = outcome.out.splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["ok"] * 4, outcome.out)
        self.assertEqual(lines[0], "ok   config: the options are valid")
        self.assertIn("(port) can be listened on (127.0.0.1:", lines[1])
        self.assertIn("(http-port) can be listened on", lines[2])
        self.assertIn(f"schema version {known_version()}, this release's", lines[3])

    async def test_a_port_in_use_is_named(self) -> None:
        taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        busy = f"tcp:{taken.getHost().port}:interface=127.0.0.1"
        outcome = await self.cli("--port", FREE, "--http-port", busy, "check-config")
        self.assertEqual(outcome.status, 1, outcome)
        self.assertIn(f"FAIL port: cannot listen on {busy} (http-port): address already in use", outcome.out)
        self.assertIn("(port) can be listened on", outcome.out)  # every check still runs
        self.assertIn("does not exist yet", outcome.out)

    async def test_a_cluster_without_a_shared_secret_fails(self) -> None:
        outcome = await self.cli("--port", FREE, "--http-port", FREE, "--redis", "redis://127.0.0.1:1/0",
                                 "check-config")
        self.assertEqual(outcome.status, 1)
        self.assertIn("FAIL config: --redis: the nodes of a cluster must sign tokens with one secret", outcome.out)
        self.assertIn("FAIL redis: no answer from redis://127.0.0.1:1/0", outcome.out)

    async def test_a_bad_option_is_a_usage_error(self) -> None:
        outcome = await self.cli("--ring-timeout", "-1", "check-config")
        self.assertEqual(outcome.status, 2)
        self.assertTrue(outcome.err.startswith("wecompany: ring-timeout: '-1' is not"), outcome.err)


class RedisCheckTests(SynchronousTestCase):
    def serve(self, answer: bytes) -> RedisAddress:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        self.addCleanup(server.close)
        self.received = b""
        import threading

        def reply():
            connection, _ = server.accept()
            with connection:
                self.received = connection.recv(4096)
                connection.sendall(answer)

        thread = threading.Thread(target=reply, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        return server.getsockname()[1]

    def test_pong(self) -> None:
        port = self.serve(b"+OK\r\n+OK\r\n+PONG\r\n")
        self.assertEqual(check_redis(RedisAddress("127.0.0.1", port, db=2, password="pw")), "PONG")
        self.assertEqual(self.received, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"
                                        b"*1\r\n$4\r\nPING\r\n")

    def test_refused(self) -> None:
        port = self.serve(b"-NOAUTH Authentication required.\r\n")
        error = self.assertRaises(CommandFailed, check_redis, RedisAddress("127.0.0.1", port))
        self.assertIn("refused: NOAUTH", str(error))
