"""
The real daemon, started with twistd on free loopback ports, driven over
real sockets: what the unit tests fake is proven here once.

Each test starts its own daemon (about a second) so tests stay independent;
every wait is for an event, with a timeout that fails with the evidence.
"""

from __future__ import annotations

import json
import os
import signal
import stat

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.trial.unittest import TestCase

from tests.e2e.client import Client, connect
from tests.e2e.daemon import Daemon
from wecompany.tcp import codec
from wecompany.tcp.codec import MsgType

DELIVERED, STORED = 0, 1
MEDIA_PACKETS = 20


class DaemonTestCase(TestCase):
    """Helpers shared by the end-to-end tests."""

    timeout = 60
    daemon_args: tuple[str, ...] = ()  # options every daemon of the test case gets

    async def start_daemon(self, *extra_args: str) -> Daemon:
        return await Daemon(self, *self.daemon_args, *extra_args).start()

    async def connect(self, daemon: Daemon, name: str) -> Client:
        return await connect(self, daemon.tcp_port, name)

    async def user(self, daemon: Daemon, name: str) -> Client:
        """A new connection that registers the account ``name``."""
        client = await self.connect(daemon, name)
        await client.register(name)
        return client

    async def settled(self, client: Client) -> Client:
        """
        Wait until the daemon's login work for ``client`` is over.

        Right after a login the daemon looks for the user's stored messages;
        until that look-up is done, text to the user queues behind it and is
        acknowledged as stored (docs/protocol.rst, "Text messages"). The
        contact list is read from the same store after it (one database
        connection, first in, first out), so its answer means the look-up is over.
        """
        client.send(codec.u8(MsgType.CONTACTS) + codec.u8(codec.CONTACT_LIST))
        reply = await client.expect(MsgType.CONTACTS)
        self.assertEqual(reply["op"], codec.CONTACT_LIST)
        return client

    async def add_contact(self, client: Client, other: Client) -> None:
        """``client`` watches ``other``'s presence."""
        client.send(codec.u8(MsgType.CONTACTS) + codec.u8(codec.CONTACT_ADD) + codec.qstr(other.user_id))
        reply = await client.expect(MsgType.CONTACTS)
        self.assertEqual((reply["op"], reply["user_id"]), (codec.CONTACT_ADD, other.user_id))

    async def active_call(self, caller: Client, callee: Client) -> str:
        """Place a call from ``caller`` to ``callee`` and have it accepted; returns the call id."""
        caller.call(callee.user_id)
        ringing = await caller.expect(MsgType.CALL_RINGING)
        incoming = await callee.expect(MsgType.CALL_REQUEST)
        call_id = ringing["call_id"]
        self.assertEqual((ringing["callee"], ringing["is_video"]), (callee.user_id, False))
        self.assertEqual((incoming["call_id"], incoming["caller"], incoming["is_video"]),
                         (call_id, caller.user_id, False))
        callee.accept(call_id)
        for party in (caller, callee):
            self.assertEqual((await party.expect(MsgType.CALL_ACCEPT))["call_id"], call_id)
        return call_id


class ChatTests(DaemonTestCase):
    async def test_register_and_exchange_text(self) -> None:
        """Two users register over TCP and exchange text both ways, acknowledged as delivered."""
        daemon = await self.start_daemon()
        alice = await self.settled(await self.user(daemon, "alice"))
        bob = await self.settled(await self.user(daemon, "bob"))
        self.assertNotEqual(alice.user_id, bob.user_id)
        self.assertTrue(alice.user_id.isdigit())

        for sender, recipient, text in ((alice, bob, "hello bob"), (bob, alice, "hi alice, 你好")):
            sender.text(recipient.user_id, text)
            ack = await sender.expect(MsgType.TEXT_ACK)
            message = await recipient.expect(MsgType.TEXT)
            self.assertEqual((ack["to"], ack["status"], ack["recipients"]), (recipient.user_id, DELIVERED, 1))
            self.assertEqual((message["from"], message["text"], message["from_username"]),
                             (sender.user_id, text, sender.name))
            self.assertEqual(message["message_id"], ack["message_id"])
            self.assertFalse(message["flags"] & codec.TEXT_FLAG_STORED)

    async def test_offline_messages_survive_restart(self) -> None:
        """Text to an offline user is stored, survives a graceful restart, and arrives in order on login."""
        daemon = await self.start_daemon()
        alice = await self.user(daemon, "alice")
        bob = await self.user(daemon, "bob")
        # Bob's going offline is an event Alice sees, so the messages below are
        # sent only once the daemon knows Bob is gone.
        await self.add_contact(alice, bob)
        await bob.close()
        presence = await alice.expect(MsgType.PRESENCE)
        self.assertEqual((presence["user_id"], presence["online"]), (bob.user_id, False))

        texts = ["first", "second", "third"]
        acks = []
        for text in texts:
            alice.text(bob.user_id, text)
            acks.append(await alice.expect(MsgType.TEXT_ACK))
        self.assertEqual([(a["to"], a["status"]) for a in acks], [(bob.user_id, STORED)] * 3)

        await daemon.restart()  # fails unless SIGTERM exits 0
        await alice.wait_closed()

        bob = await self.connect(daemon, "bob")
        await bob.login("bob")
        stored = [await bob.expect(MsgType.TEXT) for _ in texts]
        self.assertEqual([(m["from"], m["text"], m["from_username"]) for m in stored],
                         [(alice.user_id, text, "alice") for text in texts])
        self.assertEqual([m["message_id"] for m in stored], [a["message_id"] for a in acks])
        for message in stored:
            self.assertTrue(message["flags"] & codec.TEXT_FLAG_STORED, message.fields)

    async def test_token_login_and_one_session_per_user(self) -> None:
        """A token from AUTH_RESULT logs in elsewhere; each new login closes the older connection with 409."""
        daemon = await self.start_daemon()
        first = await self.user(daemon, "alice")

        second = await self.connect(daemon, "alice-token")
        result = await second.login_token(first.token)
        self.assertEqual(result["user_id"], first.user_id)
        await first.expect_error(409)
        await first.wait_closed()

        third = await self.connect(daemon, "alice-password")
        await third.login("alice")
        await second.expect_error(409)
        await second.wait_closed()

        # The surviving session works.
        third.send(codec.u8(MsgType.HEARTBEAT))
        await third.expect(MsgType.HEARTBEAT)


class CallTests(DaemonTestCase):
    async def test_call_with_media_both_ways(self) -> None:
        """A call rings, is accepted, relays media both ways intact and in order, and ends for both."""
        daemon = await self.start_daemon()
        alice = await self.user(daemon, "alice")
        bob = await self.user(daemon, "bob")
        call_id = await self.active_call(alice, bob)

        sent = {
            alice: [b"A->B %02d " % i + bytes(range(i, i + 200)) for i in range(MEDIA_PACKETS)],
            bob: [b"B->A %02d " % i + bytes([i]) * (1000 + i) for i in range(MEDIA_PACKETS)],
        }
        for i in range(MEDIA_PACKETS):  # interleaved, as a real call would be
            alice.media(sent[alice][i])
            bob.media(sent[bob][i])
        for sender, receiver in ((alice, bob), (bob, alice)):
            packets = [await receiver.expect(MsgType.MEDIA_DATA) for _ in range(MEDIA_PACKETS)]
            self.assertEqual({p["call_id"] for p in packets}, {call_id})
            self.assertEqual([p["media"] for p in packets], sent[sender])

        alice.hang_up(call_id)
        for party in (alice, bob):
            end = await party.expect(MsgType.CALL_END)
            self.assertEqual((end["call_id"], end["reason"]), (call_id, "hangup"))
        self.assertEqual(alice.unread(MsgType.ERROR) + bob.unread(MsgType.ERROR), [])

    async def test_busy(self) -> None:
        """Calling a user who is in a call is rejected at once with 'busy'; the call goes on."""
        daemon = await self.start_daemon()
        alice = await self.user(daemon, "alice")
        bob = await self.user(daemon, "bob")
        carol = await self.user(daemon, "carol")
        call_id = await self.active_call(alice, bob)

        carol.call(bob.user_id)
        reject = await carol.expect(MsgType.CALL_REJECT)
        self.assertEqual(reject["reason"], "busy")
        self.assertNotEqual(reject["call_id"], call_id)
        self.assertEqual(carol.unread(MsgType.CALL_RINGING), [])

        # Anything the daemon sent Bob about Carol's call came before this packet.
        alice.media(b"still here")
        self.assertEqual((await bob.expect(MsgType.MEDIA_DATA))["media"], b"still here")
        self.assertEqual(bob.unread(MsgType.CALL_REQUEST), [])
        self.assertEqual([m.type for m in bob.received].count(MsgType.CALL_REQUEST), 1)

    async def test_ring_timeout(self) -> None:
        """An unanswered call is rejected for both parties with 'timeout' after --ring-timeout."""
        daemon = await self.start_daemon("--ring-timeout", "0.5")
        carol = await self.user(daemon, "carol")
        dave = await self.user(daemon, "dave")

        carol.call(dave.user_id)
        call_id = (await carol.expect(MsgType.CALL_RINGING))["call_id"]
        self.assertEqual((await dave.expect(MsgType.CALL_REQUEST))["call_id"], call_id)
        for party in (carol, dave):
            reject = await party.expect(MsgType.CALL_REJECT)
            self.assertEqual((reject["call_id"], reject["reason"]), (call_id, "timeout"))


class LifecycleTests(DaemonTestCase):
    async def test_graceful_stop(self) -> None:
        """SIGTERM ends calls, tells every client (ERROR 503), disconnects them and exits 0."""
        daemon = await self.start_daemon()
        alice = await self.user(daemon, "alice")
        bob = await self.user(daemon, "bob")
        call_id = await self.active_call(alice, bob)

        started = reactor.seconds()
        status = await daemon.stop(timeout=5)
        self.assertEqual(status, 0, daemon.report())
        self.assertLess(reactor.seconds() - started, 5)
        for party in (alice, bob):
            await party.wait_closed()
            end = await party.expect(MsgType.CALL_END)
            self.assertEqual(end["call_id"], call_id)
            error = await party.expect_error(503)
            # The ERROR is the last word, after the call ended.
            self.assertIs(party.received[-1], error)
            self.assertLess(party.received.index(end), party.received.index(error))
        log = daemon.log_text()
        self.assertIn("WeCompany stopped", log)

    async def test_what_it_writes_is_private_under_a_lax_umask(self) -> None:
        """Started under umask 022, the data directory is 0700 and the database, its WAL and the log 0600."""
        daemon = Daemon(self)
        previous = os.umask(0o022)
        try:
            started = Deferred.fromCoroutine(daemon.start())  # spawned at once: the child inherits the umask
        finally:
            os.umask(previous)
        await started
        await self.user(daemon, "alice")  # a write: the WAL and its index exist now
        database = os.path.join(daemon.data_dir, "wecompany.sqlite3")
        modes = {path: stat.S_IMODE(os.stat(path).st_mode)
                 for path in (daemon.data_dir, database, database + "-wal", database + "-shm", daemon.log_path,
                              os.path.join(daemon.data_dir, "jwt.secret"))}
        self.assertEqual(modes, {path: 0o700 if path == daemon.data_dir else 0o600 for path in modes})
        self.assertNotIn("open to other local users", daemon.log_text())
        # An existing directory left open to others is warned about at the next start.
        await daemon.stop()
        os.chmod(daemon.data_dir, 0o755)
        await daemon.start()
        self.assertIn(f"{daemon.data_dir} is open to other local users (mode 0755)", daemon.log_text())

    async def test_health_over_http(self) -> None:
        """GET /health on the HTTP port answers 200 with JSON status ok."""
        import treq
        from twisted.web.client import HTTPConnectionPool

        daemon = await self.start_daemon()
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = await treq.get(f"http://127.0.0.1:{daemon.http_port}/health", pool=pool, timeout=5)
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(json.loads(body)["status"], "ok")

    async def test_bad_options_exit_before_listening(self) -> None:
        """A bad option value exits non-zero at once, naming the option, with nothing listening."""
        cases = [
            (("--max-frame", "1G"), "max-frame"),
            (("--port", "tcpp:1"), "port: 'tcpp:1'"),
        ]
        daemons = [Daemon(self, *args) for args, _ in cases]
        statuses = await gatherResults([Deferred.fromCoroutine(d.run_to_exit(timeout=10)) for d in daemons])
        for daemon, status, (_, named) in zip(daemons, statuses, cases):
            self.assertNotEqual(status, 0, daemon.report())
            self.assertIn(named, daemon.output, daemon.report())
            everything = daemon.output + daemon.log_text()
            self.assertNotIn("listening on", everything)
            self.assertNotIn("WeCompany is ready", everything)

    async def test_start_up_failure_exits_non_zero(self) -> None:
        """
        A --port that is taken stops start-up, before "ready", and the
        process exits with an error status (a service manager must see it).
        """
        taken = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port

        daemon = Daemon(self, "--port", f"tcp:{port}:interface=127.0.0.1")
        daemon.spawn()

        def outcome():
            if not daemon.running:
                return "exited"
            if "WeCompany is ready" in daemon.log_text():
                return "ready"
            return None

        result = await daemon.wait_for(outcome, "an exit or readiness", fail_on_exit=False)
        self.assertEqual(result, "exited",
                         f"the daemon reported ready although port {port} is taken\n{daemon.report()}")
        self.assertNotEqual(await daemon.wait_exit(), 0, daemon.report())
        # One line on standard error, and the same in the log; no traceback anywhere.
        line = f"cannot listen on tcp:{port}:interface=127.0.0.1 (port): address already in use"
        self.assertEqual(daemon.output.splitlines(), [f"wecompany: {line}"], daemon.report())
        self.assertIn(line, daemon.log_text())
        self.assertNotIn("Traceback", daemon.output + daemon.log_text())

    async def test_no_pid_file_in_the_working_directory(self) -> None:
        """
        Without --pidfile, twistd -n writes none, and a daemon (no -n) writes
        its own in the data directory and removes it when it stops.
        """
        for nodaemon in (True, False):
            daemon = TwistdDefaults(self, nodaemon=nodaemon)
            pid_file = os.path.join(daemon.data_dir, "twistd.pid")
            if nodaemon:
                await daemon.start()
                self.assertFalse(os.path.exists(pid_file))
            else:
                daemon.spawn()
                self.assertEqual(await daemon.wait_exit(), 0, daemon.report())  # the parent, once started
                await daemon.wait_for(lambda: True if "WeCompany is ready" in daemon.log_text() else None,
                                      "the daemon to be ready", fail_on_exit=False)
                with open(pid_file) as f:
                    pid = int(f.read())
                self.addCleanup(_kill_if_running, pid)  # the daemon is not the process the harness reaps
                os.kill(pid, signal.SIGTERM)
                await daemon.wait_for(lambda: None if os.path.exists(pid_file) else True,
                                      "the pid file to be removed", fail_on_exit=False)
            self.assertEqual([name for name in os.listdir(daemon.base_dir) if name.endswith(".pid")], [])
            if nodaemon:
                self.assertEqual(await daemon.stop(), 0, daemon.report())


def _kill_if_running(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class TwistdDefaults(Daemon):
    """A daemon started without --pidfile (and, unless ``nodaemon``, without -n): twistd's defaults."""

    def __init__(self, testcase, nodaemon: bool) -> None:
        super().__init__(testcase)
        self.nodaemon = nodaemon

    def argv(self, log_path: str) -> list[str]:
        argv = [arg for arg in super().argv(log_path) if arg != "--pidfile="]
        return argv if self.nodaemon else [arg for arg in argv if arg != "-n"]


class ProtocolTests(DaemonTestCase):
    async def test_malformed_and_oversized_frames(self) -> None:
        """
        A malformed frame gets an ERROR and the connection stays; an oversized
        length prefix gets an ERROR and the connection is closed; the daemon
        goes on serving new clients.
        """
        daemon = await self.start_daemon("--max-frame", "64K")
        alice = await self.user(daemon, "alice")

        alice.send(codec.u8(MsgType.TEXT) + b"\x00\x00")  # ends inside the recipient's length
        error = await alice.expect_error(400)
        self.assertEqual(error["offending_type"], MsgType.TEXT)
        alice.send(codec.u8(MsgType.HEARTBEAT))
        await alice.expect(MsgType.HEARTBEAT)

        alice.send_raw(codec.u32(64 * 1024 + 1) + b"x" * 100)
        error = await alice.expect_error(413)
        self.assertEqual(error["offending_type"], codec.NO_TYPE)
        await alice.wait_closed()

        bob = await self.user(daemon, "bob")
        bob.send(codec.u8(MsgType.HEARTBEAT))
        await bob.expect(MsgType.HEARTBEAT)


class Raw(Protocol):
    """A client that records what it gets and when it is closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.received)


async def raw_connection(testcase, port: int, source: str) -> Raw:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    proto = await connectProtocol(endpoint, Raw())
    testcase.addCleanup(lambda: proto.transport.abortConnection() if not proto.closed.called else None)
    return proto


class SlowAndManyClientsTests(DaemonTestCase):
    async def test_one_address_cannot_hold_every_connection(self) -> None:
        """
        From 127.0.0.2, forty connections to each port: twenty are kept, the
        rest told 503 and closed, and the kept HTTP ones, trickling header
        lines, are cut off with 408. Meanwhile 127.0.0.1 logs in and is
        served as usual.
        """
        import treq

        daemon = await self.start_daemon("--max-connections-per-address", "20", "--http-header-timeout", "2")
        tcp = [await raw_connection(self, daemon.tcp_port, "127.0.0.2") for _ in range(40)]
        http = [await raw_connection(self, daemon.http_port, "127.0.0.2") for _ in range(40)]
        for conn in http:
            conn.transport.write(b"GET /health HTTP/1.1\r\n")
        started = reactor.seconds()
        refused_tcp = [await conn.closed for conn in tcp[20:]]
        refused_http = [await conn.closed for conn in http[20:]]
        why = "too many connections from your address"
        self.assertTrue(all(why.encode("utf-16-be") in r for r in refused_tcp))  # an ERROR frame's text
        self.assertTrue(all(why.encode() in r for r in refused_http))
        self.assertTrue(all(r.startswith(b"HTTP/1.1 503") for r in refused_http))
        self.assertFalse(any(conn.closed.called for conn in tcp[:20] + http[:20]))

        # Another address is served as usual.
        alice = await self.user(daemon, "alice")
        alice.send(codec.u8(MsgType.HEARTBEAT))
        await alice.expect(MsgType.HEARTBEAT)
        response = await treq.get(f"http://127.0.0.1:{daemon.http_port}/health", timeout=5, persistent=False)
        self.assertEqual(response.code, 200)
        await response.content()

        # The trickling ones are cut off at their header deadline.
        trickle = task.LoopingCall(lambda: [c.transport.write(b"X-Slow: 1\r\n") for c in http[:20]
                                            if not c.closed.called])
        trickle.start(0.5)
        self.addCleanup(lambda: trickle.running and trickle.stop())
        answers = [await conn.closed for conn in http[:20]]
        self.assertLess(reactor.seconds() - started, 10)
        self.assertTrue(all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:1])
