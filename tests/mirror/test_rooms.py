"""
Meeting rooms with members on several nodes, over the fake Redis: who
appears where, what crosses (and to whom), and what happens when a member's
node dies, Redis restarts, or the meeting changes through REST elsewhere.
"""

from __future__ import annotations

import json

from tests.helpers import FakeClient
from tests.mirror.clustering import NODE_TIMEOUT, ClusterCase, run
from wecompany.errors import Conflict, Forbidden, MeetingEnded, Unavailable
from wecompany.mirror.rooms import decode_signal, encode_signal


class RoomCase(ClusterCase):
    def setUp(self):
        super().setUp()
        self.a, self.b, self.c = self.node("a"), self.node("b"), self.node("c")
        self.host = self.account("host")
        meeting, _ = self.successResultOf(run(self.a.domain.meetings.create(self.host, title="all hands",
                                                                            max_participants=5)))
        self.meeting_id = meeting.id

    def account(self, name: str):
        return self.successResultOf(self.store.get_user(int(self.user(name))))

    def admit(self, node, name: str):
        user = self.account(name)
        self.successResultOf(run(node.domain.meetings.join(user, self.meeting_id)))  # through REST first
        client = FakeClient(str(user.id), name, kind="ws")
        d = run(node.domain.rooms.admit(user.id, self.meeting_id, client))
        self.settle()
        return user, client, d

    def enter(self, node, name: str, peer: str | None = None) -> FakeClient:
        user, client, d = self.admit(node, name)
        meeting = self.successResultOf(d)
        node.domain.rooms.join(client, meeting, user, peer or name)
        self.settle()
        return client

    def kinds(self, client) -> list[str]:
        return [e.kind for e in client.events]

    def last_info(self, client) -> dict:
        infos = [e.payload for e in client.events if e.kind == "room-info"]
        return infos[-1]

    def names(self, client) -> list[str]:
        return sorted(p["username"] for p in self.last_info(client)["participants"])

    def room_keys(self) -> dict:
        return self.server._live(f"wecompany:v1:room:{self.meeting_id}") or {}

    def record(self, name: str):
        return self.successResultOf(self.store.get_participant(self.meeting_id, int(self.user(name))))


class MembershipTests(RoomCase):
    def test_three_nodes_one_room(self):
        alice = self.enter(self.a, "alice")
        bob = self.enter(self.b, "bob")
        carol = self.enter(self.c, "carol")
        for client in (alice, bob, carol):
            self.assertEqual(self.names(client), ["alice", "bob", "carol"], client)
        # Each is told of those who came later, wherever they came.
        joined = [e.payload["username"] for e in alice.events if e.kind == "user-joined"]
        self.assertEqual(joined, ["bob", "carol"])
        self.assertEqual([e.payload["username"] for e in carol.events if e.kind == "user-joined"], [])
        # Only its own node writes a member's record.
        nodes = sorted(json.loads(raw)["node"] for raw in self.room_keys().values())
        self.assertEqual(nodes, ["a", "b", "c"])

    def test_the_joiners_room_info_lists_members_elsewhere_with_their_state(self):
        alice = self.enter(self.a, "alice")
        self.a.domain.rooms.media_state(alice, {"audio_enabled": False})
        self.settle()
        bob = self.enter(self.b, "bob")
        first = [e.payload for e in bob.events if e.kind == "room-info"][0]
        alice_view = [p for p in first["participants"] if p["username"] == "alice"][0]
        self.assertFalse(alice_view["audio_enabled"])
        self.assertFalse(alice_view["is_self"])

    def test_leaving_is_seen_everywhere_and_recorded_once(self):
        alice, bob, carol = self.enter(self.a, "alice"), self.enter(self.b, "bob"), self.enter(self.c, "carol")
        self.b.domain.rooms.release(bob)  # bob's socket closed
        self.settle()
        for client in (alice, carol):
            left = [e.payload for e in client.events if e.kind == "user-left"]
            self.assertEqual([(p["username"], p["reason"]) for p in left], [("bob", "disconnected")])
            self.assertEqual(self.names(client), ["alice", "carol"])
        self.assertEqual(self.record("bob").status, "left")
        self.assertEqual(len(self.room_keys()), 2)

    def test_a_node_stops_following_a_room_no_one_there_is_in(self):
        self.enter(self.a, "alice")
        bob = self.enter(self.b, "bob")
        channel = f"wecompany:v1:room:{self.meeting_id}"
        self.assertIn(self.b.link, self.server.channels[channel])
        self.b.domain.rooms.release(bob)
        self.settle()
        self.assertNotIn(self.b.link, self.server.channels[channel])
        self.assertEqual((self.b.domain.rooms.rooms, self.b.domain.rooms.sessions), ({}, {}))

    def test_an_admission_that_never_joins_is_released(self):
        self.enter(self.a, "alice")
        _, client, d = self.admit(self.b, "bob")
        self.successResultOf(d)
        self.assertEqual(len(self.b.domain.rooms.sessions), 1)  # alice's replica, for the capacity check
        self.b.domain.rooms.release(client)
        self.assertEqual(self.b.domain.rooms.sessions, {})

    def test_same_user_same_peer_on_another_node_replaces_the_older(self):
        alice = self.enter(self.a, "alice")
        old = self.enter(self.b, "bob", peer="bob-laptop")
        new = self.enter(self.c, "bob", peer="bob-laptop")
        self.assertIsInstance(old.disconnected, Conflict)
        self.assertIsNone(new.disconnected)
        self.assertEqual(self.names(alice), ["alice", "bob"])
        self.assertEqual([p["username"] for p in self.last_info(alice)["participants"]].count("bob"), 1)

    def test_another_users_peer_id_elsewhere_is_refused(self):
        self.enter(self.a, "alice", peer="shared")
        user, client, d = self.admit(self.b, "bob")
        meeting = self.successResultOf(d)
        with self.assertRaises(Conflict):
            self.b.domain.rooms.join(client, meeting, user, "shared")

    def test_counted_once_cluster_wide(self):
        self.enter(self.a, "alice")
        self.enter(self.b, "bob")
        self.settle(NODE_TIMEOUT / 3 + 0.1)  # heartbeats carry each node's rooms
        for node in (self.a, self.b, self.c):
            self.assertEqual(node.domain.live_counts()["rooms"], 1, node.name)


class MessageTests(RoomCase):
    def setUp(self):
        super().setUp()
        self.alice, self.bob, self.carol = (self.enter(self.a, "alice"), self.enter(self.b, "bob"),
                                            self.enter(self.c, "carol"))
        for client in (self.alice, self.bob, self.carol):
            client.take()

    def heard_by(self, node) -> list[str]:
        return [message for link, _, message in self.server.heard if link is node.link]

    def test_an_offer_reaches_one_peer_and_only_its_node(self):
        self.server.heard.clear()
        self.a.domain.rooms.signal(self.alice, "offer", {"sdp": "v=0"}, to_peer_id="bob")
        self.settle()
        offers = [e for e in self.bob.take() if e.kind == "offer"]
        self.assertEqual([(e.from_user_id, e.from_peer_id, e.payload) for e in offers],
                         [(int(self.user("alice")), "alice", {"sdp": "v=0"})])
        self.assertEqual(self.carol.take(), [])
        self.assertEqual(self.heard_by(self.c), [])  # carol's node heard nothing of it

    def test_signals_to_every_session_of_a_user_across_nodes(self):
        second = self.enter(self.a, "bob", peer="bob-phone")
        self.bob.take()
        self.a.domain.rooms.signal(self.alice, "ice-candidate", {"candidate": "x"},
                                   to_user_id=int(self.user("bob")))
        self.settle()
        self.assertEqual([e.kind for e in self.bob.take()], ["ice-candidate"])
        self.assertEqual([e.kind for e in second.take() if e.kind == "ice-candidate"], ["ice-candidate"])

    def test_chat_is_stored_once_and_seen_by_all(self):
        d = self.b.domain.rooms.chat(self.bob, {"content": "hello all"})
        self.settle()
        event = self.successResultOf(d)
        for client in (self.alice, self.bob, self.carol):
            chats = [e for e in client.take() if e.kind == "chat"]
            self.assertEqual([(e.id, e.payload["content"]) for e in chats], [(event.id, "hello all")], client)
        _, messages = self.successResultOf(self.store.list_meeting_messages(self.meeting_id, 0, 10))
        self.assertEqual([m.content for m in messages], ["hello all"])

    def test_media_state_crosses_and_the_replicas_follow(self):
        self.b.domain.rooms.media_state(self.bob, {"video_enabled": False})
        self.b.domain.rooms.screen_share(self.bob, {"enabled": True})
        self.settle()
        self.assertEqual([e.kind for e in self.alice.take()], ["media-state", "screen-share"])
        for node in (self.a, self.c):
            replica = [m for m in node.domain.rooms.sessions.values() if m.username == "bob"][0]
            self.assertEqual((replica.video_enabled, replica.screen_sharing), (False, True), node.name)

    def test_a_server_announcement_reaches_the_whole_room_once(self):
        """A recording started through node a: everyone in the room, wherever, is told once."""
        told = self.a.domain.rooms.announce(self.meeting_id, "recording", {"action": "started"})
        self.settle()
        self.assertEqual(told, 1)  # alice, here
        for client in (self.alice, self.bob, self.carol):
            events = [e for e in client.take() if e.kind == "recording"]
            self.assertEqual([e.payload for e in events], [{"action": "started"}], client)
        with self.assertRaises(ValueError):
            self.a.domain.rooms.announce(self.meeting_id, "offer", {})  # not a room-wide server event

    def test_a_members_event_cannot_pass_for_a_server_announcement(self):
        event = self.a.domain.rooms._event("recording", self.a.domain.rooms.member_of(self.alice), {"x": 1})
        self.b.domain.rooms.remote_event(event)  # stamped with alice's session: not the server's
        self.assertEqual([e for e in self.bob.take() if e.kind == "recording"], [])

    def test_what_a_node_builds_from_the_wire_is_only_what_may_cross(self):
        event = self.a.domain.rooms._event("offer", self.a.domain.rooms.member_of(self.alice), {})
        self.assertEqual(decode_signal(encode_signal(event)), event)
        with self.assertRaises(ValueError):
            decode_signal({**encode_signal(event), "kind": "room-info"})


class RestTests(RoomCase):
    def test_ending_the_meeting_on_a_node_without_members_closes_every_room(self):
        clients = [self.enter(self.a, "alice"), self.enter(self.b, "bob"), self.enter(self.c, "carol")]
        d_node = self.node("d")  # the REST request lands on a node no member is connected to
        self.successResultOf(run(d_node.domain.meetings.end(self.host, self.meeting_id)))
        self.settle()
        for client in clients:
            self.assertIsInstance(client.disconnected, MeetingEnded, client)
        for node in (self.a, self.b, self.c):
            self.assertEqual(node.domain.rooms.rooms, {}, node.name)
        self.assertEqual(self.room_keys(), {})

    def test_a_participant_removed_elsewhere_is_disconnected_on_its_node(self):
        alice, bob = self.enter(self.a, "alice"), self.enter(self.b, "bob")
        self.successResultOf(run(self.c.domain.meetings.remove_participant(self.host, self.meeting_id,
                                                                           int(self.user("bob")))))
        self.settle()
        self.assertIsInstance(bob.disconnected, Forbidden)
        self.assertEqual(self.names(alice), ["alice"])
        self.assertEqual(self.room_keys().keys(), {self.a.domain.rooms.member_of(alice).session_id})

    def test_settings_changed_elsewhere_apply_to_chat_at_once(self):
        alice = self.enter(self.a, "alice")
        self.successResultOf(run(self.b.domain.meetings.update(self.host, self.meeting_id,
                                                               {"settings": {"enable_chat": False}})))
        self.settle()
        with self.assertRaises(Forbidden):
            self.a.domain.rooms.chat(alice, {"content": "anyone?"})


class FailureTests(RoomCase):
    def test_a_dead_nodes_members_leave_every_room_within_the_timeout(self):
        alice, bob = self.enter(self.a, "alice"), self.enter(self.b, "bob")
        self.enter(self.c, "carol")
        self.c.link.partition()
        for loop in (self.c.node._heartbeat, self.c.node._resync):
            loop.stop()
        self.c.link.up = False
        self.settle(NODE_TIMEOUT + NODE_TIMEOUT / 3 + 1)
        for client in (alice, bob):
            left = [(e.payload["username"], e.payload["reason"]) for e in client.events if e.kind == "user-left"]
            self.assertEqual(left, [("carol", "disconnected")], client)
            self.assertEqual(self.names(client), ["alice", "bob"])
        self.assertEqual(sorted(json.loads(r)["node"] for r in self.room_keys().values()), ["a", "b"])
        self.assertNotIn("wecompany:v1:rooms:c", self.server.data)
        self.assertEqual(self.record("carol").status, "left")

    def test_a_node_that_stops_takes_its_members_out_at_once(self):
        alice = self.enter(self.a, "alice")
        self.enter(self.c, "carol")
        self.successResultOf(run(self.c.node.stop()))  # its sockets not even closed yet
        self.settle()
        self.assertEqual([(e.payload["username"], e.payload["reason"]) for e in alice.events if e.kind == "user-left"],
                         [("carol", "disconnected")])
        self.assertEqual([json.loads(r)["node"] for r in self.room_keys().values()], ["a"])

    def test_signals_to_a_peer_elsewhere_while_redis_is_down_are_refused_clearly(self):
        alice = self.enter(self.a, "alice")
        self.enter(self.b, "bob")
        self.server.crash()
        self.settle()
        with self.assertRaises(Unavailable):
            self.a.domain.rooms.signal(alice, "offer", {"sdp": "v=0"}, to_peer_id="bob")

    def test_a_room_outlives_a_redis_restart(self):
        alice, bob = self.enter(self.a, "alice"), self.enter(self.b, "bob")
        carol = self.enter(self.c, "carol")
        for client in (alice, bob):
            client.take()
        self.server.crash()  # without persistence: the rooms' records are gone
        self.settle()
        # Nobody is told anyone left: the browsers' media is peer to peer and goes on.
        self.assertNotIn("user-left", self.kinds(alice))
        self.c.domain.rooms.release(carol)  # carol goes while the nodes cannot tell each other
        self.server.restart()
        self.settle(2 * NODE_TIMEOUT / 3 + 0.1)  # the recovery, and two resyncs
        self.assertEqual(len(self.room_keys()), 2)  # written again by their nodes
        for client in (alice, bob):
            self.assertEqual(self.names(client), ["alice", "bob"], client)
            # carol is gone, and nobody else left (nor joined again) on the way.
            left = [e.payload["username"] for e in client.events if e.kind == "user-left"]
            self.assertEqual(left, ["carol"], client)
            self.assertNotIn("user-joined", self.kinds(client))
        # And the room works across nodes again.
        self.a.domain.rooms.signal(alice, "offer", {"sdp": "again"}, to_peer_id="bob")
        self.settle()
        self.assertEqual([e.payload for e in bob.events if e.kind == "offer"], [{"sdp": "again"}])
