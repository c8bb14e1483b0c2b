"""
Several nodes in one process, over the fake Redis: what crosses nodes, and
what happens when a node or Redis goes away. No sockets, no wall time.
"""

from __future__ import annotations

import json

from prometheus_client import generate_latest
from treq.testing import StubTreq

from tests.helpers import FakeClient
from tests.mirror.clustering import NODE_TIMEOUT, ClusterCase, run
from wecompany.api.metrics import Metrics
from wecompany.domain import events as ev
from wecompany.domain.chat import DELIVERED, STORED
from wecompany.web.site import make_site


class TextTests(ClusterCase):
    def test_text_to_a_user_on_another_node(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        ack = self.send(a, alice, "bob", "hello from a")
        self.assertEqual((ack.status, self.texts(bob)), (DELIVERED, ["hello from a"]))
        ack = self.send(b, bob, self.user("alice"), "and back")
        self.assertEqual((ack.status, self.texts(alice)), (DELIVERED, ["and back"]))
        self.assertEqual(self.store.fetch_offline_messages(int(self.user("bob")), 10).result, [])

    def test_stored_only_when_the_user_is_on_no_node(self):
        a, b = self.node("a"), self.node("b")
        alice = self.login(a, "alice")
        self.user("bob")
        ack = self.send(a, alice, "bob", "while you were away")
        self.assertEqual(ack.status, STORED)
        bob = self.login(b, "bob")  # the stored text arrives where bob logs in
        self.assertEqual(self.texts(bob), ["while you were away"])

    def test_a_session_gone_meanwhile_stores_on_its_node(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        b.domain.registry.detach(bob)  # gone on b before a learns of it
        ack = self.send(a, alice, "bob", "are you there")
        self.assertEqual(ack.status, STORED)
        self.assertEqual([m.text for m in self.store.fetch_offline_messages(int(self.user("bob")), 10).result],
                         ["are you there"])

    def test_no_answer_in_time_is_stored_here_not_lost(self):
        a, b = self.node("a"), self.node("b")
        alice = self.login(a, "alice")
        self.login(b, "bob")
        b.link.partition()  # b no longer hears anything
        d = run(a.chat.send_text(alice, "bob", "lost in transit?"))
        self.settle(4)
        self.assertEqual(self.successResultOf(d).status, STORED)
        self.assertEqual(len(self.store.fetch_offline_messages(int(self.user("bob")), 10).result), 1)

    def test_text_to_a_user_who_just_logged_in_elsewhere_is_delivered(self):
        a, b = self.node("a"), self.node("b")
        alice = self.login(a, "alice")
        bob = FakeClient(self.user("bob"), "bob")
        b.chat.open_session(bob)  # its records are in Redis; its "up" is still on the way to a
        self.assertIsNone(a.domain.cluster.chat_session(self.user("bob")))
        d = run(a.chat.send_text(alice, "bob", "quick"))
        self.settle()
        self.assertEqual(self.successResultOf(d).status, DELIVERED)
        self.assertEqual(self.texts(bob), ["quick"])

    def test_text_stored_for_a_user_online_elsewhere_is_delivered_at_once(self):
        # Stored here before the user's session reached Redis at all: its node is told when it has.
        a, b = self.node("a"), self.node("b")
        alice = self.login(a, "alice")
        bob = self.login(b, "bob")
        event = ev.TextMessage(a.chat.ids.next_id(), alice.identity.user_id, "alice", "raced", self.clock.seconds())
        status = self.successResultOf(run(a.chat.deliver_here(self.user("bob"), event)))
        self.settle()
        self.assertEqual(status, STORED)
        self.assertEqual(self.texts(bob), ["raced"])

    def test_broadcast_reaches_every_node(self):
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        alice, bob, carol = self.login(a, "alice"), self.login(b, "bob"), self.login(c, "carol")
        ack = self.send(a, alice, "*", "to everyone")
        self.assertEqual(ack.recipients, 2)
        self.assertEqual((self.texts(bob), self.texts(carol), self.texts(alice)), (["to everyone"], ["to everyone"], []))


class PresenceTests(ClusterCase):
    def test_presence_and_the_online_list_are_cluster_wide(self):
        a, b = self.node("a"), self.node("b")
        self.watch("alice", "bob")
        alice = self.login(a, "alice")
        alice.take()
        bob = self.login(b, "bob")
        self.assertEqual([(e.username, e.online) for e in alice.take() if isinstance(e, ev.PresenceChanged)],
                         [("bob", True)])
        for node in (a, b):
            total, users = node.chat.online_users()
            self.assertEqual((total, sorted(u.username for u in users)), (2, ["alice", "bob"]))
            self.assertTrue(node.chat.is_online(self.user("bob")))
        # A second session of bob's (signaling) on a: still online, no second notice.
        ws = self.login(a, "bob", kind="ws")
        self.logout(b, bob)
        self.assertEqual([e for e in alice.take() if isinstance(e, ev.PresenceChanged)], [])
        self.logout(a, ws)
        self.assertEqual([(e.username, e.online) for e in alice.take() if isinstance(e, ev.PresenceChanged)],
                         [("bob", False)])
        self.assertEqual(b.chat.online_users()[0], 1)

    def test_one_desktop_session_per_user_cluster_wide(self):
        a, b = self.node("a"), self.node("b")
        first = self.login(a, "alice")
        second = self.login(b, "alice")
        self.assertEqual(first.disconnected.code, 409)
        self.assertIsNone(second.disconnected)
        self.assertIsNone(a.domain.registry.chat_client(self.user("alice")))

    def test_sign_out_everywhere_reaches_every_node(self):
        a, b = self.node("a"), self.node("b")
        desktop, browser = self.login(a, "alice"), self.login(b, "alice", kind="ws")
        run(a.domain.lifecycle.sign_out_everywhere(int(self.user("alice")), ev_error("password changed")))
        self.settle()
        self.assertEqual((desktop.disconnected.message, browser.disconnected.message),
                         ("password changed", "password changed"))


def ev_error(message):
    from wecompany.errors import Unauthenticated
    return Unauthenticated(message)


class CallTests(ClusterCase):
    def test_a_call_across_nodes_with_media_both_ways(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = self.call(a, alice, "bob")
        incoming = [e for e in bob.take() if isinstance(e, ev.CallIncoming)]
        self.assertEqual([(e.call_id, e.caller_name) for e in incoming], [(call.call_id, "alice")])
        b.domain.calls.accept(bob, call.call_id)  # on bob's node: it goes to the call's node
        self.settle()
        self.assertIn(ev.CallAccepted(call.call_id), alice.take())
        self.assertIn(ev.CallAccepted(call.call_id), bob.take())
        a.domain.calls.relay(alice, b"from alice")
        b.domain.calls.relay(bob, b"from bob")
        self.settle()
        self.assertEqual((bob.media, alice.media), ([(call.call_id, b"from alice")], [(call.call_id, b"from bob")]))
        b.domain.calls.end(bob, call.call_id)
        self.settle()
        for party in (alice, bob):
            self.assertIn(ev.CallEnded(call.call_id, "hangup"), party.take())
        self.assertEqual([k for k in self.server.keys() if ":busy:" in k], [])  # the locks went

    def test_a_node_stopping_ends_its_clients_calls_owned_elsewhere(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = self.call(a, alice, "bob")  # a owns it
        b.domain.calls.accept(bob, call.call_id)
        self.settle()
        alice.take(), bob.take()
        b.domain.calls.end_all("shutdown")
        self.settle()
        self.assertEqual(alice.take(), [ev.CallEnded(call.call_id, "shutdown")])
        self.assertEqual(bob.take(), [ev.CallEnded(call.call_id, "shutdown")])  # once
        self.assertIsNone(a.domain.calls.get(call.call_id))

    def test_rejected_across_nodes(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = self.call(a, alice, "bob")
        b.domain.calls.reject(bob, call.call_id, "in a meeting")
        self.settle()
        self.assertIn(ev.CallRejected(call.call_id, "in a meeting"), alice.take())

    def test_cancelled_declined_and_unanswered_across_nodes(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        for who, reason in ((a, "cancelled"), (b, "declined")):
            call = self.call(a, alice, "bob")
            party = alice if who is a else bob
            who.domain.calls.end(party, call.call_id)  # while it rings
            self.settle()
            for client in (alice, bob):
                self.assertIn(ev.CallEnded(call.call_id, reason), client.take(), (reason, client))
        call = self.call(a, alice, "bob")
        self.settle(a.domain.calls.ring_timeout + 1)  # nobody answers: the owner's timer ends it for both
        ended = [e for e in alice.take() + bob.take()
                 if isinstance(e, (ev.CallEnded, ev.CallRejected)) and e.call_id == call.call_id]
        self.assertEqual(len(ended), 2, ended)
        self.assertEqual([k for k in self.server.keys() if ":busy:" in k], [])  # every lock went
        self.assertIsNotNone(self.call(a, alice, "bob"))  # and both can be called again

    def test_calling_a_user_who_just_logged_in_elsewhere_rings(self):
        a, b = self.node("a"), self.node("b")
        alice = self.login(a, "alice")
        bob = FakeClient(self.user("bob"), "bob")
        b.chat.open_session(bob)  # its records are in Redis; its "up" is still on the way to a
        self.assertIsNone(a.domain.cluster.chat_session(self.user("bob")))
        call = self.call(a, alice, "bob")
        self.assertIsNotNone(call)
        self.assertEqual([type(e).__name__ for e in bob.take()], ["CallIncoming"])

    def test_two_nodes_ringing_one_user_at_once_cannot_double_book(self):
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        alice, bob, carol = self.login(a, "alice"), self.login(b, "bob"), self.login(c, "carol")
        first = run(a.chat.place_call(alice, "bob", False))
        second = run(c.chat.place_call(carol, "bob", False))
        self.settle()
        self.assertIsNotNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual([e.reason for e in carol.take() if isinstance(e, ev.CallRejected)], ["busy"])
        self.assertEqual(len([e for e in bob.take() if isinstance(e, ev.CallIncoming)]), 1)

    def test_the_callee_going_away_ends_the_call(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = self.call(a, alice, "bob")
        b.domain.calls.accept(bob, call.call_id)
        self.settle()
        alice.take()
        self.logout(b, bob)
        self.assertIn(ev.CallEnded(call.call_id, "disconnected"), alice.take())
        self.assertIsNone(a.domain.calls.get(call.call_id))


class NodeFailureTests(ClusterCase):
    def test_a_dead_node_is_cleaned_up_within_the_timeout(self):
        a, b = self.node("a"), self.node("b")
        self.watch("alice", "bob")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = run(a.chat.place_call(alice, "bob", False))
        self.settle()
        call = self.successResultOf(call)
        b.domain.calls.accept(bob, call.call_id)
        self.settle()
        alice.take()
        # b dies: no goodbye, no more heartbeats, nothing heard.
        b.link.partition()
        for loop in (b.node._heartbeat, b.node._resync):
            loop.stop()
        b.link.up = False
        self.settle(NODE_TIMEOUT + NODE_TIMEOUT / 3 + 1)
        events = alice.take()
        self.assertIn(ev.CallEnded(call.call_id, "disconnected"), events)
        self.assertIn(ev.PresenceChanged(self.user("bob"), "bob", False), events)
        self.assertFalse(a.chat.is_online(self.user("bob")))
        self.assertEqual([k for k in self.server.keys() if ":b" in k.split("v1:")[1][:9]
                          or k.endswith(":sessions:b")], [])
        ack = self.send(a, alice, "bob", "are you back?")
        self.assertEqual(ack.status, STORED)

    def test_every_survivor_drops_a_dead_node_not_only_the_one_that_cleans_up(self):
        self.node("a")  # the survivor that cleans up
        b, c = self.node("b"), self.node("c")
        self.login(c, "carol")
        c.link.partition()
        for loop in (c.node._heartbeat, c.node._resync):
            loop.stop()
        c.link.up = False
        b.node._resync.stop()  # b looks only after a has cleaned up (and taken c out of the node set)
        self.settle(NODE_TIMEOUT + NODE_TIMEOUT / 3 + 1)
        self.assertNotIn("c", self.server._live("wecompany:v1:nodes") or set())
        self.assertTrue(b.chat.is_online(self.user("carol")))  # not looked yet
        b.node._resync.start(NODE_TIMEOUT / 3, now=True)
        self.settle()
        self.assertFalse(b.chat.is_online(self.user("carol")))
        self.assertEqual(b.domain.cluster.status()["nodes"], ["a", "b"])

    def test_a_node_that_stops_leaves_at_once(self):
        a, b = self.node("a"), self.node("b")
        self.login(b, "bob")
        self.assertTrue(a.chat.is_online(self.user("bob")))
        run(b.node.stop())
        self.settle()
        self.assertFalse(a.chat.is_online(self.user("bob")))


class RedisFailureTests(ClusterCase):
    def test_nodes_serve_their_own_and_recover_when_redis_returns(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        self.server.crash()  # without persistence: everything in it is gone
        self.settle()
        ack = self.send(a, alice, "bob", "redis is down")  # bob is out of reach: stored, not lost
        self.assertEqual(ack.status, STORED)
        carol = self.login(a, "carol")  # a still serves its own
        self.assertEqual(self.send(a, carol, "alice", "local").status, DELIVERED)
        self.server.restart()
        self.settle(NODE_TIMEOUT / 3 + 1)
        # Each node published its sessions again, and b delivered what was stored for bob.
        self.assertTrue(a.chat.is_online(self.user("bob")))
        self.assertEqual(self.texts(bob), ["redis is down"])
        self.assertEqual(self.send(a, alice, "bob", "back").status, DELIVERED)
        self.assertEqual(self.texts(bob), ["back"])
        self.assertEqual(a.domain.cluster.status()["redis"], "ok")

    def test_calls_across_nodes_end_for_both_when_redis_goes(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = self.call(a, alice, "bob")
        b.domain.calls.accept(bob, call.call_id)
        self.settle()
        alice.take(), bob.take()
        self.server.crash()
        self.settle()
        self.assertEqual(alice.take(), [ev.CallEnded(call.call_id, "disconnected")])
        self.assertEqual(bob.take(), [ev.CallEnded(call.call_id, "disconnected")])
        self.assertEqual((a.domain.calls.count, b.domain.cluster.remote_calls), (0, {}))


class LiveCountsTests(ClusterCase):
    def health(self, node):
        treq = StubTreq(make_site(self.store, node.domain).resource)
        response = self.successResultOf(treq.get("http://localhost/health"))
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_counts_are_cluster_wide(self):
        a, b = self.node("a"), self.node("b")
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        self.login(b, "alice", kind="ws")  # a second session of alice: one user, two sessions
        call = self.call(a, alice, "bob")
        b.domain.calls.accept(bob, call.call_id)
        self.settle(NODE_TIMEOUT / 3 + 0.1)  # a heartbeat and a resync: a has b's, b has a's
        for node in (a, b):
            counts = node.domain.live_counts()
            self.assertEqual((counts["online_users"], counts["sessions"], counts["calls"], counts["active_calls"]),
                             (2, 3, 1, 1), node.name)
        code, body = self.health(b)
        self.assertEqual((code, body["status"], body["online_users"], body["active_calls"]), (200, "ok", 2, 1))
        self.assertEqual((body["cluster"]["node"], body["cluster"]["nodes"]), ("b", ["a", "b"]))

    def test_a_node_without_redis_is_degraded_not_down(self):
        a = self.node("a")
        self.server.crash()
        self.settle()
        code, body = self.health(a)
        self.assertEqual((code, body["status"], body["cluster"]["redis"]), (200, "degraded", "unavailable"))
        text = generate_latest(Metrics(a.domain).registry).decode()
        self.assertIn("wecompany_redis_up 0.0", text)
        self.server.restart()
        self.settle()
        self.assertIn("wecompany_redis_up 1.0", generate_latest(Metrics(a.domain).registry).decode())


class NodeIdentityTests(ClusterCase):
    def test_every_node_numbers_its_ids_apart(self):
        nodes = [self.node(name) for name in ("a", "b", "c")]
        self.settle(NODE_TIMEOUT / 3 + 0.1)
        numbers = [node.node.number for node in nodes]
        self.assertEqual(len(set(numbers)), 3, numbers)
        self.assertEqual([node.chat.ids.node for node in nodes], numbers)
        ids = {node.chat.ids.next_id() for node in nodes}  # the same millisecond on all three
        self.assertEqual(len(ids), 3)

    def test_a_second_daemon_with_the_same_node_id_stays_out(self):
        first = self.node("a")
        alice = self.login(first, "alice")
        self.settle(NODE_TIMEOUT / 3 + 0.1)
        second = self.node("a")  # a copied configuration
        self.settle(NODE_TIMEOUT / 3 + 0.1)
        self.assertTrue(second.domain.cluster.status()["node_id_in_use"])
        self.assertFalse(first.domain.cluster.status()["node_id_in_use"])
        other = self.node("b")
        bob = self.login(other, "bob")
        self.assertEqual(self.send(other, bob, "alice", "still there?").status, DELIVERED)
        self.assertEqual(self.texts(alice), ["still there?"])
        run(first.node.stop())
        self.settle(NODE_TIMEOUT / 3 + 0.1)
        self.assertFalse(second.domain.cluster.status()["node_id_in_use"])  # it is free now


class MediaLinkTests(ClusterCase):
    """With --node-link, call media between nodes skips Redis (wecompany.mirror.medialink)."""

    def linked_node(self, name: str):
        from tests.mirror.test_medialink import FakeEndpoint, Wire
        from wecompany.mirror.medialink import NodeLinks, link_key

        if not hasattr(self, "wire"):
            self.wire, self.listening = Wire(), {}
        links = NodeLinks(self.clock, name, link_key(b"k" * 32, "wecompany:"),
                          connect=lambda address: FakeEndpoint(self, address), address=f"mem:{name}")
        self.listening[links.address] = links
        return self.node(name, node_links=links), links

    def settle(self, seconds: float = 0.0) -> None:
        super().settle(seconds)
        if hasattr(self, "wire"):
            self.wire.pump()
            super().settle()

    def media_published(self) -> int:
        return sum(1 for _, _, message in self.server.heard if '"media"' in message or '"call-media"' in message)

    def test_media_crosses_over_the_link_once_the_nodes_know_each_others_address(self):
        (a, a_links), (b, b_links) = self.linked_node("a"), self.linked_node("b")
        self.settle(NODE_TIMEOUT)  # a heartbeat each, and each has read the other's
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = self.call(a, alice, "bob")
        b.domain.calls.accept(bob, call.call_id)
        self.settle()
        self.assertEqual((list(a_links.links), list(b_links.links)), (["b"], ["a"]))  # made at once
        for i in range(3):
            a.domain.calls.relay(alice, b"alice %d" % i)
            b.domain.calls.relay(bob, b"bob %d" % i)
        self.settle()
        self.assertEqual(self.media_published(), 0)  # none through Redis
        self.assertEqual([m for _, m in bob.media], [b"alice %d" % i for i in range(3)])
        self.assertEqual([m for _, m in alice.media], [b"bob %d" % i for i in range(3)])
        self.assertEqual(a_links.sent + b_links.sent, 6)
        self.assertEqual(a.domain.calls.relayed_packets, 6)  # the owner relayed every packet
        from prometheus_client import generate_latest

        from wecompany.api.metrics import Metrics
        text = generate_latest(Metrics(a.domain).registry).decode()
        self.assertIn("wecompany_node_links_up 1.0", text)
        self.assertIn('wecompany_node_link_packets_total{outcome="sent"} %d.0' % a_links.sent, text)
        self.assertIn('wecompany_node_link_packets_total{outcome="received"} 3.0', text)

    def test_without_a_link_media_goes_through_redis(self):
        (a, a_links), (b, _) = self.linked_node("a"), self.linked_node("b")
        self.settle(NODE_TIMEOUT)
        del self.listening["mem:b"]  # b's link port is gone: a's link to it breaks, and cannot be made again
        for link in list(a_links._open):
            link.transport.loseConnection()
        self.settle()
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = self.call(a, alice, "bob")
        b.domain.calls.accept(bob, call.call_id)
        self.settle()
        a.domain.calls.relay(alice, b"to bob")
        b.domain.calls.relay(bob, b"to alice")
        self.settle()
        self.assertEqual((bob.media, alice.media), ([(call.call_id, b"to bob")], [(call.call_id, b"to alice")]))
        self.assertEqual(self.media_published(), 2)

    def test_media_from_a_stranger_on_the_link_reaches_nobody(self):
        (a, a_links), (b, _) = self.linked_node("a"), self.linked_node("b")
        self.settle(NODE_TIMEOUT)
        alice, bob = self.login(a, "alice"), self.login(b, "bob")
        call = self.call(a, alice, "bob")
        b.domain.calls.accept(bob, call.call_id)
        self.settle()
        from wecompany.mirror.medialink import FROM_PARTY, TO_CLIENT
        # Node b speaks only for its own sessions: not for alice's (on a), nor for unknown ones.
        a_links.received("b", FROM_PARTY, a.domain.cluster.sid_of[alice], "", b"forged")
        a_links.received("b", FROM_PARTY, "no-such-session", "", b"forged")
        a_links.received("b", TO_CLIENT, "no-such-session", call.call_id, b"forged")
        self.settle()
        self.assertEqual((alice.media, bob.media), ([], []))
        a_links.received("b", FROM_PARTY, b.domain.cluster.sid_of[bob], "", b"from bob")
        self.settle()
        self.assertEqual(alice.media, [(call.call_id, b"from bob")])  # what b may say arrives

    def test_a_dead_node_is_forgotten_by_the_links(self):
        (_, a_links), (b, _) = self.linked_node("a"), self.linked_node("b")
        self.settle(NODE_TIMEOUT)
        self.assertEqual(a_links.addresses, {"b": "mem:b"})
        b.node._heartbeat.stop()
        b.node._resync.stop()
        self.settle(2 * NODE_TIMEOUT)
        self.assertEqual(a_links.addresses, {})


class MediaJobTests(ClusterCase):
    """A media job runs on one node; its owner may poll it on any (wecompany.mirror.jobs)."""

    def status(self, node, owner, job_id):
        return run(node.domain.processing.status(owner, job_id))

    def test_a_job_is_seen_from_another_node_by_its_owner_only(self):
        from wecompany.errors import NotFound
        a, b = self.node("a"), self.node("b")
        jobs = a.domain.processing.jobs
        job = jobs.submit(7, lambda progress, cancelled: progress(0.5) or "result")  # runs at once here
        self.settle()
        self.assertEqual(job.status, "done")
        seen = self.successResultOf(self.status(b, 7, job.job_id))
        self.assertEqual(seen, jobs.to_json(job))
        self.failureResultOf(self.status(b, 8, job.job_id), NotFound)  # someone else's
        self.failureResultOf(self.status(b, 7, "no-such-job"), NotFound)
        self.failureResultOf(self.status(b, 7, "x" * 500), NotFound)
        # It is forgotten everywhere with the queue's memory of it.
        self.settle(601)
        self.failureResultOf(self.status(b, 7, job.job_id), NotFound)

    def test_a_running_jobs_progress_is_written_every_second(self):
        from wecompany.media.jobs import Job
        a, b = self.node("a"), self.node("b")
        mirror = a.domain.processing.mirror
        job = Job(job_id="j1", owner_id=7, created_at=self.clock.seconds(), status="running")
        mirror.changed(job)
        self.settle()
        self.assertEqual(self.successResultOf(self.status(b, 7, "j1"))["progress"], 0.0)
        job.report(0.25)  # as the worker thread does
        self.settle(1.0)
        self.assertEqual(self.successResultOf(self.status(b, 7, "j1"))["progress"], 0.25)
        job.status = "done"
        mirror.changed(job)
        self.settle()
        self.assertFalse(mirror._loop.running)

    def test_without_redis_another_node_cannot_tell(self):
        from wecompany.errors import NotFound
        a, b = self.node("a"), self.node("b")
        job = a.domain.processing.jobs.submit(7, lambda progress, cancelled: None)
        self.settle()
        self.server.crash()
        self.settle()
        self.failureResultOf(self.status(b, 7, job.job_id), NotFound)
        self.assertEqual(self.successResultOf(self.status(a, 7, job.job_id))["status"], "done")  # its own node can
