"""Text delivery ordering, presence and session replacement in the chat service."""

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient, make_domain, make_user
from wecompany.domain.chat import DELIVERED, STORED, SessionReplaced
from wecompany.domain.events import CallEnded, PresenceChanged, TextMessage
from wecompany.errors import Conflict, NotFound


class GatedStore:
    """Wraps a store so the test decides when store_offline_message completes."""

    def __init__(self, store):
        self._store = store
        self.gates: list[Deferred] = []

    def store_offline_message(self, message):
        gate = Deferred()
        self.gates.append(gate)
        gate.addCallback(lambda _: self._store.store_offline_message(message))
        return gate

    def __getattr__(self, name):
        return getattr(self._store, name)


def run(coro):
    return Deferred.fromCoroutine(coro)


class ChatTests(SynchronousTestCase):
    def setUp(self):
        self.d = make_domain(self)
        self.chat = self.d.chat
        self.alice_id = make_user(self.d, "alice")
        self.bob_id = make_user(self.d, "bob")
        self.alice = FakeClient(str(self.alice_id), "alice")
        self.bob = FakeClient(str(self.bob_id), "bob")

    def texts(self, client):
        return [e.text for e in client.take() if isinstance(e, TextMessage)]

    def test_live_and_stored(self):
        self.chat.open_session(self.alice)
        ack = self.successResultOf(run(self.chat.send_text(self.alice, "bob", "one")))
        self.assertEqual((ack.status, ack.to), (STORED, str(self.bob_id)))
        self.chat.open_session(self.bob)
        self.assertEqual(self.texts(self.bob), ["one"])
        ack = self.successResultOf(run(self.chat.send_text(self.alice, "bob", "two")))
        self.assertEqual(ack.status, DELIVERED)
        self.assertEqual(self.texts(self.bob), ["two"])

    def test_store_in_flight_during_login_is_not_overtaken(self):
        gated = GatedStore(self.d.store)
        self.chat.store = gated
        self.chat.open_session(self.alice)
        first = run(self.chat.send_text(self.alice, "bob", "first"))  # bob offline: store pending
        self.assertNoResult(first)
        self.chat.open_session(self.bob)  # drain finds nothing yet, but must wait for "first"
        second = run(self.chat.send_text(self.alice, "bob", "second"))
        # "second" may not overtake: it is stored behind "first", not delivered live.
        self.assertEqual(self.texts(self.bob), [])
        gated.gates[0].callback(None)
        self.assertEqual(self.successResultOf(first).status, STORED)
        gated.gates[1].callback(None)
        self.assertEqual(self.successResultOf(second).status, STORED)
        self.assertEqual(self.texts(self.bob), ["first", "second"])
        # Drained: the next one is live again.
        ack = self.successResultOf(run(self.chat.send_text(self.alice, "bob", "third")))
        self.assertEqual(ack.status, DELIVERED)
        self.assertEqual(self.texts(self.bob), ["third"])

    def test_unknown_recipient(self):
        self.chat.open_session(self.alice)
        for to in ("nobody", "999", "", "名字"):
            self.failureResultOf(run(self.chat.send_text(self.alice, to, "x")), NotFound)

    def test_presence_to_watchers_only(self):
        carol = FakeClient(str(make_user(self.d, "carol")), "carol")
        self.d.store.add_contact(self.alice_id, self.bob_id, 0)
        self.chat.open_session(self.alice)
        self.chat.open_session(carol)
        self.chat.open_session(self.bob)
        self.assertEqual(self.alice.take(), [PresenceChanged(str(self.bob_id), "bob", True)])
        self.assertEqual(carol.take(), [])
        # A second (signaling) session does not announce again; closing one of two does not go offline.
        ws = FakeClient(str(self.bob_id), "bob", kind="ws")
        self.chat.open_session(ws)
        self.chat.close_session(self.bob)
        self.assertEqual(self.alice.take(), [])
        self.chat.close_session(ws)
        self.assertEqual(self.alice.take(), [PresenceChanged(str(self.bob_id), "bob", False)])
        self.chat.close_session(ws)  # idempotent
        self.assertEqual(self.alice.take(), [])

    def test_settle_waits_for_the_announcements_under_way(self):
        """The daemon's stop waits for these before it closes the store (they read the watchers from it)."""
        self.d.store.add_contact(self.alice_id, self.bob_id, 0)
        self.chat.open_session(self.alice)
        self.chat.open_session(self.bob)
        self.alice.take()
        self.successResultOf(run(self.chat.settle()))  # nothing under way: at once
        store, gates = self.d.store, []

        class SlowWatchers:
            def watchers_of(self, account_id):
                gate = Deferred()
                gates.append(gate)
                return gate.addCallback(lambda _: store.watchers_of(account_id))

            def __getattr__(self, name):
                return getattr(store, name)

        self.chat.store = SlowWatchers()
        self.chat.close_session(self.bob)
        settled = run(self.chat.settle())
        self.assertNoResult(settled)
        gates[0].callback(None)
        self.successResultOf(settled)
        self.assertEqual(self.alice.take(), [PresenceChanged(str(self.bob_id), "bob", False)])

    def test_settle_gives_up_after_its_timeout(self):
        self.d.store.add_contact(self.alice_id, self.bob_id, 0)
        self.chat.open_session(self.alice)
        self.chat.open_session(self.bob)
        store = self.d.store

        class Stuck:
            def watchers_of(self, account_id):
                return Deferred()

            def __getattr__(self, name):
                return getattr(store, name)

        self.chat.store = Stuck()
        self.chat.close_session(self.bob)
        settled = run(self.chat.settle(timeout=5))
        self.d.clock.advance(4.9)
        self.assertNoResult(settled)
        self.d.clock.advance(0.1)
        self.successResultOf(settled)

    def test_replacement_ends_call_and_disconnects_old(self):
        self.chat.open_session(self.alice)
        self.chat.open_session(self.bob)
        self.successResultOf(run(self.chat.place_call(self.alice, "bob", False)))
        self.alice.take(), self.bob.take()
        newer = FakeClient(str(self.alice_id), "alice")
        self.chat.open_session(newer)
        self.assertIsInstance(self.alice.disconnected, SessionReplaced)
        self.assertEqual(type(self.bob.take()[-1]), CallEnded)
        self.assertIs(self.d.registry.chat_client(str(self.alice_id)), newer)

    def test_anonymous_to_offline_is_refused(self):
        anon = FakeClient("visitor", account=False)
        self.chat.open_session(anon)
        self.failureResultOf(run(self.chat.send_text(anon, "bob", "x")), Conflict)
        self.chat.open_session(self.bob)
        ack = self.successResultOf(run(self.chat.send_text(anon, "bob", "x")))
        self.assertEqual(ack.status, DELIVERED)
