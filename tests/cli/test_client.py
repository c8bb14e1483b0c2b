"""``wecompany send``, ``online`` and ``call-test`` against a real daemon, through the real entry point."""

from __future__ import annotations

import json
import re

from twisted.trial.unittest import TestCase

from tests.cli.harness import PASSWORD, CommandTestMixin
from tests.e2e.client import connect
from wecompany.tcp.codec import MsgType


class ClientToolTests(CommandTestMixin, TestCase):
    async def start_server(self):
        await self.add_user("alice")
        await self.add_user("bobby")
        self.server = await self.daemon()
        return ["--host", "127.0.0.1", "--port", str(self.server.tcp_port)]

    async def test_send_online_and_call_test(self) -> None:
        where = await self.start_server()
        bobby = await connect(self, self.server.tcp_port, "bobby")
        await bobby.login("bobby")
        sent = await self.ok("send", "--user", "alice", *where, "--password-stdin", "bobby", "hello", "there",
                             stdin=PASSWORD + "\n")
        self.assertRegex(sent.out, r"^message \d+ to \d+: delivered \(1 recipient\(s\)\)\n$")
        text = await bobby.expect(MsgType.TEXT)
        self.assertEqual((text["text"], text["from_username"]), ("hello there", "alice"))
        online = json.loads((await self.ok("online", "--user", "alice", "--json", *where, "--password-stdin",
                                           stdin=PASSWORD + "\n")).out)
        self.assertEqual(sorted(user["username"] for user in online), ["alice", "bobby"])
        await bobby.close()
        stored = await self.ok("send", "--user", "alice", *where, "--password-stdin", "bobby", "later",
                               stdin=PASSWORD + "\n")
        self.assertIn("stored for later delivery", stored.out)
        call = await self.ok("call-test", "--user", "alice", "--user", "bobby", *where, "--password-stdin",
                             "--packets", "20", "--interval", "0.005", stdin=f"{PASSWORD}\n{PASSWORD}\n")
        lines = call.out.splitlines()
        self.assertRegex(lines[0], r"^call \S+: alice -> bobby, accepted in [\d.]+ ms$")
        for line, who in zip(lines[1:], ("alice", "bobby")):
            match = re.match(rf"^{who}: 20 sent, (\d+) back, (\d+) lost; round trip p50 ([\d.]+) ms, "
                             rf"max ([\d.]+) ms$", line)
            self.assertIsNotNone(match, call.out)
            self.assertEqual(match.group(1, 2), ("20", "0"))  # loopback loses nothing
            self.assertLessEqual(float(match.group(3)), float(match.group(4)))

    async def test_failures_are_one_line(self) -> None:
        where = await self.start_server()
        wrong = await self.cli("send", "--user", "alice", *where, "--password-stdin", "bobby", "x",
                               stdin="Wrong-pass1\n")
        self.assertEqual((wrong.status, wrong.err), (1, "wecompany send: alice cannot log in: invalid password\n"))
        nobody = await self.cli("send", "--user", "alice", *where, "--password-stdin", "nobody", "x",
                                stdin=PASSWORD + "\n")
        self.assertEqual(nobody.status, 1)
        self.assertIn("the server answered ERROR", nobody.err)
        offline = await self.cli("call-test", "--user", "alice", "--user", "bobby", *where, "--password-stdin",
                                 stdin=f"{PASSWORD}\n")
        self.assertEqual(offline.status, 1)
        self.assertIn("expected 2 line(s)", offline.err)
        usage = await self.cli("call-test", "--user", "alice", *where)
        self.assertEqual(usage.status, 2)
        self.assertIn("--user twice", usage.err)
        closed = await self.cli("send", "--user", "alice", "--port", "1", "--password-stdin", "bobby", "x",
                                stdin=PASSWORD + "\n")
        self.assertEqual(closed.status, 1)
        self.assertIn("cannot connect to 127.0.0.1:1", closed.err)
