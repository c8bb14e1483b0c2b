"""
Three real daemons acting as one service: each started with twistd on free
ports, sharing one Redis (under a prefix of the test's own), a freshly
created PostgreSQL database and one file storage, talked to over real
sockets. What the fake-Redis unit tests of
wecompany.mirror show, shown here once with everything real: text across
nodes, offline delivery, a call with media both ways, a three-node meeting
room, a node killed with SIGKILL, Redis restarted mid-test, and meetings'
SFU media with browsers (sfu_peers.py) whose calls reach different nodes.
"""

from __future__ import annotations

import os
import secrets
import signal

from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.e2e.daemon import Daemon
from tests.e2e.test_daemon import DELIVERED, STORED, DaemonTestCase
from tests.e2e.test_rest import Http
from tests.e2e.test_sfu import PEER_NOT_FOUND, SfuDaemonCase
from tests.e2e.test_signaling import MeetingPeople, next_message, ws_connect
from tests.pgtesting import scratch_database
from tests.services import PrivateRedis, redis_url, unique_prefix
from wecompany.tcp.codec import MsgType

NODE_TIMEOUT = 2.0  # a dead node is noticed within this and a resync (1 s)
SETTLE = 10.0


class ClusterCase(MeetingPeople, DaemonTestCase):
    timeout = 120

    async def cluster(self, count: int = 3, redis: str | None = None, extra=(), wait: bool = True) -> list[Daemon]:
        """``count`` nodes on one Redis and one database, started one after another."""
        self.redis = redis or redis_url(self)
        self.prefix = unique_prefix("e2e")
        self.secret = secrets.token_hex(32)
        self.database = scratch_database(self)  # a fresh PostgreSQL database, shared by the nodes
        self.files = os.path.abspath(self.mktemp())  # and one file storage (a shared directory)
        os.makedirs(self.files)
        nodes = []
        for i in range(count):
            daemon = Daemon(self, "--redis", self.redis, "--redis-prefix", self.prefix, "--node-id", f"n{i + 1}",
                            "--node-timeout", str(NODE_TIMEOUT), "--jwt-secret", self.secret,
                            "--database", self.database, "--file-storage", f"file:{self.files}",
                            "--ring-timeout", "20", *extra)
            nodes.append(await daemon.start())
        if wait:
            await self.until_nodes_see(nodes, count)
        return nodes

    async def until_nodes_see(self, nodes, count: int) -> None:
        """Each node's /health lists ``count`` live nodes."""
        for node in nodes:
            http = Http(self, node)

            seen: list = []

            async def sees():
                code, body = await http.call("GET", "/health")
                seen[:] = [body]
                return len(body.get("cluster", {}).get("nodes", ())) == count and body["status"] == "ok"

            await self.eventually(sees, lambda: f"{count} nodes in /health of {node.log_path}: {seen}")

    async def eventually(self, check, what: str, timeout: float = SETTLE) -> None:
        deadline = reactor.seconds() + timeout
        while not await check():
            if reactor.seconds() > deadline:
                self.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
            await deferLater(reactor, 0.05, lambda: None)

    async def tcp_user(self, node: Daemon, name: str, register: bool = True):
        client = await self.connect(node, name)
        if register:
            await client.register(name)
        else:
            await client.login(name)
        return await self.settled(client)


class CrossNodeTests(ClusterCase):
    async def test_text_offline_delivery_and_a_call_with_media(self) -> None:
        n1, n2, n3 = await self.cluster()
        alice = await self.tcp_user(n1, "alice")
        bob = await self.tcp_user(n2, "bob")

        async def both_online():
            return await self.online_users(n1, alice.token) == 2

        await self.eventually(both_online, "n1 to hear of bob on n2")
        alice.text(bob.user_id, "hello across nodes")
        ack = await alice.expect(MsgType.TEXT_ACK)
        self.assertEqual(ack["status"], DELIVERED)
        message = await bob.expect(MsgType.TEXT)
        self.assertEqual((message["from"], message["text"]), (alice.user_id, "hello across nodes"))

        # Bob on no node: stored; he logs in on a third node and gets it.
        await bob.close()
        async def bob_gone():
            return await self.online_users(n1, alice.token) == 1

        await self.eventually(bob_gone, "bob offline everywhere")
        alice.text(bob.user_id, "while you were away")
        self.assertEqual((await alice.expect(MsgType.TEXT_ACK))["status"], STORED)
        bob = await self.connect(n3, "bob again")
        await bob.login("bob")
        self.assertEqual((await bob.expect(MsgType.TEXT))["text"], "while you were away")
        await self.eventually(both_online, "n1 to hear of bob on n3")  # a login elsewhere takes a moment

        # A call across nodes, media both ways, in order.
        call_id = await self.active_call(alice, bob)
        sent = {alice: [b"A%03d" % i + bytes(300) for i in range(50)],
                bob: [b"B%03d" % i + bytes(200) for i in range(50)]}
        for i in range(50):
            alice.media(sent[alice][i])
            bob.media(sent[bob][i])
        for sender, receiver in ((alice, bob), (bob, alice)):
            packets = [await receiver.expect(MsgType.MEDIA_DATA) for _ in range(50)]
            self.assertEqual([p["media"] for p in packets], sent[sender])
        bob.hang_up(call_id)
        for party in (alice, bob):
            end = await party.expect(MsgType.CALL_END)
            self.assertEqual((end["call_id"], end["reason"]), (call_id, "hangup"))

        # Busy cluster-wide: carol on the third node cannot ring alice while alice is in a call.
        call_id = await self.active_call(alice, bob)
        carol = await self.tcp_user(n3, "carol")
        carol.call(alice.user_id)
        self.assertEqual((await carol.expect(MsgType.CALL_REJECT))["reason"], "busy")

    async def test_call_media_over_the_node_links(self) -> None:
        n1, n2 = await self.cluster(2, extra=("--node-link", "tcp:0:interface=127.0.0.1"))
        for node, other in ((n1, "n2"), (n2, "n1")):
            async def linked(node=node, other=other):
                with open(node.log_path) as log:
                    return f"media link with node {other} is up" in log.read()

            await self.eventually(linked, f"{node.log_path} to link with {other}")
        alice = await self.tcp_user(n1, "alice")
        bob = await self.tcp_user(n2, "bob")

        async def both_online():
            return await self.online_users(n1, alice.token) == 2

        await self.eventually(both_online, "n1 to hear of bob on n2")
        call_id = await self.active_call(alice, bob)
        sent = {alice: [b"A%03d" % i + bytes(900) for i in range(200)],
                bob: [b"B%03d" % i + bytes(900) for i in range(200)]}
        for i in range(200):
            alice.media(sent[alice][i])
            bob.media(sent[bob][i])
        for sender, receiver in ((alice, bob), (bob, alice)):
            packets = [await receiver.expect(MsgType.MEDIA_DATA) for _ in range(200)]
            self.assertEqual([p["media"] for p in packets], sent[sender])
        bob.hang_up(call_id)
        for party in (alice, bob):
            self.assertEqual((await party.expect(MsgType.CALL_END))["reason"], "hangup")

    async def online_users(self, node: Daemon, token: str) -> int:
        code, body = await Http(self, node).call("GET", "/api/v1/stats/overview", token=token)
        return body["data"]["online_users"]

    async def test_a_token_ended_on_one_node_is_refused_by_the_others_at_once(self) -> None:
        n1, n2 = await self.cluster(2)
        http1, http2 = Http(self, n1), Http(self, n2)
        await http1.register("alice")
        token = (await http1.login("alice"))["token"]
        code, _ = await http2.call("GET", "/api/v1/users/profile", token=token)
        self.assertEqual(code, 200)  # n2 now holds alice in its cache
        alice = await self.connect(n2, "alice on n2")
        await alice.login_token(token)
        code, body = await http1.call("DELETE", "/api/v1/users/account", token=token)
        self.assertEqual(code, 200, body)
        # n1 told n2's caches before it told n2 to close alice's session (one connection, in order):
        await alice.wait_closed()
        code, body = await http2.call("GET", "/api/v1/users/profile", token=token)
        self.assertEqual(code, 401, body)

    async def test_a_three_node_meeting_room(self) -> None:
        nodes = await self.cluster()
        http = Http(self, nodes[0])
        names = ("alice", "bob", "carol")
        people, mid = await self.meeting_of(http, "three nodes", names)
        clients, infos = {}, {}
        for name, node in zip(names, nodes):
            uid, token = people[name]
            client = await ws_connect(self, node.http_port, mid, uid, f"peer-{name}", token)
            client.send({"type": "join"})
            infos[name] = await next_message(client, "room-info")
            clients[name] = client
        for name, client in clients.items():  # each is told, wherever it is, until it sees all three
            info = infos[name]
            while info["payload"]["participant_count"] < 3:
                info = await next_message(client, "room-info")
            self.assertEqual(sorted(p["username"] for p in info["payload"]["participants"]), sorted(names))
        clients["alice"].send({"type": "offer", "to_peer_id": "peer-carol", "payload": {"sdp": "v=0 n1->n3"}})
        offer = await next_message(clients["carol"], "offer")
        self.assertEqual((offer["from_peer_id"], offer["payload"]), ("peer-alice", {"sdp": "v=0 n1->n3"}))
        clients["bob"].send({"type": "chat", "payload": {"content": "hello from n2"}})
        for client in clients.values():
            self.assertEqual((await next_message(client, "chat"))["payload"]["content"], "hello from n2")
        code, body = await http.call("GET", f"/api/v1/meetings/{mid}/messages", token=people["alice"][1])
        self.assertEqual([m["content"] for m in body["data"]["list"]], ["hello from n2"])  # stored once
        # Ended through REST on the second node: every room closes.
        code, body = await Http(self, nodes[1]).call("POST", f"/api/v1/meetings/{mid}/end", {},
                                                     token=people["alice"][1])
        self.assertEqual(code, 200, body)
        for client in clients.values():
            code, _ = await client.closed
            self.assertEqual(code, 4003)


class FailureTests(ClusterCase):
    async def test_a_node_killed_is_cleaned_up_within_the_timeout(self) -> None:
        n1, n2, n3 = await self.cluster()
        http = Http(self, n1)
        people, mid = await self.meeting_of(http, "kill", ("alice", "carol"))
        alice_ws = await ws_connect(self, n1.http_port, mid, people["alice"][0], "peer-alice", people["alice"][1])
        carol_ws = await ws_connect(self, n3.http_port, mid, people["carol"][0], "peer-carol", people["carol"][1])
        alice_ws.send({"type": "join"})
        await next_message(alice_ws, "room-info")  # in the room first, or she would see the other in it, not join
        carol_ws.send({"type": "join"})
        await next_message(alice_ws, "user-joined")
        bob = await self.tcp_user(n1, "bob")
        dave = await self.tcp_user(n3, "dave")
        call_id = await self.active_call(bob, dave)

        killed_at = reactor.seconds()
        await n3.stop(signal.SIGKILL)
        end = await bob.expect(MsgType.CALL_END, timeout=SETTLE)
        self.assertEqual((end["call_id"], end["reason"]), (call_id, "disconnected"))
        left = await next_message(alice_ws, "user-left")
        self.assertEqual((left["from_peer_id"], left["payload"]["reason"]), ("peer-carol", "disconnected"))
        elapsed = reactor.seconds() - killed_at
        self.assertLess(elapsed, NODE_TIMEOUT + 2.5, "noticed within the timeout and a resync")
        await self.until_nodes_see([n1, n2], 2)
        # dave is offline now: text to him is stored, not lost.
        bob.text(dave.user_id, "are you there?")
        self.assertEqual((await bob.expect(MsgType.TEXT_ACK))["status"], STORED)

    async def test_a_node_stopped_gracefully_leaves_at_once(self) -> None:
        n1, n2 = await self.cluster(2)
        http = Http(self, n1)
        people, mid = await self.meeting_of(http, "drain", ("alice", "bob"))
        alice_ws = await ws_connect(self, n1.http_port, mid, people["alice"][0], "peer-alice", people["alice"][1])
        bob_ws = await ws_connect(self, n2.http_port, mid, people["bob"][0], "peer-bob", people["bob"][1])
        alice_ws.send({"type": "join"})
        await next_message(alice_ws, "room-info")  # in the room first, or she would see the other in it, not join
        bob_ws.send({"type": "join"})
        await next_message(alice_ws, "user-joined")
        carol = await self.tcp_user(n1, "carol")
        dave = await self.tcp_user(n2, "dave")
        await self.active_call(carol, dave)
        stopped_at = reactor.seconds()
        self.assertEqual(await n2.stop(), 0, n2.report())
        left = await next_message(alice_ws, "user-left")
        self.assertEqual(left["from_peer_id"], "peer-bob")
        self.assertEqual((await carol.expect(MsgType.CALL_END))["reason"], "shutdown")
        self.assertLess(reactor.seconds() - stopped_at, NODE_TIMEOUT, "told at once, not after the timeout")
        self.assertNotIn("stopped answering", n1.log_text())

    async def test_redis_restarted_mid_test(self) -> None:
        server = await PrivateRedis(self).start()
        n1, n2 = await self.cluster(2, redis=server.url)
        alice = await self.tcp_user(n1, "alice")
        bob = await self.tcp_user(n2, "bob")
        server.stop()  # without persistence: everything the cluster wrote is gone
        for node in (n1, n2):
            http = Http(self, node)

            async def degraded(http=http):
                code, body = await http.call("GET", "/health")
                return code == 200 and body["status"] == "degraded"

            await self.eventually(degraded, "the outage in /health")
        alice.text(bob.user_id, "during the outage")
        self.assertEqual((await alice.expect(MsgType.TEXT_ACK))["status"], STORED)  # kept, not lost
        await server.start()
        await self.until_nodes_see([n1, n2], 2)
        # bob's node published his session again and delivered what was stored meanwhile.
        self.assertEqual((await bob.expect(MsgType.TEXT, timeout=SETTLE))["text"], "during the outage")

        async def delivered():
            alice.text(bob.user_id, "after the outage")
            return (await alice.expect(MsgType.TEXT_ACK))["status"] == DELIVERED

        await self.eventually(delivered, "text across nodes again")
        self.assertEqual((await bob.expect(MsgType.TEXT))["text"], "after the outage")


class SfuRoomTests(ClusterCase, SfuDaemonCase):
    """The SFU's rooms across nodes, with sfu_peers.py's aiortc browsers (one SFU worker per node)."""

    timeout = 240

    async def sfu_cluster(self, count: int) -> list[Daemon]:
        stun = self.start_stun()
        return await self.cluster(count, extra=("--sfu-addresses", "127.0.0.1", "--stun-servers", stun,
                                                "--sfu-workers", "1"))

    def assertReceivesTheOther(self, client: dict, other: dict) -> None:
        """``client`` received ``other``'s audio and video (labelled with its signaling peer id), with frames."""
        streams = [(s["publisher"], s["kind"]) for s in client["streams"] if s["frames"] > 0]
        self.assertEqual(sorted(streams), [(other["signaling_id"], "audio"), (other["signaling_id"], "video")],
                         client)

    async def test_signaling_and_sfu_calls_on_different_nodes(self) -> None:
        n1, n2 = await self.sfu_cluster(2)
        result = await self.run_peers(n1, "cluster", nodes=[n1, n2])
        alice, bob = result["clients"]
        self.assertTrue(result["all_receiving"], result)
        self.assertReceivesTheOther(alice, bob)
        self.assertReceivesTheOther(bob, alice)
        # alice's first call reached n2, which serves the room; bob's reached n1, which forwarded it there.
        self.assertEqual((alice["peer_id"].rsplit("~", 1)[1], bob["peer_id"].rsplit("~", 1)[1]), ("n2", "n2"))
        for client in (alice, bob):
            self.assertEqual(set(client["candidates_sent"]), {200}, client)
            self.assertTrue(client["offers"], client)
            for offer in client["offers"]:
                self.assertEqual(offer["answer_status"], 200, client)
        for base, (status, peers) in result["peers"].items():  # either node answers for the room
            self.assertEqual((status, peers), (200, sorted([alice["peer_id"], bob["peer_id"]])), base)
        for leave in result["leaves"]:
            self.assertEqual(leave["status"], 200, leave)
        status, body, _ = result["peers_after_leave"]
        self.assertTrue(status == 404 or body["count"] == 0, result["peers_after_leave"])
        for base, stale in result["stale_peer"].items():
            for route, (status, message) in stale.items():
                self.assertEqual((status, PEER_NOT_FOUND in message), (404, True), (base, route))
        self.assertIn("SFU room", n2.log_text())
        self.assertNotIn("SFU room", n1.log_text())  # n1 served nothing itself
        for node in (n1, n2):
            await self.stop_clean(node)

    async def test_the_rooms_node_killed_the_browsers_reconnect_to_another(self) -> None:
        n1, n2, n3 = await self.sfu_cluster(3)
        result = await self.run_peers(n3, "failover", nodes=[n1, n2, n3])
        self.assertTrue(result["all_receiving"], result)
        alice, bob = result["before"]
        self.assertReceivesTheOther(alice, bob)
        self.assertReceivesTheOther(bob, alice)
        # n3 served the room with no member on it (their signaling was on n1 and n2).
        self.assertEqual({alice["peer_id"].rsplit("~", 1)[1], bob["peer_id"].rsplit("~", 1)[1]}, {"n3"})
        self.assertTrue(result["reconnected"], result)
        self.assertTrue(result["receiving_again"], result["after"])
        alice, bob = result["after"]
        for client in (alice, bob):
            gone_at, route, message = client["peer_gone"]
            self.assertIn(PEER_NOT_FOUND, message)
            self.assertGreater(gone_at, result["killed_at"])
            self.assertEqual(client["reconnect"]["status"], 200, client)
        # One new node serves the room for both, and they receive each other again within the detection
        # time (node-timeout and a resync), the browser's reconnection and a renegotiation.
        nodes = {alice["peer_id"].rsplit("~", 1)[1], bob["peer_id"].rsplit("~", 1)[1]}
        self.assertEqual(len(nodes), 1, nodes)
        self.assertIn(nodes.pop(), ("n1", "n2"))
        self.assertLess(result["receiving_again_at"] - result["killed_at"], NODE_TIMEOUT + 1 + 3 + 10, result)
        for node in (n1, n2):
            await self.stop_clean(node)
