"""
The SFU's domain without sockets: admission, limits, the negotiation state
machine and housekeeping, against a fake engine whose Deferreds the tests
fire by hand and a task.Clock.
"""

import itertools
import uuid

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wecompany.domain import sfu as S
from wecompany.domain.interfaces import IMediaEngineListener, IMeetingListener
from wecompany.domain.sessions import Identity
from wecompany.domain.sfu import ForwardedStream
from wecompany.errors import (
    Conflict, Forbidden, InternalError, InvalidInput, NotFound, PeerNotFound, RateLimited, Unavailable,
)

ROOM = "room-1"
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"
ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\n"


class FakeEngine:
    """
    Records every call. ``open_peer``, ``renegotiate`` and ``apply_answer``
    return Deferreds the test fires (:meth:`fire`); the rest succeed at once
    unless ``fail_with`` says otherwise.
    """

    manual = ("open_peer", "renegotiate", "apply_answer")

    def __init__(self):
        self.calls = []
        self.waiting = []  # (name, args, Deferred) not yet fired
        self.fail_with = {}  # name -> exception for the auto-fired calls

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if name in self.manual:
            d = Deferred()
            self.waiting.append((name, args, d))
            return d
        if name in self.fail_with:
            return fail(self.fail_with[name])
        return succeed(None)

    def open_peer(self, room, peer_id, offer_sdp):
        return self._call("open_peer", room, peer_id, offer_sdp)

    def add_candidate(self, peer_id, candidate):
        return self._call("add_candidate", peer_id, candidate)

    def renegotiate(self, peer_id, streams):
        return self._call("renegotiate", peer_id, tuple(streams))

    def apply_answer(self, peer_id, answer_sdp):
        return self._call("apply_answer", peer_id, answer_sdp)

    def request_keyframe(self, peer_id):
        return self._call("request_keyframe", peer_id)

    def close_peer(self, peer_id):
        return self._call("close_peer", peer_id)

    # -- for the tests --
    def named(self, name):
        return [c[1:] for c in self.calls if c[0] == name]

    def pending(self, name, peer_id=None):
        return [(a, d) for n, a, d in self.waiting if n == name and (peer_id is None or a[1 if n == "open_peer" else 0] == peer_id)]

    def fire(self, name, peer_id=None, result=None, error=None):
        """Fire the oldest waiting ``name`` call (of ``peer_id``) with ``result`` or ``error``."""
        for i, (n, a, d) in enumerate(self.waiting):
            if n == name and (peer_id is None or a[1 if n == "open_peer" else 0] == peer_id):
                del self.waiting[i]
                if error is not None:
                    d.errback(error)
                else:
                    d.callback(result)
                return a
        raise AssertionError(f"no {name} waiting for {peer_id}")


@attrs.define
class Session:
    session_id: str
    peer_id: str
    user_id: int
    username: str
    meeting_id: int = 10
    screen_sharing: bool = False


class Harness:
    """An SfuService over a fake engine, clock and signaling rooms."""

    def __init__(self, limits=None, room_meeting=None):
        self.clock = Clock()
        self.engine = FakeEngine()
        self.sessions = {}  # (room_id, user_id) -> [Session]
        self.meetings = {ROOM: 10, "room-2": 20}
        ids = (f"peer{i}" for i in itertools.count(1))
        self.sfu = S.SfuService(self.engine, self.clock, self.members,
                                room_meeting or self.meetings.get, limits=limits,
                                make_peer_id=lambda: next(ids))
        self._n = itertools.count(1)

    def members(self, room_id, user_id):
        return list(self.sessions.get((room_id, user_id), []))

    def sign_in(self, user_id, room_id=ROOM, meeting_id=None):
        n = next(self._n)
        session = Session(f"s{n}", f"web_{user_id}_{n}", user_id, f"user{user_id}",
                          meeting_id if meeting_id is not None else self.meetings.get(room_id, 0))
        self.sessions.setdefault((room_id, user_id), []).append(session)
        return session

    def sign_out(self, session, room_id=ROOM):
        self.sessions[(room_id, session.user_id)].remove(session)

    def open(self, user_id, room_id=ROOM, identity=None):
        """A peer answered (open_peer fired) but not connected. -> peer_id."""
        d = self.sfu.answer(room_id, str(user_id), OFFER, identity)
        args = self.engine.fire("open_peer", result="answer-sdp")
        result = self.successResultOf(d)
        assert result == {"peer_id": args[1], "answer_sdp": "answer-sdp"}, result
        return result["peer_id"]

    def connect(self, user_id, room_id=ROOM):
        peer_id = self.open(user_id, room_id)
        self.sfu.connection_state(peer_id, "connected")
        return peer_id

    def negotiate(self, peer_id, offer="offer-sdp"):
        """
        Complete the server offer / browser answer rounds for ``peer_id``
        until it has nothing left to offer. -> the streams of the last offer.
        """
        rounds = 0
        while self.engine.pending("renegotiate", peer_id):
            (streams,) = [a[1] for a, _ in self.engine.pending("renegotiate", peer_id)]
            self.engine.fire("renegotiate", peer_id, result=offer)
            assert self.sfu.pending_offer(peer_id) == offer
            d = self.sfu.answer_offer(peer_id, ANSWER)
            self.engine.fire("apply_answer", peer_id)
            self.successResultOf(d)
            rounds += 1
        assert rounds, f"nothing to negotiate for {peer_id}"
        return streams

    def publish(self, peer_id, *kinds):
        for kind in kinds:
            self.sfu.track_added(peer_id, f"{peer_id}-{kind}", kind)


class SfuTestCase(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.h.successResultOf = self.successResultOf
        self.sfu, self.engine, self.clock = self.h.sfu, self.h.engine, self.h.clock

    def streams_of(self, peer_id, *kinds):
        """What a subscriber receives of ``peer_id``'s tracks."""
        stream_id = self.sfu.peers[peer_id].stream_id
        return tuple(ForwardedStream(peer_id, f"{peer_id}-{k}", k, stream_id) for k in kinds)


class InterfaceTests(SfuTestCase):
    def test_provides_listeners(self):
        verifyObject(IMediaEngineListener, self.sfu)
        verifyObject(IMeetingListener, self.sfu)

    def test_default_peer_ids_are_random_uuids(self):
        sfu = S.SfuService(FakeEngine(), Clock(), lambda r, u: [], lambda r: None)
        ids = {sfu._make_peer_id() for _ in range(100)}
        self.assertEqual(len(ids), 100)
        self.assertTrue(all(uuid.UUID(i).version == 4 for i in ids))


class AnswerTests(SfuTestCase):
    def test_answer_opens_a_stable_peer(self):
        session = self.h.sign_in(7)
        d = self.sfu.answer(ROOM, "7", OFFER)
        self.assertNoResult(d)
        self.assertEqual(self.engine.named("open_peer"), [(ROOM, "peer1", OFFER)])
        self.engine.fire("open_peer", result="answer-sdp")
        self.assertEqual(self.successResultOf(d), {"peer_id": "peer1", "answer_sdp": "answer-sdp"})
        peer = self.sfu.peers["peer1"]
        self.assertEqual((peer.user_id, peer.session_id, peer.stream_id), (7, session.session_id, session.peer_id))
        self.assertIsNone(self.sfu.pending_offer("peer1"))
        self.assertEqual(self.engine.named("renegotiate"), [])
        self.assertEqual(self.sfu.counters.peers_opened, 1)

    def test_offer_as_description_and_int_user_id(self):
        self.h.sign_in(7)
        d = self.sfu.answer(ROOM, 7, {"type": "offer", "sdp": OFFER})
        self.engine.fire("open_peer", result="a")
        self.assertEqual(self.successResultOf(d)["peer_id"], "peer1")

    def test_invalid_input(self):
        self.h.sign_in(7)
        for user_id in ("0", "-1", "abc", "", " 7", "7.0", "1" * 20, True, 7.5, None, 0, 2**63, "٧"):
            self.failureResultOf(self.sfu.answer(ROOM, user_id, OFFER), InvalidInput)
        for sdp in (None, 5, "", "hello", {"type": "answer", "sdp": OFFER}, {"sdp": OFFER},
                    "v=0" + "x" * (128 * 1024)):
            self.failureResultOf(self.sfu.answer(ROOM, "7", sdp), InvalidInput)
        for room in ("", None, 5, "r" * 129):
            self.failureResultOf(self.sfu.answer(room, "7", OFFER), InvalidInput)
        self.assertEqual(self.engine.calls, [])

    def test_no_signaling_session_is_forbidden(self):
        self.h.sign_in(8)  # someone else is in the room
        f = self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER), Forbidden)
        self.assertIn("join the meeting's room", f.value.message)
        self.h.sign_in(7, room_id="room-2")  # in another room only
        self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER), Forbidden)
        self.assertEqual(self.engine.calls, [])

    def test_token_must_be_the_user(self):
        self.h.sign_in(7)
        self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER, Identity("8", "bob", 8)), Forbidden)
        self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER, 8), Forbidden)
        self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER, Identity("x", "anon", None)), Forbidden)
        self.assertEqual(self.engine.calls, [])
        self.h.open(7, identity=Identity("7", "alice", 7))

    def test_meeting_over_is_forbidden(self):
        self.h.sign_in(7)
        del self.h.meetings[ROOM]
        self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER), Forbidden)
        self.assertEqual(self.engine.calls, [])

    def test_session_of_another_meeting_is_forbidden(self):
        self.h.sign_in(7, meeting_id=99)
        self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER), Forbidden)

    def test_admission_is_decided_after_the_meeting_lookup(self):
        lookups = []
        h = Harness(room_meeting=lambda room_id: lookups.append(Deferred()) or lookups[-1])
        session = h.sign_in(7)
        d = h.sfu.answer(ROOM, "7", OFFER)
        h.sign_out(session)  # the WebSocket closed while the meeting was looked up
        lookups[0].callback(10)
        self.failureResultOf(d, Forbidden)
        self.assertEqual(h.engine.calls, [])

    def test_bound_to_first_session(self):
        first = self.h.sign_in(7)
        self.h.sign_in(7)
        peer_id = self.h.open(7)
        self.assertEqual(self.sfu.peers[peer_id].session_id, first.session_id)

    def test_two_tabs_bound_to_their_own_sessions(self):
        first, second = self.h.sign_in(7), self.h.sign_in(7)
        one, two, three = self.h.open(7), self.h.open(7), self.h.open(7)
        self.assertEqual([self.sfu.peers[p].stream_id for p in (one, two, three)],
                         [first.peer_id, second.peer_id, first.peer_id])

    def test_open_failure_forgets_the_peer(self):
        self.h.sign_in(7)
        d = self.sfu.answer(ROOM, "7", OFFER)
        self.engine.fire("open_peer", error=Unavailable("worker busy"))
        self.failureResultOf(d, Unavailable)
        self.assertEqual(self.sfu.peers, {})
        self.assertNotIn(ROOM, self.sfu.rooms)
        self.assertEqual(self.engine.named("close_peer"), [("peer1",)])
        self.assertEqual(self.sfu.counters.peers_closed["open_failed"], 1)

    def test_open_unexpected_error_is_internal(self):
        self.h.sign_in(7)
        d = self.sfu.answer(ROOM, "7", OFFER)
        self.engine.fire("open_peer", error=RuntimeError("boom"))
        self.failureResultOf(d, InternalError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.sfu.peers, {})

    def test_closed_while_opening(self):
        self.h.sign_in(7)
        d = self.sfu.answer(ROOM, "7", OFFER)
        self.sfu.candidate("peer1", {"candidate": "c1", "sdpMid": "0", "sdpMLineIndex": 0})
        self.assertEqual(self.sfu.leave(ROOM, "7", identity=7), 1)
        self.engine.fire("open_peer", result="a")
        self.failureResultOf(d, PeerNotFound)
        self.assertEqual(self.engine.named("close_peer"), [("peer1",), ("peer1",)])
        self.assertEqual(self.sfu.peers, {})


class LimitTests(SfuTestCase):
    def setUp(self):
        super().setUp()
        self.h = Harness(limits=S.SfuLimits(max_peers_per_user=2, max_peers_per_room=3, max_peers=4))
        self.h.successResultOf = self.successResultOf
        self.sfu, self.engine = self.h.sfu, self.h.engine

    def test_peers_per_user(self):
        self.h.sign_in(7)
        self.h.open(7)
        self.h.open(7)
        f = self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER), RateLimited)
        self.assertEqual(f.value.retry_after, 10.0)
        self.assertEqual(len(self.sfu.peers), 2)

    def test_reloaded_tabs_make_room(self):
        old = self.h.sign_in(7)
        first, second = self.h.open(7), self.h.open(7)
        self.h.sign_out(old)  # the tab reloaded: a new WebSocket, a new session
        self.h.sign_in(7)
        third = self.h.open(7)
        self.assertEqual(set(self.sfu.peers), {third})
        self.assertEqual([p["peer_id"] for p in self.sfu.room_peers(ROOM)["peers"]], [third])
        self.assertEqual(self.sfu.counters.peers_closed["replaced"], 2)
        self.assertIn((first,), self.engine.named("close_peer"))
        self.assertIn((second,), self.engine.named("close_peer"))

    def test_peers_per_room(self):
        for user in (1, 2, 3, 4):
            self.h.sign_in(user)
        for user in (1, 2, 3):
            self.h.open(user)
        self.failureResultOf(self.sfu.answer(ROOM, "4", OFFER), Conflict)

    def test_peers_in_all(self):
        for user in (1, 2, 3):
            self.h.sign_in(user)
            self.h.sign_in(user, room_id="room-2")
            self.h.open(user)
        self.h.open(1, room_id="room-2")
        self.failureResultOf(self.sfu.answer("room-2", "2", OFFER), Unavailable)

    def test_pending_open_counts(self):
        self.h.sign_in(7)
        self.sfu.answer(ROOM, "7", OFFER)
        self.sfu.answer(ROOM, "7", OFFER)
        self.failureResultOf(self.sfu.answer(ROOM, "7", OFFER), RateLimited)


class CandidateTests(SfuTestCase):
    def setUp(self):
        super().setUp()
        self.h.sign_in(7)
        self.peer = self.h.open(7)

    def test_local_candidates_drained(self):
        c1 = {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
        c2 = dict(c1, candidate="candidate:2 1 udp 1 127.0.0.1 5001 typ host")
        self.sfu.candidate(self.peer, c1)
        self.sfu.candidate(self.peer, c2)
        self.assertEqual(self.sfu.candidates(self.peer), {"candidates": [c1, c2], "complete": False})
        self.assertEqual(self.sfu.candidates(self.peer), {"candidates": [], "complete": False})
        self.sfu.gathering_complete(self.peer)
        self.assertEqual(self.sfu.candidates(self.peer), {"candidates": [], "complete": True})

    def test_candidates_before_the_answer_are_kept(self):
        self.h.sign_in(8)
        d = self.sfu.answer(ROOM, "8", OFFER)
        self.sfu.candidate("peer2", {"candidate": "c", "sdpMid": "0", "sdpMLineIndex": 0})
        self.sfu.gathering_complete("peer2")
        self.engine.fire("open_peer", result="a")
        self.successResultOf(d)
        self.assertEqual(self.sfu.candidates("peer2")["candidates"][0]["candidate"], "c")
        self.assertTrue(self.sfu.candidates("peer2")["complete"])

    def test_local_queue_bounded(self):
        for i in range(70):
            self.sfu.candidate(self.peer, {"candidate": f"c{i}", "sdpMid": "0", "sdpMLineIndex": 0})
        batch = self.sfu.candidates(self.peer)["candidates"]
        self.assertEqual([c["candidate"] for c in batch], [f"c{i}" for i in range(64)])
        self.assertEqual(self.sfu.peers[self.peer].candidates_dropped, 6)
        self.assertEqual(self.sfu.counters.candidates_dropped, 6)
        self.sfu.candidate(self.peer, {"candidate": "again", "sdpMid": "0", "sdpMLineIndex": 0})
        self.assertEqual(len(self.sfu.candidates(self.peer)["candidates"]), 1)

    def test_events_for_unknown_peers_are_ignored(self):
        self.sfu.candidate("nobody", {"candidate": "c"})
        self.sfu.gathering_complete("nobody")
        self.sfu.connection_state("nobody", "connected")
        self.sfu.track_added("nobody", "t", "video")
        self.sfu.track_ended("nobody", "t")
        self.sfu.connection_state(self.peer, "bogus")
        self.assertEqual(self.sfu.peers[self.peer].state, "new")

    def test_remote_candidate_normalised(self):
        c = {"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0,
             "usernameFragment": "abcd", "extra": "dropped"}
        self.successResultOf(self.sfu.add_candidate(self.peer, c))
        self.successResultOf(self.sfu.add_candidate(self.peer, {"candidate": "", "sdpMid": "0"}))
        self.successResultOf(self.sfu.add_candidate(self.peer, None))
        expected = dict(c)
        del expected["extra"]
        self.assertEqual(self.engine.named("add_candidate"), [(self.peer, expected), (self.peer, None), (self.peer, None)])
        self.assertEqual(self.sfu.counters.candidates_received, 3)

    def test_remote_candidate_invalid(self):
        for c in ("x", [], {"sdpMid": "0"}, {"candidate": 5, "sdpMid": "0"},
                  {"candidate": "c" * 1025, "sdpMid": "0"}, {"candidate": "c"},
                  {"candidate": "c", "sdpMid": 0}, {"candidate": "c", "sdpMid": "m" * 65},
                  {"candidate": "c", "sdpMLineIndex": -1}, {"candidate": "c", "sdpMLineIndex": True},
                  {"candidate": "c", "sdpMLineIndex": "0"}, {"candidate": "c", "sdpMid": "0", "usernameFragment": 1}):
            self.failureResultOf(self.sfu.add_candidate(self.peer, c), InvalidInput)
        self.assertEqual(self.engine.named("add_candidate"), [])

    def test_remote_candidates_bounded(self):
        for _ in range(128):
            self.successResultOf(self.sfu.add_candidate(self.peer, {"candidate": "c", "sdpMid": "0"}))
        self.failureResultOf(self.sfu.add_candidate(self.peer, {"candidate": "c", "sdpMid": "0"}), RateLimited)
        self.assertEqual(len(self.engine.named("add_candidate")), 128)

    def test_remote_candidate_token_must_be_the_user(self):
        self.failureResultOf(self.sfu.add_candidate(self.peer, None, identity=8), Forbidden)
        self.successResultOf(self.sfu.add_candidate(self.peer, None, identity=Identity("7", "alice", 7)))

    def test_the_polls_and_the_answer_take_a_token_that_must_be_the_users(self):
        self.assertRaises(Forbidden, self.sfu.candidates, self.peer, identity=8)
        self.assertRaises(Forbidden, self.sfu.pending_offer, self.peer, identity=Identity("8", "bob", 8))
        self.failureResultOf(self.sfu.answer_offer(self.peer, ANSWER, identity=8), Forbidden)
        self.assertEqual(self.sfu.candidates(self.peer, identity=7)["complete"], False)
        self.assertIsNone(self.sfu.pending_offer(self.peer, identity=Identity("7", "alice", 7)))
        self.failureResultOf(self.sfu.answer_offer(self.peer, ANSWER, identity=7), Conflict)  # no offer: past it
        self.assertRaises(PeerNotFound, self.sfu.candidates, "nope", identity=7)

    def test_engine_rejects_candidate_keeps_peer(self):
        self.engine.fail_with["add_candidate"] = InvalidInput("bad candidate")
        self.failureResultOf(self.sfu.add_candidate(self.peer, None), InvalidInput)
        self.assertIn(self.peer, self.sfu.peers)

    def test_engine_lost_peer_closes(self):
        self.engine.fail_with["add_candidate"] = PeerNotFound(self.peer)
        self.failureResultOf(self.sfu.add_candidate(self.peer, None), PeerNotFound)
        self.assertNotIn(self.peer, self.sfu.peers)
        self.assertEqual(self.sfu.counters.peers_closed["engine_peer_not_found"], 1)

    def test_engine_error_closes(self):
        self.engine.fail_with["add_candidate"] = Unavailable("gone")
        self.failureResultOf(self.sfu.add_candidate(self.peer, None), Unavailable)
        self.assertNotIn(self.peer, self.sfu.peers)
        self.assertEqual(len(self.flushLoggedErrors(Unavailable)), 1)


class StalePeerTests(SfuTestCase):
    def test_unknown_peer_ids(self):
        for peer_id in ("nope", 5, None, "x" * 500):
            f = self.assertRaises(PeerNotFound, self.sfu.candidates, peer_id)
            self.assertTrue(f.message.startswith("peer not found: "))
            self.assertLessEqual(len(f.message), 100)
            self.assertRaises(PeerNotFound, self.sfu.pending_offer, peer_id)
            self.failureResultOf(self.sfu.answer_offer(peer_id, ANSWER), PeerNotFound)
            self.failureResultOf(self.sfu.add_candidate(peer_id, None), PeerNotFound)
        self.assertEqual(self.assertRaises(PeerNotFound, self.sfu.pending_offer, "abc").message, "peer not found: abc")
        self.assertEqual(self.engine.calls, [])

    def test_closed_peer_is_stale(self):
        self.h.sign_in(7)
        peer = self.h.connect(7)
        self.sfu.connection_state(peer, "closed")
        self.assertRaises(PeerNotFound, self.sfu.pending_offer, peer)
        self.assertRaises(PeerNotFound, self.sfu.candidates, peer)
        self.assertEqual(self.engine.named("close_peer"), [(peer,)])
        self.assertEqual(self.sfu.counters.peers_closed["closed"], 1)

    def test_answer_without_pending_offer(self):
        self.h.sign_in(7)
        peer = self.h.connect(7)
        self.failureResultOf(self.sfu.answer_offer(peer, ANSWER), Conflict)
        self.failureResultOf(self.sfu.answer_offer(peer, "not sdp"), InvalidInput)
        self.assertEqual(self.engine.named("apply_answer"), [])


class OfferGrowthTests(SfuTestCase):
    """Every publisher who left keeps its m-sections in a subscriber's SDP: past a size the connection starts afresh."""

    def setUp(self):
        super().setUp()
        self.h = Harness(limits=S.SfuLimits(max_offer_sdp=1000))
        self.h.successResultOf = self.successResultOf
        self.sfu, self.engine = self.h.sfu, self.h.engine
        for user in (1, 2):
            self.h.sign_in(user)

    def test_an_offer_past_the_limit_closes_the_connection_for_a_fresh_one(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio", "video")
        self.h.negotiate(b, offer="v=0\r\n" + "a=x\r\n" * 100)  # 606 bytes: sent
        self.sfu.track_ended(a, f"{a}-audio")  # another offer for b, which has grown too large
        self.engine.fire("renegotiate", b, result="v=0\r\n" + "a=x\r\n" * 200)
        self.assertNotIn(b, self.sfu.peers)
        self.assertEqual(self.sfu.counters.peers_closed["sdp_limit"], 1)
        self.assertIn(("close_peer", b), self.engine.calls)
        with self.assertRaises(PeerNotFound):  # the browser's poll: it reconnects
            self.sfu.pending_offer(b)
        self.assertIn(a, self.sfu.peers)

    def test_within_the_limit_the_offer_is_sent(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, result="v=0\r\n" + "a=x\r\n" * 150)  # 906 bytes
        self.assertEqual(self.sfu.pending_offer(b), "v=0\r\n" + "a=x\r\n" * 150)


class NegotiationTests(SfuTestCase):
    def setUp(self):
        super().setUp()
        for user in (1, 2, 3):
            self.h.sign_in(user)

    def test_a_stopping_sfu_offers_nothing_more(self):
        """The daemon stops: as its connections close one by one, nobody is renegotiated or asked for keyframes."""
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio", "video")
        self.h.publish(b, "audio", "video")
        self.h.negotiate(a)
        self.h.negotiate(b)
        calls = len(self.engine.calls)
        self.sfu.stop()
        self.sfu.track_ended(a, f"{a}-video")
        self.sfu.connection_state(a, "closed")
        self.assertNotIn(a, self.sfu.peers)
        self.assertEqual([c for c in self.engine.calls[calls:] if c[0] != "close_peer"], [])

    def test_lone_peer_is_not_offered_nothing(self):
        a = self.h.connect(1)
        # Nothing to receive: no empty offer to answer.
        self.assertEqual(self.engine.named("renegotiate"), [])
        self.assertIsNone(self.sfu.pending_offer(a))

    def test_nothing_forwarded_before_connected(self):
        a = self.h.connect(1)
        self.h.publish(a, "audio", "video")
        b = self.h.open(2)
        self.assertEqual(self.engine.named("renegotiate"), [])
        self.sfu.connection_state(b, "connecting")
        self.assertEqual(self.engine.named("renegotiate"), [])
        self.sfu.connection_state(b, "connected")
        self.assertEqual(self.engine.named("renegotiate"), [(b, self.streams_of(a, "audio", "video"))])

    def test_subscribed_to_all_existing_tracks_in_one_offer(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio", "video")
        self.h.negotiate(b)
        self.h.publish(b, "audio", "video")
        self.h.negotiate(a)
        c = self.h.connect(3)
        self.assertEqual(self.engine.pending("renegotiate", c)[0][0][1],
                         self.streams_of(a, "audio", "video") + self.streams_of(b, "audio", "video"))
        self.assertEqual(len([call for call in self.engine.named("renegotiate") if call[0] == c]), 1)

    def test_stream_id_is_the_publishers_signaling_peer_id(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio", "video")
        streams = self.h.negotiate(b)
        session = self.h.sessions[(ROOM, 1)][0]
        self.assertEqual({s.stream_id for s in streams}, {session.peer_id})
        self.assertEqual([s.kind for s in streams], ["audio", "video"])
        self.assertEqual({s.publisher_peer_id for s in streams}, {a})

    def test_pending_offer_polled_until_answered(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "video")
        self.assertIsNone(self.sfu.pending_offer(b))  # renegotiate still in flight
        self.engine.fire("renegotiate", b, result="offer-1")
        self.assertEqual([self.sfu.pending_offer(b) for _ in range(3)], ["offer-1"] * 3)
        d = self.sfu.answer_offer(b, {"type": "answer", "sdp": ANSWER})
        self.assertEqual(self.engine.named("apply_answer"), [(b, ANSWER)])
        self.assertIsNone(self.sfu.pending_offer(b))
        self.failureResultOf(self.sfu.answer_offer(b, ANSWER), Conflict)  # a second answer
        self.engine.fire("apply_answer", b)
        self.successResultOf(d)
        self.assertEqual(self.sfu.peers[b].negotiated, self.streams_of(a, "video"))
        self.assertEqual((self.sfu.counters.offers, self.sfu.counters.answers), (1, 1))

    def test_new_track_to_every_connected_other_peer(self):
        a, b, c = self.h.connect(1), self.h.connect(2), self.h.open(3)
        self.h.publish(a, "audio")
        self.assertEqual(self.engine.named("renegotiate"), [(b, self.streams_of(a, "audio"))])
        self.assertEqual(self.engine.pending("renegotiate", a), [])
        self.assertEqual(self.engine.pending("renegotiate", c), [])

    def test_reoffer_while_offer_pending(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, result="offer-1")
        self.h.publish(a, "video")  # while offer-1 awaits its answer
        self.assertEqual(len(self.engine.named("renegotiate")), 1)
        self.assertTrue(self.sfu.peers[b].reoffer)
        self.assertEqual(self.sfu.pending_offer(b), "offer-1")
        d = self.sfu.answer_offer(b, ANSWER)
        self.assertEqual(len(self.engine.named("renegotiate")), 1)  # not before the answer is applied
        self.engine.fire("apply_answer", b)
        self.successResultOf(d)
        self.assertEqual(self.engine.named("renegotiate")[-1], (b, self.streams_of(a, "audio", "video")))
        self.assertFalse(self.sfu.peers[b].reoffer)
        self.engine.fire("renegotiate", b, result="offer-2")
        self.assertEqual(self.sfu.pending_offer(b), "offer-2")

    def test_reoffer_while_renegotiate_in_flight(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.h.publish(a, "video")  # renegotiate for audio still in flight
        self.assertEqual(self.engine.named("renegotiate"), [(b, self.streams_of(a, "audio"))])
        self.engine.fire("renegotiate", b, result="offer-1")
        self.assertEqual(self.sfu.pending_offer(b), "offer-1")
        d = self.sfu.answer_offer(b, ANSWER)
        self.engine.fire("apply_answer", b)
        self.successResultOf(d)
        self.assertEqual(self.engine.named("renegotiate")[-1], (b, self.streams_of(a, "audio", "video")))

    def test_reoffer_while_apply_answer_in_flight(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, result="offer-1")
        d = self.sfu.answer_offer(b, ANSWER)
        self.h.publish(a, "video")  # apply_answer in flight
        self.assertEqual(len(self.engine.named("renegotiate")), 1)
        self.assertIsNone(self.sfu.pending_offer(b))
        self.engine.fire("apply_answer", b)
        self.successResultOf(d)
        self.assertEqual(self.engine.named("renegotiate")[-1], (b, self.streams_of(a, "audio", "video")))

    def test_change_undone_while_busy_makes_no_offer(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, result="offer-1")
        self.h.publish(a, "video")
        self.sfu.track_ended(a, f"{a}-video")
        self.assertTrue(self.sfu.peers[b].reoffer)
        d = self.sfu.answer_offer(b, ANSWER)
        self.engine.fire("apply_answer", b)
        self.successResultOf(d)
        self.assertEqual(len(self.engine.named("renegotiate")), 1)
        self.assertFalse(self.sfu.peers[b].reoffer)

    def test_connected_while_opening(self):
        a = self.h.connect(1)
        self.h.publish(a, "audio")
        d = self.sfu.answer(ROOM, "2", OFFER)
        self.sfu.connection_state("peer2", "connected")
        self.assertEqual(self.engine.named("renegotiate"), [])  # open_peer still in flight
        self.engine.fire("open_peer", result="a")
        self.successResultOf(d)
        self.assertEqual(self.engine.named("renegotiate"), [("peer2", self.streams_of(a, "audio"))])

    def test_keyframes_after_every_answer(self):
        a, b, c = self.h.connect(1), self.h.connect(2), self.h.connect(3)
        self.h.publish(a, "audio", "video")
        self.h.publish(b, "audio")  # audio only: no keyframe to ask for
        self.h.publish(c, "video")
        asked = 0
        for peer in (a, b, c):
            self.engine.calls.clear()
            self.h.negotiate(peer)
            self.clock.advance(0.5)  # requests folded within keyframe_interval go out
            others = {a, c} - {peer}
            self.assertEqual(set(self.engine.named("request_keyframe")), {(p,) for p in others})
            asked += len(self.engine.named("request_keyframe"))
        self.assertEqual(self.sfu.counters.keyframes_requested, asked)

    def test_keyframe_requests_folded(self):
        a, b, c = self.h.connect(1), self.h.connect(2), self.h.connect(3)
        self.h.publish(a, "video")
        self.engine.fire("renegotiate", b, result="o")
        self.engine.fire("renegotiate", c, result="o")
        self.engine.calls.clear()
        self.sfu.answer_offer(b, ANSWER)
        self.engine.fire("apply_answer", b)
        self.assertEqual(self.engine.named("request_keyframe"), [(a,)])  # at once
        self.clock.advance(0.2)
        self.sfu.answer_offer(c, ANSWER)
        self.engine.fire("apply_answer", c)  # 0.2 s later: folded...
        self.assertEqual(self.engine.named("request_keyframe"), [(a,)])
        self.clock.advance(0.29)
        self.assertEqual(self.engine.named("request_keyframe"), [(a,)])
        self.clock.advance(0.01)  # ...into one, 0.5 s after the first
        self.assertEqual(self.engine.named("request_keyframe"), [(a,), (a,)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sfu.counters.keyframes_requested, 2)

    def test_folded_keyframe_request_cancelled_when_publisher_closes(self):
        a, b, c = self.h.connect(1), self.h.connect(2), self.h.connect(3)
        self.h.publish(a, "video")
        self.engine.fire("renegotiate", b, result="o")
        self.engine.fire("renegotiate", c, result="o")
        for peer in (b, c):
            self.sfu.answer_offer(peer, ANSWER)
            self.engine.fire("apply_answer", peer)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.sfu.connection_state(a, "failed")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.engine.named("request_keyframe"), [(a,)])

    def test_keyframe_for_a_publisher_the_engine_lost(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "video")
        self.engine.fail_with["request_keyframe"] = PeerNotFound(a)
        self.h.negotiate(b)
        self.assertNotIn(a, self.sfu.peers)
        self.assertIn(b, self.sfu.peers)

    def test_keyframe_other_failure_only_logged(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "video")
        self.engine.fail_with["request_keyframe"] = Unavailable("slow")
        self.h.negotiate(b)
        self.assertIn(a, self.sfu.peers)
        self.assertEqual(len(self.flushLoggedErrors(Unavailable)), 1)

    def test_track_ended_removed_from_subscribers(self):
        a, b, c = self.h.connect(1), self.h.connect(2), self.h.connect(3)
        self.h.publish(a, "audio", "video")
        self.h.negotiate(b)
        self.h.negotiate(c)
        self.sfu.track_ended(a, f"{a}-video")
        self.assertEqual(self.engine.pending("renegotiate", b)[0][0][1], self.streams_of(a, "audio"))
        self.assertEqual(self.engine.pending("renegotiate", c)[0][0][1], self.streams_of(a, "audio"))
        self.assertEqual(self.engine.pending("renegotiate", a), [])
        self.sfu.track_ended(a, "no-such-track")
        self.assertEqual(len(self.engine.pending("renegotiate")), 2)

    def test_duplicate_and_bad_tracks_ignored(self):
        a, _b = self.h.connect(1), self.h.connect(2)
        self.sfu.track_added(a, "t", "data")
        self.sfu.track_added(a, "", "audio")
        self.sfu.track_added(a, 5, "audio")
        self.assertEqual(self.engine.named("renegotiate"), [])
        for i in range(6):
            self.sfu.track_added(a, f"t{i}", "audio")
        self.sfu.track_added(a, "t0", "video")
        self.assertEqual(list(self.sfu.peers[a].tracks.items()), [(f"t{i}", "audio") for i in range(4)])

    def _publisher_goes(self, how):
        a, b, c = self.h.connect(1), self.h.connect(2), self.h.connect(3)
        self.h.publish(a, "audio", "video")
        self.h.publish(b, "video")
        self.h.negotiate(b)
        self.h.negotiate(c)  # a's tracks, then b's video
        self.h.negotiate(a)
        self.engine.calls.clear()
        how(a)
        self.assertEqual(self.engine.named("close_peer"), [(a,)])
        self.assertEqual(self.engine.named("renegotiate"), [(b, ()), (c, self.streams_of(b, "video"))])
        self.assertRaises(PeerNotFound, self.sfu.pending_offer, a)
        self.sfu.track_ended(a, f"{a}-video")  # the engine's own report, later: nothing more
        self.assertEqual(len(self.engine.named("renegotiate")), 2)
        return b, c

    def test_publisher_failed(self):
        self._publisher_goes(lambda a: self.sfu.connection_state(a, "failed"))
        self.assertEqual(self.sfu.counters.peers_closed["failed"], 1)

    def test_publisher_closed(self):
        self._publisher_goes(lambda a: self.sfu.connection_state(a, "closed"))

    def test_publisher_left(self):
        self._publisher_goes(lambda a: self.sfu.leave(ROOM, "1", identity=1))

    def test_publisher_gone_while_subscriber_busy(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, result="offer-1")
        self.sfu.connection_state(a, "failed")  # b's offer still has a's audio
        self.assertEqual(self.sfu.pending_offer(b), "offer-1")
        d = self.sfu.answer_offer(b, ANSWER)
        self.engine.fire("apply_answer", b)
        self.successResultOf(d)
        self.assertEqual(self.engine.named("renegotiate")[-1], (b, ()))
        self.assertEqual(self.engine.named("request_keyframe"), [])

    def test_renegotiate_peer_not_found_closes(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, error=PeerNotFound(b))
        self.assertNotIn(b, self.sfu.peers)
        self.assertEqual(self.engine.named("close_peer"), [(b,)])
        self.assertEqual(self.sfu.counters.peers_closed["engine_peer_not_found"], 1)

    def test_renegotiate_other_error_closes_and_logs(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, error=Unavailable("timeout"))
        self.assertNotIn(b, self.sfu.peers)
        self.assertEqual(len(self.flushLoggedErrors(Unavailable)), 1)
        self.assertEqual(self.sfu.counters.peers_closed["engine_error"], 1)
        self.assertEqual(self.sfu.counters.engine_errors, 1)

    def test_apply_answer_error_closes(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, result="offer-1")
        d = self.sfu.answer_offer(b, ANSWER)
        self.h.publish(a, "video")  # sets the flag: closing must not leave it waiting
        self.engine.fire("apply_answer", b, error=InternalError("bad answer"))
        self.failureResultOf(d, InternalError)
        self.assertEqual(len(self.flushLoggedErrors(InternalError)), 1)
        self.assertNotIn(b, self.sfu.peers)
        self.assertEqual(len(self.engine.named("renegotiate")), 1)

    def test_apply_answer_peer_not_found(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, result="offer-1")
        d = self.sfu.answer_offer(b, ANSWER)
        self.engine.fire("apply_answer", b, error=PeerNotFound(b))
        self.failureResultOf(d, PeerNotFound)
        self.assertNotIn(b, self.sfu.peers)

    def test_closed_during_renegotiate(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.sfu.connection_state(b, "failed")
        self.engine.fire("renegotiate", b, result="offer-late")
        self.assertNotIn(b, self.sfu.peers)

    def test_closed_during_apply_answer(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio")
        self.engine.fire("renegotiate", b, result="offer-1")
        d = self.sfu.answer_offer(b, ANSWER)
        self.sfu.connection_state(b, "closed")
        self.engine.fire("apply_answer", b)
        self.failureResultOf(d, PeerNotFound)

    def test_gauges_and_published_tracks(self):
        a, b = self.h.connect(1), self.h.connect(2)
        self.h.publish(a, "audio", "video")
        self.h.negotiate(b)
        self.assertEqual(self.sfu.gauges(), S.SfuGauges(peers=2, connected=2, forwarded_streams=2, rooms=1))
        stream_id = self.sfu.peers[a].stream_id
        self.assertEqual(self.sfu.published_tracks(ROOM),
                         [S.PublishedTrack(a, 1, f"{a}-audio", "audio", stream_id),
                          S.PublishedTrack(a, 1, f"{a}-video", "video", stream_id)])
        self.assertEqual(self.sfu.published_tracks("nowhere"), [])
        self.assertEqual(self.sfu.rooms_of_meeting(10), [ROOM])


class DisconnectTests(SfuTestCase):
    def setUp(self):
        super().setUp()
        self.h.sign_in(1)
        self.peer = self.h.connect(1)
        self.sfu.start()
        self.addCleanup(self.sfu.stop)

    def poll_for(self, seconds):
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)
            if self.peer in self.sfu.peers:
                self.sfu.pending_offer(self.peer)

    def test_disconnected_grace(self):
        self.sfu.connection_state(self.peer, "disconnected")
        self.poll_for(9.9)
        self.assertIn(self.peer, self.sfu.peers)
        self.poll_for(2.1)
        self.assertNotIn(self.peer, self.sfu.peers)
        self.assertEqual(self.sfu.counters.peers_closed["disconnected"], 1)

    def test_reconnected_within_grace(self):
        self.sfu.connection_state(self.peer, "disconnected")
        self.poll_for(6)
        self.sfu.connection_state(self.peer, "connected")
        self.poll_for(20)
        self.assertIn(self.peer, self.sfu.peers)
        self.assertEqual(self.engine.named("renegotiate"), [])  # connected again is not a new subscription


class HousekeepingTests(SfuTestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.h.sign_in(1)
        self.sfu.start()
        self.addCleanup(self.sfu.stop)

    def advance(self, seconds, polling=()):
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)
            for peer in polling:
                if peer in self.sfu.peers:
                    self.sfu.candidates(peer)

    def test_not_connected_within_30s(self):
        peer = self.h.open(1)
        self.advance(29, polling=[peer])
        self.assertIn(peer, self.sfu.peers)
        self.advance(2.1, polling=[peer])
        self.assertNotIn(peer, self.sfu.peers)
        self.assertEqual(self.sfu.counters.peers_closed["connect_timeout"], 1)
        self.assertEqual(self.engine.named("close_peer"), [(peer,)])

    def test_idle_60s(self):
        peer = self.h.connect(1)
        self.advance(100, polling=[peer])
        self.assertIn(peer, self.sfu.peers)
        self.advance(59)
        self.assertIn(peer, self.sfu.peers)
        self.advance(2.1)
        self.assertNotIn(peer, self.sfu.peers)
        self.assertEqual(self.sfu.counters.peers_closed["idle"], 1)

    def test_session_gone(self):
        peer = self.h.connect(1)
        self.h.sign_out(self.alice)
        self.advance(9, polling=[peer])
        self.assertIn(peer, self.sfu.peers)
        self.advance(3.1, polling=[peer])
        self.assertNotIn(peer, self.sfu.peers)
        self.assertEqual(self.sfu.counters.peers_closed["session_gone"], 1)

    def test_session_back_within_grace(self):
        peer = self.h.connect(1)
        self.h.sign_out(self.alice)
        self.advance(5, polling=[peer])
        self.h.sessions[(ROOM, 1)].append(self.alice)  # a replica seen again (cluster)
        self.advance(30, polling=[peer])
        self.assertIn(peer, self.sfu.peers)

    def test_user_still_in_room_with_another_session(self):
        peer = self.h.connect(1)
        self.h.sign_in(1)  # WebSocket reconnected: a new session, the same tab's connection
        self.h.sign_out(self.alice)
        self.advance(30, polling=[peer])
        self.assertIn(peer, self.sfu.peers)

    def test_members_failure_logged(self):
        peer = self.h.connect(1)
        self.sfu.members = lambda r, u: 1 / 0
        self.advance(3, polling=[peer])
        self.assertIn(peer, self.sfu.peers)
        self.assertTrue(self.flushLoggedErrors(ZeroDivisionError))

    def test_unused_joined_rooms_forgotten(self):
        self.successResultOf(self.sfu.join_room(ROOM, "1"))
        self.advance(59)
        self.assertIn(ROOM, self.sfu.rooms)
        self.advance(2.1)
        self.assertNotIn(ROOM, self.sfu.rooms)

    def test_stop_stops_sweeping(self):
        peer = self.h.open(1)
        self.sfu.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertIn(peer, self.sfu.peers)
        self.sfu.start()
        self.sfu.start()  # twice is once
        self.clock.advance(2)
        self.assertNotIn(peer, self.sfu.peers)


class LeaveTests(SfuTestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.h.sign_in(1)
        self.h.sign_in(2)
        self.a1, self.a2, self.b = self.h.connect(1), self.h.connect(1), self.h.connect(2)

    def test_with_token_closes_all_of_the_user(self):
        self.assertEqual(self.sfu.leave(ROOM, "1", identity=Identity("1", "alice", 1)), 2)
        self.assertEqual(set(self.sfu.peers), {self.b})
        self.assertEqual(self.sfu.counters.peers_closed["left"], 2)

    def test_with_another_users_token(self):
        self.assertRaises(Forbidden, self.sfu.leave, ROOM, "1", identity=2)
        self.assertEqual(len(self.sfu.peers), 3)

    def test_without_token_while_session_open(self):
        # A stranger who knows the room id cannot cut alice off...
        self.assertEqual(self.sfu.leave(ROOM, "1"), 0)
        self.assertEqual(len(self.sfu.peers), 3)

    def test_without_token_after_ws_leave(self):
        self.h.sign_out(self.alice)  # the browser sends its WebSocket leave first
        self.assertEqual(self.sfu.leave(ROOM, "1"), 2)
        self.assertEqual(set(self.sfu.peers), {self.b})

    def test_without_token_only_the_left_session(self):
        other_tab = self.h.sign_in(1)
        self.h.sign_out(self.alice)
        c = self.h.connect(1)  # bound to the other tab's session
        self.assertEqual(self.sfu.peers[c].session_id, other_tab.session_id)
        self.assertEqual(self.sfu.leave(ROOM, "1"), 2)
        self.assertEqual(set(self.sfu.peers), {self.b, c})

    def test_without_token_before_the_ws_leave_arrives(self):
        # The WebSocket leave and the HTTP leave race: when the session goes, the
        # connections that were asked to leave close at the next sweep, without the grace.
        self.sfu.start()
        self.addCleanup(self.sfu.stop)
        self.assertEqual(self.sfu.leave(ROOM, "1"), 0)
        self.clock.advance(2)
        self.assertEqual(len(self.sfu.peers), 3)
        self.h.sign_out(self.alice)
        self.clock.advance(2)
        self.assertEqual(set(self.sfu.peers), {self.b})
        self.assertEqual(self.sfu.counters.peers_closed["left"], 2)

    def test_unknown_room_and_bad_input(self):
        self.assertRaises(NotFound, self.sfu.leave, "nowhere", "1")
        self.assertRaises(InvalidInput, self.sfu.leave, ROOM, "x")
        self.assertEqual(self.sfu.leave(ROOM, "5"), 0)

    def test_leaving_publisher_renegotiates_the_rest(self):
        self.h.publish(self.a1, "video")
        self.h.negotiate(self.b)
        self.engine.calls.clear()
        self.sfu.leave(ROOM, "1", identity=1)
        self.assertEqual(self.engine.named("renegotiate"), [(self.b, ())])

    def test_last_peer_gone_forgets_the_room(self):
        self.sfu.leave(ROOM, "1", identity=1)
        self.sfu.leave(ROOM, "2", identity=2)
        self.assertNotIn(ROOM, self.sfu.rooms)
        self.assertRaises(NotFound, self.sfu.room_peers, ROOM)


@attrs.define
class Meeting:
    id: int
    room_id: str
    status: str


class MeetingTests(SfuTestCase):
    def setUp(self):
        super().setUp()
        for user in (1, 2):
            self.h.sign_in(user)
            self.h.sign_in(user, room_id="room-2")
        self.a, self.b = self.h.connect(1), self.h.connect(2)
        self.other = self.h.connect(1, room_id="room-2")

    def test_meeting_ended(self):
        self.h.publish(self.a, "audio", "video")
        self.h.negotiate(self.b)
        self.engine.calls.clear()
        self.sfu.meeting_changed(Meeting(10, ROOM, "ongoing"))
        self.assertEqual(len(self.sfu.peers), 3)
        self.sfu.meeting_changed(Meeting(10, ROOM, "ended"))
        self.assertEqual(set(self.sfu.peers), {self.other})
        self.assertNotIn(ROOM, self.sfu.rooms)
        self.assertEqual(sorted(self.engine.named("close_peer")), [(self.a,), (self.b,)])
        self.assertEqual(self.engine.named("renegotiate"), [])  # b is not offered a's leaving
        self.assertEqual(self.sfu.counters.peers_closed["meeting_ended"], 2)

    def test_meeting_cancelled(self):
        self.sfu.meeting_changed(Meeting(20, "room-2", "cancelled"))
        self.assertEqual(set(self.sfu.peers), {self.a, self.b})

    def test_meeting_deleted(self):
        self.sfu.meeting_deleted(10)
        self.assertEqual(set(self.sfu.peers), {self.other})

    def test_participant_removed(self):
        self.h.publish(self.a, "audio")
        self.h.negotiate(self.b)
        self.engine.calls.clear()
        self.sfu.participant_left(10, 1, "removed")
        self.assertEqual(set(self.sfu.peers), {self.b, self.other})
        self.assertEqual(self.engine.named("close_peer"), [(self.a,)])
        self.assertEqual(self.engine.named("renegotiate"), [(self.b, ())])
        self.assertEqual(self.sfu.counters.peers_closed["removed"], 1)
        self.sfu.participant_left(20, 1, "left")
        self.assertEqual(set(self.sfu.peers), {self.b})
        self.assertEqual(self.sfu.counters.peers_closed["left"], 1)

    def test_a_room_closed_whole(self):
        self.h.publish(self.a, "audio", "video")
        self.h.negotiate(self.b)
        self.engine.calls.clear()
        self.assertEqual(self.sfu.close_room(ROOM, S.R_MOVED), 2)
        self.assertEqual(set(self.sfu.peers), {self.other})
        self.assertNotIn(ROOM, self.sfu.rooms)
        self.assertEqual(sorted(self.engine.named("close_peer")), [(self.a,), (self.b,)])
        self.assertEqual(self.engine.named("renegotiate"), [])  # b is not offered a's leaving
        self.assertEqual(self.sfu.counters.peers_closed["moved"], 2)
        self.assertEqual(self.sfu.close_room(ROOM, S.R_MOVED), 0)

    def test_engine_lost(self):
        self.h.publish(self.a, "audio")
        self.engine.calls.clear()
        self.sfu.engine_lost([ROOM, "unknown-room"])
        self.assertEqual(set(self.sfu.peers), {self.other})
        self.assertNotIn(ROOM, self.sfu.rooms)
        self.assertEqual(self.engine.calls, [])  # nothing to close or offer: they are gone
        self.assertRaises(PeerNotFound, self.sfu.candidates, self.a)
        self.assertRaises(PeerNotFound, self.sfu.pending_offer, self.b)
        self.assertEqual(self.sfu.counters.peers_closed["engine_lost"], 2)
        # The browsers reconnect into a fresh room.
        self.h.connect(1)


class RoomRouteTests(SfuTestCase):
    def setUp(self):
        super().setUp()
        self.sfu.format_time = lambda t: f"t{t:g}"

    def test_join_room(self):
        self.clock.advance(5)
        result = self.successResultOf(self.sfu.join_room(ROOM, "3"))
        self.assertEqual(result, {"message": "Joined room", "user_id": "3",
                                  "room": {"id": ROOM, "meeting_id": "10", "created_at": "t5"}})
        self.assertEqual(self.sfu.room_peers(ROOM), {"room_id": ROOM, "peers": [], "count": 0})
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(self.sfu.join_room(ROOM, 4))["room"]["created_at"], "t5")

    def test_join_unknown_room(self):
        f = self.failureResultOf(self.sfu.join_room("nowhere", "3"), NotFound)
        self.assertEqual(f.value.message, "Room not found")
        self.failureResultOf(self.sfu.join_room(ROOM, "x"), InvalidInput)

    def test_unknown_room(self):
        for call in (self.sfu.room_peers, self.sfu.room_stats):
            self.assertEqual(self.assertRaises(NotFound, call, "nowhere").message, "Room not found")

    def test_peers_and_stats(self):
        for user in (1, 2, 3):
            self.h.sign_in(user)
        self.clock.advance(1)
        a = self.h.connect(1)
        self.clock.advance(1)
        b = self.h.connect(2)
        c = self.h.open(3)
        self.h.publish(a, "audio", "video")
        self.h.publish(b, "video")
        self.clock.advance(1)
        self.sfu.candidates(a)
        self.h.sessions[(ROOM, 2)][0].screen_sharing = True
        self.assertEqual(self.sfu.room_peers(ROOM), {"room_id": ROOM, "count": 3, "peers": [
            {"peer_id": a, "user_id": "1", "media_type": "audio_video", "status": "connected",
             "created_at": "t1", "last_activity": "t3"},
            {"peer_id": b, "user_id": "2", "media_type": "video", "status": "connected",
             "created_at": "t2", "last_activity": "t2"},
            {"peer_id": c, "user_id": "3", "media_type": "none", "status": "new",
             "created_at": "t2", "last_activity": "t2"}]})
        self.assertEqual(self.sfu.room_stats(ROOM), {
            "room_id": ROOM, "total_peers": 3, "connected_peers": 2, "audio_streams": 1,
            "video_streams": 2, "screen_shares": 1})


class CancelledRequestTests(SfuTestCase):
    """A browser's request cancelled (its tab closed) leaves what it asked of the engine going on."""

    def test_an_answer_cancelled_while_the_engine_applies_it(self):
        self.h.sign_in(7)
        self.h.sign_in(8)
        a, b = self.h.connect(7), self.h.connect(8)
        self.h.publish(b, "video")
        self.engine.fire("renegotiate", a, result="offer-sdp")
        d = self.sfu.answer_offer(a, ANSWER)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.engine.fire("apply_answer", a)
        self.assertIn(a, self.sfu.peers)  # not taken for an engine failure
        self.assertEqual((self.sfu.counters.engine_errors, self.sfu.counters.answers), (0, 1))
        self.assertIn(("request_keyframe", b), self.engine.calls)

    def test_an_open_cancelled_while_the_engine_opens_it(self):
        self.h.sign_in(7)
        d = self.sfu.answer(ROOM, "7", OFFER)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.engine.fire("open_peer", result="answer-sdp")
        self.assertIn("peer1", self.sfu.peers)  # the browser's retry finds it, or the sweep closes it
        self.assertEqual(self.sfu.counters.engine_errors, 0)
