"""The control socket's protocol over StringTransport, on a test domain: no sockets, no wall time."""

from __future__ import annotations

import json

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient, make_domain
from wecompany.control import MAX_REQUEST, ControlFactory, parse_request
from wecompany.domain.useradmin import UserAdministration
from wecompany.errors import Forbidden, InvalidInput, MalformedMessage

PASSWORD = "Secret-pass1"


class ControlProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.domain = make_domain(self, registration="closed")
        self.factory = ControlFactory(UserAdministration(self.domain))

    def connect(self):
        protocol = self.factory.buildProtocol(UNIXAddress(None))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def ask(self, request, *, split: bool = False) -> dict:
        protocol, transport = self.connect()
        line = (request if isinstance(request, bytes) else json.dumps(request).encode()) + b"\n"
        if split:  # a byte at a time, as a stream may deliver it
            for byte in line:
                protocol.dataReceived(bytes((byte,)))
        else:
            protocol.dataReceived(line)
        answer = transport.value()
        self.assertTrue(answer.endswith(b"\n"), answer)
        self.assertEqual(answer.count(b"\n"), 1)
        self.assertTrue(transport.disconnecting)  # one request, one answer, closed
        return json.loads(answer)

    def test_add_then_show_and_list(self) -> None:
        added = self.ask({"op": "user.add", "args": {"username": "alice", "password": PASSWORD,
                                                     "email": "a@example.com", "admin": True}}, split=True)
        self.assertTrue(added["ok"], added)
        self.assertEqual({k: added["result"][k] for k in ("username", "email", "role", "status")},
                         {"username": "alice", "email": "a@example.com", "role": "admin", "status": "active"})
        self.assertNotIn("password", json.dumps(added))
        user = self.domain.store.get_user_by_username("alice").result
        self.assertTrue(user.password_hash.startswith("$argon2id$"))  # closed registration does not apply
        shown = self.ask({"op": "user.show", "args": {"username": "ALICE"}})
        self.assertEqual(shown["result"]["id"], user.id)
        self.ask({"op": "user.add", "args": {"username": "bobby", "password": PASSWORD}})
        listed = self.ask({"op": "user.list"})
        self.assertEqual([(u["username"], u["role"]) for u in listed["result"]], [("alice", "admin"), ("bobby", "user")])

    def test_ban_signs_the_user_out_of_live_sessions(self) -> None:
        self.ask({"op": "user.add", "args": {"username": "alice", "password": PASSWORD}})
        user = self.domain.store.get_user_by_username("alice").result
        session = FakeClient(str(user.id), "alice")
        self.domain.registry.attach(session)
        token = self.domain.accounts.issue_token(user)
        answer = self.ask({"op": "user.ban", "args": {"username": "alice"}})
        self.assertEqual(answer["result"]["status"], "banned")
        self.assertEqual(session.disconnected.message, "account is disabled")
        self.failureResultOf(Deferred.fromCoroutine(self.domain.accounts.authenticate_token(token)), Forbidden)
        self.assertEqual(self.ask({"op": "user.unban", "args": {"username": "alice"}})["result"]["status"], "active")

    def test_passwd_and_delete(self) -> None:
        self.ask({"op": "user.add", "args": {"username": "alice", "password": PASSWORD}})
        weak = self.ask({"op": "user.passwd", "args": {"username": "alice", "password": "short"}})
        self.assertEqual((weak["ok"], weak["error"]["code"]), (False, 400))
        self.assertIn("at least 8", weak["error"]["message"])
        self.assertTrue(self.ask({"op": "user.passwd", "args": {"username": "alice", "password": "Other-pass22"}})["ok"])
        deleted = self.ask({"op": "user.delete", "args": {"username": "alice"}})
        self.assertEqual(deleted["result"]["status"], "deleted")
        again = self.ask({"op": "user.delete", "args": {"username": "alice"}})
        self.assertEqual(again["error"]["code"], 400)
        self.assertIn("already deleted", again["error"]["message"])

    def test_errors_of_the_hierarchy_are_answered(self) -> None:
        missing = self.ask({"op": "user.show", "args": {"username": "nobody"}})
        self.assertEqual(missing, {"ok": False, "error": {"code": 404, "error_code": 1003,
                                                          "message": "no user named 'nobody'"}})
        taken = self.ask({"op": "user.add", "args": {"username": "nobody", "password": "x"}})
        self.assertEqual(taken["error"]["code"], 400)

    def test_malformed_requests(self) -> None:
        for line, text in ((b"{not json", "one line of JSON"), (b"[1]", '"op"'), (b"\xff", "one line of JSON"),
                           (b'{"op": "user.drop"}', "unknown operation"),
                           (b'{"op": "user.show", "args": {}}', "username is required"),
                           (b'{"op": "user.show", "args": {"username": "a", "x": 1}}', "unknown argument"),
                           (b'{"op": "user.add", "args": {"username": "a", "password": "b", "admin": "yes"}}',
                            "admin must be")):
            answer = self.ask(line)
            self.assertFalse(answer["ok"], line)
            self.assertEqual(answer["error"]["code"], 400, line)
            self.assertIn(text, answer["error"]["message"], line)

    def test_a_line_too_long_is_refused_and_closed(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"x" * (MAX_REQUEST + 10))
        answer = json.loads(transport.value())
        self.assertEqual(answer["error"]["code"], 413)
        self.assertTrue(transport.disconnecting)

    def test_only_the_first_request_is_served(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b'{"op": "user.list"}\n{"op": "user.add", "args": {"username": "alice", '
                              b'"password": "Secret-pass1"}}\n')
        self.assertEqual(json.loads(transport.value()), {"ok": True, "result": []})
        self.assertIsNone(self.domain.store.get_user_by_username("alice").result)

    def test_a_client_gone_before_the_answer(self) -> None:
        answer = Deferred()

        class SlowAdmin:
            async def list(self):
                return await answer

        protocol = ControlFactory(SlowAdmin()).buildProtocol(UNIXAddress(None))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b'{"op": "user.list"}\n')
        protocol.connectionLost(None)
        answer.callback([])  # the operation was done all the same; nobody to tell
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])


class ParseRequestTests(SynchronousTestCase):
    def test_requests(self) -> None:
        self.assertEqual(parse_request(b'{"op": "user.list"}'), ("user.list", {}))
        self.assertEqual(parse_request(b'{"op": "user.ban", "args": {"username": "bob"}}'),
                         ("user.ban", {"username": "bob"}))
        self.assertRaises(MalformedMessage, parse_request, b'{"op": 5}')
        self.assertRaises(MalformedMessage, parse_request, b'{"op": "user.list", "args": []}')
        self.assertRaises(InvalidInput, parse_request, b'{"op": "user.add", "args": {"username": "a", "email": 5, '
                                                       b'"password": "p"}}')
