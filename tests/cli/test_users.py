"""``wecompany user ...`` through the real entry point, offline and through a running daemon."""

from __future__ import annotations

import json
import os
import stat

from twisted.trial.unittest import TestCase

from tests.cli.harness import PASSWORD, CommandTestMixin, short_dir
from tests.e2e.client import connect
from wecompany.tcp import codec
from wecompany.tcp.codec import MsgType

OFFLINE = "no daemon is running on this data directory"


class OfflineUserTests(CommandTestMixin, TestCase):
    async def test_add_then_list_and_show(self) -> None:
        added = await self.add_user("alice", "--admin", "--email", "a@example.com")
        self.assertEqual(added.out, "added alice (id 1, admin)\n")
        self.assertIn(OFFLINE, added.err)
        await self.add_user("bobby")
        listed = json.loads((await self.ok("user", "list", "--json")).out)
        self.assertEqual([(u["username"], u["role"], u["email"], u["status"]) for u in listed],
                         [("alice", "admin", "a@example.com", "active"), ("bobby", "user", "", "active")])
        table = (await self.ok("user", "list")).out.splitlines()
        self.assertEqual(table[0].split()[:4], ["ID", "USERNAME", "ROLE", "STATUS"])
        self.assertEqual(table[1].split()[:4], ["1", "alice", "admin", "active"])
        shown = (await self.ok("user", "show", "alice")).out
        self.assertIn("role: admin\n", shown)
        self.assertIn("email: a@example.com\n", shown)
        self.assertNotIn(PASSWORD, added.out + added.err + shown)
        # The database is the daemon's, private.
        database = os.path.join(self.data_dir, "wecompany.sqlite3")
        self.assertEqual(stat.S_IMODE(os.stat(database).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o700)

    async def test_refusals_are_one_line_and_exit_1(self) -> None:
        await self.add_user("alice")
        taken = await self.cli("user", "add", "ALICE", "--password-stdin", stdin=PASSWORD + "\n")
        self.assertEqual(taken.status, 1)
        self.assertIn("wecompany user add: username already exists", taken.err)
        weak = await self.cli("user", "add", "bobby", "--password-stdin", stdin="short\n")
        self.assertEqual(weak.status, 1)
        self.assertIn("at least 8", weak.err)
        missing = await self.cli("user", "ban", "nobody")
        self.assertEqual((missing.status, missing.err.splitlines()[-1]),
                         (1, "wecompany user ban: no user named 'nobody'"))
        no_password = await self.cli("user", "add", "carol", "--password-stdin")
        self.assertEqual(no_password.status, 1)
        self.assertIn("expected 1 line(s) on standard input", no_password.err)
        self.assertNotIn("Traceback", taken.err + weak.err + missing.err + no_password.err)

    async def test_ban_unban_passwd_delete(self) -> None:
        await self.add_user("alice")
        self.assertIn("banned alice", (await self.ok("user", "ban", "alice")).out)
        self.assertIn("alice is active", (await self.ok("user", "unban", "alice")).out)
        await self.ok("user", "passwd", "alice", "--password-stdin", stdin="Other-pass22\n")
        await self.ok("user", "delete", "alice")
        self.assertIn("status: deleted\n", (await self.ok("user", "show", "alice")).out)

    async def test_usage_errors_print_the_error_first_and_exit_2(self) -> None:
        for args, text in ((("user",), "user: a command is required"), ((), "a command is required"),
                           (("user", "frobnicate"), "Unknown command: frobnicate"),
                           (("--max-frame", "1G", "user", "list"), "max-frame: '1G' is not a size"),
                           (("user", "add"), "which user?")):
            outcome = await self.cli(*args)
            self.assertEqual(outcome.status, 2, (args, outcome))
            first = outcome.err.splitlines()[0]
            self.assertTrue(first.startswith("wecompany: "), (args, outcome.err))
            self.assertIn(text, first)

    async def test_version(self) -> None:
        from wecompany.tap import installed_version
        outcome = await self.cli("--version")
        self.assertEqual((outcome.status, outcome.out), (0, f"WeCompany {installed_version()}\n"))


class DaemonUserTests(CommandTestMixin, TestCase):
    async def test_a_ban_signs_a_live_session_out_at_once(self) -> None:
        await self.add_user("alice")
        await self.add_user("bobby")
        daemon = await self.daemon("--registration", "closed")
        alice = await connect(self, daemon.tcp_port, "alice")
        await alice.login("alice")
        # The daemon has alice's row in its cache now; the ban must not wait for it.
        banned = await self.ok("user", "ban", "alice")
        self.assertNotIn(OFFLINE, banned.err)  # through the daemon's control socket
        error = await alice.expect(MsgType.ERROR, timeout=2)
        self.assertEqual(error["message"], "account is disabled")
        await alice.wait_closed(timeout=2)
        again = await connect(self, daemon.tcp_port, "alice again")
        again.send(bytes((MsgType.LOGIN,)) + codec.str16("alice") + codec.str16(PASSWORD))
        result = await again.expect(MsgType.AUTH_RESULT)
        self.assertEqual(result.fields, {"ok": False, "error": "account is disabled"})
        # Registration is closed for clients, not for the operator.
        added = await self.add_user("carol")
        self.assertNotIn(OFFLINE, added.err)
        carol = await connect(self, daemon.tcp_port, "carol")
        await carol.login("carol")
        self.assertEqual((await daemon.stop()), 0)

    async def test_a_new_password_through_the_daemon(self) -> None:
        await self.add_user("alice")
        daemon = await self.daemon()
        alice = await connect(self, daemon.tcp_port, "alice")
        await alice.login("alice")
        changed = await self.ok("user", "passwd", "alice", "--password-stdin", stdin="Other-pass22\n")
        self.assertNotIn(OFFLINE, changed.err)
        await alice.expect(MsgType.ERROR, timeout=2)
        await alice.wait_closed(timeout=2)
        fresh = await connect(self, daemon.tcp_port, "alice again")
        await fresh.login("alice", "Other-pass22")
        listed = json.loads((await self.ok("user", "list", "--json")).out)
        self.assertIsNotNone(listed[0]["last_login"])


class ClusterUserTests(CommandTestMixin, TestCase):
    """The operator's command on one node of a cluster acts on the whole service."""

    timeout = 120

    async def test_a_ban_through_one_node_signs_out_a_session_on_another(self) -> None:
        from tests.e2e.daemon import Daemon
        from tests.pgtesting import scratch_database
        from tests.services import redis_url, unique_prefix

        cluster = ["--database", scratch_database(self), "--redis", redis_url(self),
                   "--redis-prefix", unique_prefix("cli"), "--jwt-secret", "c" * 64]
        first = await Daemon(self, *cluster, "--node-id", "n1", data_dir=self.data_dir).start()
        other_dir = os.path.join(short_dir(self), "data")
        second = await Daemon(self, *cluster, "--node-id", "n2", data_dir=other_dir).start()
        added = await self.ok(*cluster, "user", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        self.assertNotIn(OFFLINE, added.err)
        alice = await connect(self, second.tcp_port, "alice")
        await alice.login("alice")
        banned = await self.ok(*cluster, "user", "ban", "alice")  # through the first node's control socket
        self.assertNotIn(OFFLINE, banned.err)
        error = await alice.expect(MsgType.ERROR, timeout=5)
        self.assertEqual(error["message"], "account is disabled")
        await alice.wait_closed(timeout=5)
        again = await connect(self, second.tcp_port, "alice again")
        again.send(bytes((MsgType.LOGIN,)) + codec.str16("alice") + codec.str16(PASSWORD))
        result = await again.expect(MsgType.AUTH_RESULT, timeout=5)
        self.assertEqual(result.fields, {"ok": False, "error": "account is disabled"})
        self.assertEqual(await second.stop(), 0)
        self.assertEqual(await first.stop(), 0)
