"""
The SFU in a cluster over the fake Redis (wecompany.mirror.sfu): which node
serves a room, the calls forwarded to it and their errors, peer ids that
name their node, the owner following a room it has no member of, and what
happens when the owner dies, stops, or Redis goes away.
"""

from __future__ import annotations

import uuid

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.api.test_webrtc import AnsweringEngine
from tests.mirror.clustering import NODE_TIMEOUT, run
from tests.mirror.test_rooms import RoomCase
from wecompany.domain import sfu as S
from wecompany.errors import WeCompanyError
from wecompany.mirror.sfu import node_of_peer, peer_id_maker

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"
ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\n"
CANDIDATE = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0",
             "sdpMLineIndex": 0}
#: From a node's death to the survivors' noticing it: its heartbeat's TTL and a resync.
DETECTION = NODE_TIMEOUT + NODE_TIMEOUT / 3 + 1


class PeerIdTests(SynchronousTestCase):
    def test_ids_are_random_uuids_that_name_their_node(self):
        make = peer_id_maker("node-1.eu_west")
        ids = {make() for _ in range(50)}
        self.assertEqual(len(ids), 50)
        for peer_id in ids:
            head, _, node = peer_id.partition("~")
            self.assertEqual(uuid.UUID(head).version, 4)
            self.assertEqual(str(uuid.UUID(head)), head)
            self.assertEqual((node, node_of_peer(peer_id)), ("node-1.eu_west", "node-1.eu_west"))

    def test_node_ids_that_cannot_be_in_a_peer_id_are_refused(self):
        for node in ("", "a~b", "a/b", "a b", "x" * 65, "né"):
            with self.assertRaises(ValueError, msg=node):
                peer_id_maker(node)

    def test_anything_but_an_exact_id_names_no_node(self):
        good = str(uuid.uuid4())
        self.assertEqual(node_of_peer(f"{good}~n1"), "n1")
        for forged in (good, f"{good}~", "~n1", f"{good}~n1~n2", f"{good}~n/1", f"{good}~n 1", f"{good}~n1\n",
                       f" {good}~n1", f"{good.upper()}~n1", f"{uuid.uuid1()}~n1", f"{good[:-1]}~n1",
                       f"{good}~{'x' * 65}", f"{good.replace('-', '')}~n1", "peer1", "", None, 7, [good]):
            self.assertIsNone(node_of_peer(forged), forged)


class SfuCase(RoomCase):
    """Nodes a, b and c, each with an SFU on an engine that answers at once; alice and bob in the meeting."""

    def node(self, name: str, **options):
        engine = AnsweringEngine()
        node = super().node(name, media_engine=engine, **options)
        node.engine = engine
        node.router = node.domain.sfu_router
        node.sfu = node.domain.sfu
        node.sfu.start()  # its housekeeping, as the daemon starts it
        return node

    def setUp(self):
        super().setUp()
        self.room_id = self.successResultOf(self.store.get_meeting(self.meeting_id)).room_id
        self.key = f"wecompany:v1:sfu:room:{self.room_id}"
        self.uid = {name: int(self.user(name)) for name in ("alice", "bob", "carol")}

    def result(self, value):
        if isinstance(value, Deferred):
            self.settle()
            return self.successResultOf(value)
        return value

    def error(self, value_or_call) -> WeCompanyError:
        """The WeCompanyError of a call (raised at once, or its Deferred's), as the HTTP routes would map it."""
        try:
            d = value_or_call()
        except WeCompanyError as error:
            return error
        self.settle()
        return self.failureResultOf(d, WeCompanyError).value

    def answer(self, node, name: str, identity=None) -> str:
        opened = self.result(node.router.answer(self.room_id, str(self.uid[name]), OFFER, identity))
        return opened["peer_id"]

    def opened_on(self, node) -> list:
        return [call[2] for call in node.engine.calls if call[0] == "open_peer"]

    def owner(self):
        return self.server._live(self.key)


class PlacementTests(SfuCase):
    def test_the_first_answer_claims_the_room_and_the_others_go_to_its_node(self):
        self.enter(self.a, "alice")
        self.enter(self.b, "bob")
        # alice's signaling is on a, her SFU call reaches b: b serves the room, with her session elsewhere.
        alice = self.answer(self.b, "alice")
        self.assertEqual(self.owner(), "b")
        self.assertEqual(node_of_peer(alice), "b")
        self.assertEqual(self.opened_on(self.b), [alice])
        self.assertEqual(self.b.sfu.peers[alice].stream_id, "alice")  # bound to her session on a
        # bob's call reaches a: it is forwarded to b, which opens it.
        bob = self.answer(self.a, "bob")
        self.assertEqual(node_of_peer(bob), "b")
        self.assertEqual(self.opened_on(self.b), [alice, bob])
        self.assertEqual((self.opened_on(self.a), self.opened_on(self.c)), ([], []))
        self.assertEqual(self.a.router.counters.forwarded, 1)
        self.assertEqual(self.b.router.counters.served, 1)
        self.assertEqual(set(self.b.router.owned), {self.room_id})
        self.assertEqual((self.a.router.owned, self.c.router.owned), ({}, {}))

    def test_every_route_is_forwarded_and_answers_as_if_local(self):
        self.enter(self.a, "alice")
        self.enter(self.b, "bob")
        alice = self.answer(self.c, "alice")  # c serves the room, without a member of it
        bob = self.answer(self.a, "bob", identity=self.uid["bob"])
        a, b = self.a.router, self.b.router
        self.assertEqual(self.result(a.add_candidate(alice, CANDIDATE, identity=self.uid["alice"])), None)
        self.assertIn(("add_candidate", alice, {**CANDIDATE, "usernameFragment": None}), self.c.engine.calls)
        self.c.sfu.candidate(alice, {"candidate": "candidate:2 1 udp 1 127.0.0.1 6000 typ host", "sdpMid": "0",
                                     "sdpMLineIndex": 0})
        self.c.sfu.gathering_complete(alice)
        found = self.result(b.candidates(alice))
        self.assertEqual((len(found["candidates"]), found["complete"]), (1, True))
        self.assertEqual(self.result(a.candidates(alice)), {"candidates": [], "complete": True})  # drained
        self.assertIsNone(self.result(a.pending_offer(alice)))
        # Both connected, bob publishes: alice's offer is polled through a and answered through b.
        for peer in (alice, bob):
            self.c.sfu.connection_state(peer, "connected")
        self.c.sfu.track_added(bob, "bob-video", "video")
        offer = self.result(a.pending_offer(alice))
        self.assertTrue(offer.startswith("offer "), offer)
        self.assertEqual(self.result(b.answer_offer(alice, ANSWER)), None)
        self.assertIn(("apply_answer", alice, ANSWER), self.c.engine.calls)
        self.assertIsNone(self.result(a.pending_offer(alice)))
        joined = self.result(a.join_room(self.room_id, str(self.uid["alice"])))
        self.assertEqual((joined["room"]["id"], joined["room"]["meeting_id"]), (self.room_id, str(self.meeting_id)))
        peers = self.result(b.room_peers(self.room_id))
        self.assertEqual(sorted(p["peer_id"] for p in peers["peers"]), sorted([alice, bob]))
        stats = self.result(a.room_stats(self.room_id))
        self.assertEqual((stats["total_peers"], stats["connected_peers"], stats["video_streams"]), (2, 2, 1))
        self.assertEqual(self.result(b.leave(self.room_id, str(self.uid["bob"]), identity=self.uid["bob"])), 1)
        self.assertEqual(list(self.c.sfu.peers), [alice])
        self.assertEqual(self.a.router.counters.forwarded + self.b.router.counters.forwarded, 12)
        self.assertEqual(self.c.router.counters.served, 12)

    def test_the_metrics_count_where_calls_were_served(self):
        from prometheus_client.parser import text_string_to_metric_families

        from wecompany.api.metrics import Metrics

        def samples(node):
            found = {}
            for family in text_string_to_metric_families(Metrics(node.domain).render().decode()):
                for sample in family.samples:
                    found[(sample.name, tuple(sorted(sample.labels.values())))] = sample.value
            return found

        self.enter(self.a, "alice")
        self.enter(self.b, "bob")
        self.answer(self.b, "alice")
        self.answer(self.a, "bob")
        a, b = samples(self.a), samples(self.b)
        self.assertEqual((a[("wecompany_sfu_rooms_served", ())], b[("wecompany_sfu_rooms_served", ())]), (0, 1))
        self.assertEqual(a[("wecompany_sfu_cluster_calls_total", ("forwarded",))], 1)
        self.assertEqual(b[("wecompany_sfu_cluster_calls_total", ("served_for_others",))], 1)
        self.assertEqual(b[("wecompany_sfu_cluster_calls_total", ("alone",))], 0)
        self.assertEqual(b[("wecompany_sfu_rooms_moved_total", ())], 0)

    def test_calls_on_a_peer_go_to_its_node_without_asking_redis(self):
        self.enter(self.a, "alice")
        alice = self.answer(self.b, "alice")
        asked = []
        commands = self.c.link._commands
        for name in ("get", "set", "exists", "eval"):
            original = getattr(commands, name)
            setattr(commands, name, lambda *args, _name=name, _f=original, **kw: (asked.append(_name), _f(*args, **kw))[1])
        for _ in range(3):
            self.result(self.c.router.candidates(alice))
            self.result(self.c.router.pending_offer(alice))
        self.assertEqual(asked, [])
        self.assertEqual(self.b.router.counters.served, 6)

    def test_a_node_serves_its_own_peers_in_place(self):
        self.enter(self.a, "alice")
        alice = self.answer(self.a, "alice")
        published = self.server.published
        # No Deferred, no message: the same call as on a daemon on its own.
        self.assertEqual(self.a.router.candidates(alice), {"candidates": [], "complete": False})
        self.assertIsNone(self.a.router.pending_offer(alice))
        self.assertEqual(self.server.published, published)

    def test_room_calls_for_a_room_nobody_serves_claim_nothing(self):
        for call in (lambda: self.a.router.room_peers(self.room_id), lambda: self.a.router.room_stats(self.room_id),
                     lambda: self.a.router.leave(self.room_id, str(self.uid["alice"]))):
            error = self.error(call)
            self.assertEqual((error.code, error.message), (404, "Room not found"))
        self.assertIsNone(self.owner())
        self.assertEqual(self.a.router.owned, {})

    def test_join_room_finds_the_meeting_in_the_store_with_no_member_anywhere(self):
        joined = self.result(self.c.router.join_room(self.room_id, str(self.uid["alice"])))
        self.assertEqual(joined["room"]["meeting_id"], str(self.meeting_id))
        self.assertEqual(self.owner(), "c")
        error = self.error(lambda: self.c.router.join_room("no-such-room", str(self.uid["alice"])))
        self.assertEqual((error.code, error.message), (404, "Room not found"))


class ErrorTests(SfuCase):
    def setUp(self):
        super().setUp()
        self.enter(self.a, "alice")
        self.alice = self.answer(self.b, "alice")

    def assertError(self, error, code, words, error_code=None):
        self.assertIsInstance(error, WeCompanyError)
        self.assertEqual((error.code, error.error_code), (code, error_code), error)
        self.assertIn(words, error.message)

    def test_refusals_of_the_owner_come_back_with_their_code_and_message(self):
        c = self.c.router
        unknown = f"{uuid.uuid4()}~b"
        for call in (lambda: c.candidates(unknown), lambda: c.pending_offer(unknown),
                     lambda: c.answer_offer(unknown, ANSWER), lambda: c.add_candidate(unknown, CANDIDATE)):
            self.assertError(self.error(call), 404, f"peer not found: {unknown}")
        # A token of another user on alice's connection.
        self.assertError(self.error(lambda: c.pending_offer(self.alice, identity=self.uid["bob"])), 403,
                         "another user's")
        # bob has no signaling session in the room: refused by b, which serves it.
        self.assertError(self.error(lambda: c.answer(self.room_id, str(self.uid["bob"]), OFFER)), 403,
                         "signaling")
        self.assertError(self.error(lambda: c.answer(self.room_id, str(self.uid["alice"]), "not an sdp")), 400,
                         "SDP")
        self.assertError(self.error(lambda: c.answer_offer(self.alice, ANSWER)), 409, "no offer")

    def test_a_refusal_with_a_delay_keeps_it(self):
        limit = self.b.sfu.limits.max_remote_candidates
        for _ in range(limit):
            self.result(self.c.router.add_candidate(self.alice, CANDIDATE))
        error = self.error(lambda: self.c.router.add_candidate(self.alice, CANDIDATE))
        self.assertError(error, 429, "too many ICE candidates")
        self.assertEqual(error.retry_after, 1.0)

    def test_business_codes_cross(self):
        async def refuse(request):
            raise WeCompanyError("meeting has ended", code=400, error_code=2002, detail="since noon")

        self.b.node.sfu = type("Refusing", (), {"serve": staticmethod(refuse)})()
        error = self.error(lambda: self.c.router.candidates(self.alice))
        self.assertError(error, 400, "meeting has ended", error_code=2002)
        self.assertEqual(error.detail, "since noon")

    def test_a_crash_on_the_owner_is_an_internal_error_there_and_here(self):
        async def crash(request):
            raise RuntimeError("boom")

        self.b.node.sfu = type("Crashing", (), {"serve": staticmethod(crash)})()
        self.assertError(self.error(lambda: self.c.router.candidates(self.alice)), 500, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_forged_and_malformed_peer_ids_are_not_found_without_asking_any_node(self):
        published = self.server.published
        good = self.alice.partition("~")[0]
        for forged in (good, f"{good}~b~c", f"{good.upper()}~b", f"{good}~b/../c", "peer1", "x" * 128):
            self.assertError(self.error(lambda: self.c.router.pending_offer(forged)), 404, "peer not found")
        # A node that does not exist: looked up once (its heartbeat), asked nothing.
        self.assertError(self.error(lambda: self.c.router.pending_offer(f"{good}~nowhere")), 404, "peer not found")
        self.assertEqual(self.server.published, published)
        # The right node, a made-up UUID: that node says so.
        self.assertError(self.error(lambda: self.c.router.pending_offer(f"{uuid.uuid4()}~b")), 404,
                         "peer not found")

    def test_what_a_node_forwards_is_checked_again_by_the_owner(self):
        b = self.b.router
        for request in ({"call": "close_room", "key": self.room_id, "args": [], "identity": None},
                        {"call": "answer", "key": self.room_id, "args": [str(self.uid["alice"])]},
                        {"call": "candidates", "key": self.alice, "args": "", "identity": None},
                        {"call": "candidates", "key": self.alice, "args": [], "identity": True},
                        {"call": "candidates", "key": self.alice, "args": [], "identity": "1"},
                        {"call": "candidates", "key": self.alice, "args": [], "identity": -1},
                        {"call": ["candidates"], "key": self.alice, "args": []}):
            error = self.failureResultOf(run(b.serve(request)), WeCompanyError).value
            self.assertEqual(error.code, 400, request)
        # A peer of another node sent here: not one of this node's.
        other = f"{uuid.uuid4()}~c"
        error = self.failureResultOf(run(b.serve({"call": "candidates", "key": other, "args": []})),
                                     WeCompanyError).value
        self.assertEqual(error.code, 404)
        # The identity the forwarding node proved is the only thing it is trusted with.
        error = self.failureResultOf(run(b.serve({"call": "candidates", "key": self.alice, "args": [],
                                                  "identity": self.uid["bob"]})), WeCompanyError).value
        self.assertEqual(error.code, 403)


class FollowingTests(SfuCase):
    """c serves the room with no member of it: it follows the members on a and b."""

    def setUp(self):
        super().setUp()
        self.alice_ws = self.enter(self.a, "alice")
        self.bob_ws = self.enter(self.b, "bob")
        self.alice = self.answer(self.c, "alice")
        self.bob = self.answer(self.c, "bob")
        for peer in (self.alice, self.bob):  # connected: they live on until something closes them
            self.c.sfu.connection_state(peer, "connected")

    def closed(self, node, reason):
        return node.sfu.counters.peers_closed[reason]

    def test_the_owner_knows_the_members_elsewhere_by_the_rooms_name(self):
        rooms = self.c.domain.rooms
        self.assertEqual(rooms.local_room_ids(), [])  # no member here
        self.assertEqual([m.node for m in rooms.sessions_in(self.room_id, self.uid["alice"])], ["a"])
        self.assertEqual([m.node for m in rooms.sessions_in(self.room_id, self.uid["bob"])], ["b"])
        self.assertEqual(rooms.live_meeting_of(self.room_id), self.meeting_id)
        self.assertEqual(rooms.find_live_meeting(self.room_id), self.meeting_id)  # at once, no store read
        # A member who joins later, anywhere, is known at once.
        self.enter(self.b, "carol")
        self.assertEqual(len(rooms.sessions_in(self.room_id, self.uid["carol"])), 1)
        self.answer(self.a, "carol")
        self.assertEqual(len(self.c.sfu.peers), 3)

    def test_a_signaling_session_closed_elsewhere_closes_its_media(self):
        self.a.domain.rooms.release(self.alice_ws)  # alice's socket on a closed
        self.settle(self.c.sfu.limits.session_grace + 2 * self.c.sfu.limits.sweep_interval)
        self.assertEqual(list(self.c.sfu.peers), [self.bob])
        self.assertEqual(self.closed(self.c, S.R_SESSION_GONE), 1)

    def test_a_member_whose_node_died_loses_its_media(self):
        self.b.link.partition()
        for loop in (self.b.node._heartbeat, self.b.node._resync):
            loop.stop()
        self.b.link.up = False
        self.settle(DETECTION + self.c.sfu.limits.session_grace + 2 * self.c.sfu.limits.sweep_interval)
        self.assertEqual(list(self.c.sfu.peers), [self.alice])
        self.assertEqual(self.closed(self.c, S.R_SESSION_GONE), 1)

    def test_ending_the_meeting_elsewhere_closes_the_rooms_media_at_once(self):
        self.successResultOf(run(self.a.domain.meetings.end(self.host, self.meeting_id)))
        self.settle()
        self.assertEqual(self.c.sfu.peers, {})
        self.assertEqual(self.closed(self.c, S.R_MEETING_ENDED), 2)
        for node in (self.a, self.c):  # a room here or not, the meeting is over
            self.assertIsNone(self.result(node.domain.rooms.find_live_meeting(self.room_id)), node.name)
        # The browsers' reconnections are refused.
        error = self.error(lambda: self.a.router.answer(self.room_id, str(self.uid["alice"]), OFFER))
        self.assertEqual(error.code, 403)

    def test_deleting_the_meeting_elsewhere_closes_the_rooms_media(self):
        self.successResultOf(run(self.b.domain.meetings.delete(self.host, self.meeting_id)))
        self.settle()
        self.assertEqual(self.c.sfu.peers, {})
        self.assertEqual(self.closed(self.c, S.R_MEETING_ENDED), 2)

    def test_a_participant_removed_elsewhere_loses_its_media_alone(self):
        self.successResultOf(run(self.a.domain.meetings.remove_participant(self.host, self.meeting_id,
                                                                           self.uid["bob"])))
        self.settle()
        self.assertEqual(list(self.c.sfu.peers), [self.alice])
        self.assertEqual(self.closed(self.c, S.R_REMOVED), 1)

    def test_the_owner_stops_following_when_it_lets_the_room_go(self):
        channel = f"wecompany:v1:room:{self.meeting_id}"
        self.assertIn(self.c.link, self.server.channels[channel])
        for name in ("alice", "bob"):
            self.result(self.b.router.leave(self.room_id, str(self.uid[name]), identity=self.uid[name]))
        self.assertEqual(self.c.sfu.peers, {})
        self.settle(NODE_TIMEOUT / 3 + 0.5)  # the next heartbeat
        self.assertIsNone(self.owner())
        self.assertEqual(self.c.router.owned, {})
        self.assertNotIn(self.c.link, self.server.channels[channel])
        self.assertEqual(self.c.domain.rooms.rooms, {})
        # The next answer, anywhere, claims it afresh.
        self.answer(self.b, "bob")
        self.assertEqual(self.owner(), "b")


class ClaimTests(SfuCase):
    def test_the_claim_lives_with_its_node_and_ends_with_it(self):
        self.enter(self.a, "alice")
        alice = self.answer(self.c, "alice")
        self.c.sfu.connection_state(alice, "connected")
        for _ in range(5):
            self.settle(NODE_TIMEOUT)  # refreshed by every heartbeat
            self.result(self.b.router.candidates(alice))  # the browser polls
        self.assertEqual(self.owner(), "c")
        self.assertTrue(self.c.router.owned[self.room_id].held)
        # A claim expires as its node's heartbeat does.
        at = self.server.expires[self.key]
        self.assertLessEqual(at - self.clock.seconds(), NODE_TIMEOUT)

    def test_a_node_that_stops_frees_its_rooms_at_once(self):
        self.enter(self.a, "alice")
        self.answer(self.c, "alice")
        self.successResultOf(run(self.c.node.stop()))
        self.settle()
        self.assertIsNone(self.owner())
        self.answer(self.a, "alice")
        self.assertEqual(self.owner(), "a")

    def test_a_dead_owners_peers_are_not_found_and_the_next_answer_finds_a_new_owner(self):
        self.enter(self.a, "alice")
        self.enter(self.b, "bob")
        alice = self.answer(self.c, "alice")
        died_at = self.clock.seconds()
        self.c.link.partition()
        for loop in (self.c.node._heartbeat, self.c.node._resync):
            loop.stop()
        self.c.link.up = False
        # Until the others notice, a poll gets no answer (the browser's own timeout is shorter).
        d = self.a.router.pending_offer(alice)
        self.settle(self.a.router.timeout)
        self.assertEqual(self.failureResultOf(d, WeCompanyError).value.code, 503)
        self.settle(DETECTION - self.a.router.timeout)
        self.assertNotIn("c", self.a.domain.cluster.peers)
        # Then at once: 404 peer not found, on which the browser reconnects ...
        d = self.a.router.pending_offer(alice)
        self.assertIn("peer not found", self.failureResultOf(d, WeCompanyError).value.message)
        # ... and its new answer is served by a new owner.
        peer = self.answer(self.a, "alice")
        self.assertEqual((node_of_peer(peer), self.owner()), ("a", "a"))
        self.assertLessEqual(self.clock.seconds() - died_at, DETECTION + 1)

    def test_a_claim_that_outlived_its_node_is_taken_over(self):
        self.enter(self.a, "alice")
        self.server.data[self.key] = "gone-node"  # no heartbeat of that node anywhere
        self.server._expire(self.key, 3600)
        peer = self.answer(self.a, "alice")
        self.assertEqual((node_of_peer(peer), self.owner()), ("a", "a"))
        self.assertEqual(self.server.expires[self.key] - self.clock.seconds(), NODE_TIMEOUT)

    def test_a_node_started_a_moment_ago_is_asked_though_not_yet_seen(self):
        self.enter(self.a, "alice")
        alice = self.answer(self.b, "alice")
        self.a.domain.cluster.peers.pop("b", None)  # a has not yet read b's heartbeat
        self.assertEqual(self.result(self.a.router.candidates(alice)), {"candidates": [], "complete": False})


class RedisOutageTests(SfuCase):
    def setUp(self):
        super().setUp()
        self.warnings = []

        def observe(event):
            if event.get("log_level") is not None and event["log_level"].name == "warn" and \
                    "SFU" in event.get("log_format", ""):
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_without_redis_rooms_are_served_where_their_calls_arrive_and_it_is_said_once(self):
        self.enter(self.a, "alice")
        self.enter(self.b, "bob")
        other = self.answer(self.b, "bob")
        self.server.crash()
        self.settle()
        alice = self.answer(self.a, "alice")
        self.assertEqual(self.error(lambda: self.a.router.room_peers("elsewhere")).code, 404)  # served here too
        self.answer(self.a, "alice")  # and the room's now, without asking
        self.assertEqual(node_of_peer(alice), "a")
        self.assertFalse(self.a.router.owned[self.room_id].held)
        self.assertEqual(len([w for w in self.warnings if "cannot say" in w["log_format"]]), 1)
        self.assertEqual(self.a.router.counters.alone, 2)
        # A peer of another node cannot be reached: not found at once (the browser reconnects here).
        error = self.error(lambda: self.a.router.pending_offer(other))
        self.assertEqual(error.code, 404)

    def test_when_redis_is_back_one_node_keeps_the_room_and_the_other_closes_its_share(self):
        self.enter(self.a, "alice")
        self.enter(self.b, "bob")
        self.server.crash()
        self.settle()
        self.answer(self.a, "alice")
        self.answer(self.b, "bob")
        self.server.restart()
        self.settle(NODE_TIMEOUT / 3 + 1)
        keeper = {"a": self.a, "b": self.b}[self.owner()]
        loser = self.b if keeper is self.a else self.a
        self.assertEqual(len(keeper.sfu.peers), 1)
        self.assertTrue(keeper.router.owned[self.room_id].held)
        self.assertEqual((loser.sfu.peers, loser.router.owned), ({}, {}))
        self.assertEqual(loser.sfu.counters.peers_closed[S.R_MOVED], 1)
        self.assertEqual(loser.router.counters.moved, 1)
        # The browser of the closed one reconnects and joins the other in the room.
        name = "alice" if loser is self.a else "bob"
        self.answer(loser, name)
        self.assertEqual(len(keeper.sfu.peers), 2)

    def test_a_redis_that_does_not_answer_holds_a_call_no_longer_than_the_rpc_timeout(self):
        self.enter(self.a, "alice")
        self.a.link._commands.set = lambda *args, **kw: Deferred()  # never answers
        d = self.a.router.answer(self.room_id, str(self.uid["alice"]), OFFER)
        self.settle(self.a.router.timeout - 0.5)
        self.assertNoResult(d)
        self.settle(0.5)
        self.assertEqual(node_of_peer(self.successResultOf(d)["peer_id"]), "a")
        self.assertEqual(len(self.warnings), 1)

    def test_a_forwarded_call_to_a_node_that_lost_the_room_meanwhile_is_not_sent_on(self):
        self.enter(self.a, "alice")
        self.answer(self.b, "alice")
        # c read "b" just before b let it go and c itself claimed it.
        self.b.router.owned.clear()
        self.server.data[self.key] = "c"
        d = run(self.b.router.serve({"call": "answer", "key": self.room_id, "args": [str(self.uid["alice"]), OFFER],
                                     "identity": None}))
        self.assertEqual(self.failureResultOf(d, WeCompanyError).value.code, 503)


class SingleNodeTests(SynchronousTestCase):
    def test_a_daemon_on_its_own_has_no_router_and_plain_peer_ids(self):
        from tests.helpers import make_domain

        domain = make_domain(self, media_engine=AnsweringEngine())
        self.assertIsNone(domain.sfu_router)
        self.assertIs(domain.sfu_routes, domain.sfu)
        self.assertEqual(uuid.UUID(domain.sfu._make_peer_id()).version, 4)
