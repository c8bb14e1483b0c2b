"""Every call transition and timeout, with a fake clock."""

import itertools

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient
from wecompany.domain import calls as C
from wecompany.domain.events import CallAccepted, CallEnded, CallIncoming, CallRejected, CallRinging
from wecompany.domain.sessions import Identity
from wecompany.errors import Conflict, Forbidden, NotFound


class CallServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        ids = (f"call{i}" for i in itertools.count(1))
        self.calls = C.CallService(self.clock, ring_timeout=30, max_duration=3600,
                                   make_call_id=lambda: next(ids))
        self.alice, self.bob, self.carol = FakeClient("1", "alice"), FakeClient("2", "bob"), FakeClient("3", "carol")

    def place(self, caller=None, callee=None, video=True):
        caller = caller or self.alice
        callee = callee or self.bob
        return self.calls.place(caller, callee.identity, callee, video)

    def test_place_rings_both(self):
        call = self.place()
        self.assertEqual(call.state, C.RINGING)
        self.assertEqual(self.alice.take(), [CallRinging("call1", "2", True)])
        self.assertEqual(self.bob.take(), [CallIncoming("call1", "1", "alice", True)])

    def test_immediate_rejections_leave_nothing(self):
        self.assertIsNone(self.calls.place(self.alice, None, None, False))
        self.assertIsNone(self.calls.place(self.alice, self.alice.identity, self.alice, False))
        self.assertIsNone(self.calls.place(self.alice, Identity("9", "dave", 9), None, False))
        self.assertEqual([e.reason for e in self.alice.take()], ["not_found", "self", "offline"])
        self.assertEqual(self.calls.count, 0)
        self.assertIsNone(self.calls.call_of(self.alice))
        # The ring timers of would-be calls do not exist either.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_busy(self):
        self.place()
        self.alice.take()
        self.assertIsNone(self.place(self.carol, self.bob))
        self.assertEqual(self.carol.take(), [CallRejected("call2", "busy")])
        self.assertIsNone(self.calls.call_of(self.carol))
        # Calling someone who is the *caller* of a ringing call is busy too.
        self.assertIsNone(self.place(self.carol, self.alice))
        self.assertEqual(self.carol.take()[0].reason, "busy")

    def test_caller_already_in_call(self):
        self.place()
        self.assertRaises(Conflict, self.place, self.alice, self.carol)

    def test_accept_only_by_callee(self):
        call = self.place()
        self.assertRaises(Forbidden, self.calls.accept, self.alice, call.call_id)
        self.assertRaises(Forbidden, self.calls.accept, self.carol, call.call_id)
        self.assertRaises(NotFound, self.calls.accept, self.bob, "nope")
        self.alice.take(), self.bob.take()
        self.calls.accept(self.bob, call.call_id)
        self.assertEqual(call.state, C.ACTIVE)
        self.assertEqual(self.alice.take(), [CallAccepted("call1")])
        self.assertEqual(self.bob.take(), [CallAccepted("call1")])
        self.assertRaises(Conflict, self.calls.accept, self.bob, call.call_id)

    def test_reject(self):
        call = self.place()
        self.assertRaises(Forbidden, self.calls.reject, self.alice, call.call_id, "")
        self.alice.take(), self.bob.take()
        self.calls.reject(self.bob, call.call_id, "")
        self.assertEqual(self.alice.take(), [CallRejected("call1", "rejected")])
        self.assertEqual(self.bob.take(), [CallRejected("call1", "rejected")])
        self.assertEqual(self.calls.count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reject_reason_is_kept_and_bounded(self):
        call = self.place()
        self.calls.reject(self.bob, call.call_id, "in a meeting" + "x" * 200)
        self.assertEqual(len(self.alice.events[-1].reason), C.MAX_REASON)
        self.assertTrue(self.alice.events[-1].reason.startswith("in a meeting"))

    def test_reject_active_call_is_conflict(self):
        call = self.place()
        self.calls.accept(self.bob, call.call_id)
        self.assertRaises(Conflict, self.calls.reject, self.bob, call.call_id, "")

    def test_caller_cancels_while_ringing(self):
        call = self.place()
        self.alice.take(), self.bob.take()
        self.calls.end(self.alice, call.call_id)
        self.assertEqual(self.bob.take(), [CallEnded("call1", "cancelled")])
        self.assertEqual(self.alice.take(), [CallEnded("call1", "cancelled")])
        self.assertIsNone(self.calls.call_of(self.bob))

    def test_callee_declines_with_end(self):
        call = self.place()
        self.calls.end(self.bob, call.call_id)
        self.assertEqual(self.alice.events[-1], CallEnded("call1", "declined"))

    def test_end_by_stranger_forbidden(self):
        call = self.place()
        self.assertRaises(Forbidden, self.calls.end, self.carol, call.call_id)
        self.assertRaises(NotFound, self.calls.end, self.carol, "unknown")

    def test_hangup(self):
        call = self.place()
        self.calls.accept(self.bob, call.call_id)
        self.alice.take(), self.bob.take()
        self.calls.end(self.bob, call.call_id)
        self.assertEqual(self.alice.take(), [CallEnded("call1", "hangup")])
        self.assertEqual(self.bob.take(), [CallEnded("call1", "hangup")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Both are free again.
        self.assertIsNotNone(self.place(self.bob, self.carol))

    def test_ring_timeout(self):
        self.place()
        self.alice.take(), self.bob.take()
        self.clock.advance(29.9)
        self.assertEqual(self.alice.events, [])
        self.clock.advance(0.1)
        self.assertEqual(self.alice.take(), [CallRejected("call1", "timeout")])
        self.assertEqual(self.bob.take(), [CallRejected("call1", "timeout")])
        self.assertEqual(self.calls.count, 0)

    def test_accept_cancels_ring_timer_and_max_duration_ends(self):
        call = self.place()
        self.clock.advance(20)
        self.calls.accept(self.bob, call.call_id)
        self.alice.take(), self.bob.take()
        self.clock.advance(15)  # past the original ring timeout: nothing happens
        self.assertEqual(self.alice.events, [])
        self.clock.advance(3600 - 15 - 0.5)
        self.assertEqual(self.alice.events, [])
        self.clock.advance(0.5)
        self.assertEqual(self.alice.take(), [CallEnded("call1", "max_duration")])
        self.assertEqual(self.bob.take(), [CallEnded("call1", "max_duration")])

    def test_disconnect_ends_call_for_the_other(self):
        for accept in (False, True):
            call = self.place()
            if accept:
                self.calls.accept(self.bob, call.call_id)
            self.alice.take(), self.bob.take()
            self.calls.session_closed(self.alice)
            self.assertEqual(self.bob.take(), [CallEnded(call.call_id, "disconnected")])
            self.assertEqual(self.calls.count, 0)
            self.assertEqual(self.clock.getDelayedCalls(), [])
        self.calls.session_closed(self.carol)  # not in a call: nothing

    def test_end_all(self):
        self.place()
        c2 = self.calls.place(self.carol, FakeClient("4").identity, FakeClient("4"), False)
        self.assertIsNotNone(c2)
        self.calls.end_all("shutdown")
        self.assertEqual(self.calls.count, 0)
        self.assertEqual(self.alice.events[-1], CallEnded("call1", "shutdown"))

    def test_relay_only_while_active(self):
        call = self.place()
        self.assertEqual(self.calls.relay(self.alice, b"early"), C.NOT_IN_CALL)
        self.assertEqual(self.calls.relay(self.carol, b"x"), C.NOT_IN_CALL)
        self.calls.accept(self.bob, call.call_id)
        self.assertEqual(self.calls.relay(self.alice, b"a->b"), C.RELAYED)
        self.assertEqual(self.calls.relay(self.bob, b"b->a"), C.RELAYED)
        self.assertEqual(self.bob.media, [("call1", b"a->b")])
        self.assertEqual(self.alice.media, [("call1", b"b->a")])

    def test_relay_drops_for_blocked_receiver(self):
        call = self.place()
        self.calls.accept(self.bob, call.call_id)
        self.bob.blocked = True
        for _ in range(5):
            self.assertEqual(self.calls.relay(self.alice, b"x"), C.DROPPED)
        self.assertEqual((call.dropped, self.calls.dropped_packets), (5, 5))
        self.bob.blocked = False
        self.assertEqual(self.calls.relay(self.alice, b"y"), C.RELAYED)
        self.assertEqual(self.bob.media, [("call1", b"y")])
        self.assertEqual(self.calls.active_count, 1)
