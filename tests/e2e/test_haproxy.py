"""
The shipped HAProxy example (etc/haproxy/wecompany.cfg) in front of two
real nodes: the file itself, with only its addresses changed to the test's
free loopback ports, run by the real haproxy. The desktop protocol and the
site (REST and WebSocket) pass through it, the nodes see the clients' own
addresses (the PROXY protocol, believed from HAProxy alone: --trusted-proxies),
a stopped node is taken out, and a meeting's browsers (sfu_peers.py) get
their media through the SFU whichever node each of their calls reaches.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.defer import Deferred

from tests.e2e.client import Client
from tests.e2e.daemon import REPO_ROOT
from tests.e2e.test_cluster import ClusterCase
from tests.e2e.test_rest import Http
from tests.e2e.test_sfu import SfuDaemonCase
from tests.e2e.test_signaling import next_message, ws_connect
from tests.services import free_port
from wecompany.tcp.codec import MsgType

EXAMPLE = os.path.join(REPO_ROOT, "etc", "haproxy", "wecompany.cfg")
PROXIED = "haproxy:tcp:0:interface=127.0.0.1"
HAPROXY = "127.0.0.1"  # where HAProxy's connections to the nodes come from


def test_config(example: str, desktop_port: int, site_port: int, nodes) -> str:
    """The example with the test's addresses (and no syslog): nothing else changed."""
    text = example.replace("    log /dev/log local0\n", "").replace("maxconn 200000", "maxconn 4000")
    text = text.replace("    stats socket /run/haproxy/admin.sock mode 660 level admin\n", "")
    text = text.replace("bind :8888", f"bind 127.0.0.1:{desktop_port}").replace("bind :80\n", f"bind 127.0.0.1:{site_port}\n")
    text = text.replace("default-server check port 8000 ", "default-server check ")
    for i, node in enumerate(nodes, start=1):
        address = f"10.0.0.1{i}"
        text = text.replace(f"server node{i} {address}:8888", f"server node{i} 127.0.0.1:{node.tcp_port} "
                                                              f"port {node.http_port}")
        text = text.replace(f"server node{i} {address}:8000", f"server node{i} 127.0.0.1:{node.http_port}")
    if re.search(r"10\.0\.0\.1\d:", text):
        raise AssertionError("the example's node addresses changed: update test_config")
    return text


class _Output(ProcessProtocol):
    def __init__(self):
        self.output = b""

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived


class HAProxyTests(ClusterCase, SfuDaemonCase):
    timeout = 240

    async def haproxy(self, nodes) -> tuple[int, int]:
        binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
        if binary is None:
            from tests.services import _missing
            _missing(self, "haproxy is not installed")
        desktop, site = free_port(), free_port()
        path = os.path.abspath(self.mktemp())
        with open(EXAMPLE, encoding="utf-8") as f:
            config = test_config(f.read(), desktop, site, nodes)
        with open(path, "w", encoding="utf-8") as f:
            f.write(config)
        out = _Output()
        process = reactor.spawnProcess(out, binary, [binary, "-db", "-f", path], env=dict(os.environ))
        self.addCleanup(lambda: process.signalProcess(signal.SIGKILL) if process.pid else None)
        self.haproxy_output = out

        async def listening():
            try:
                code, _ = await Http(self, _At(site)).call("GET", "/health")
                return code == 200
            except Exception:
                return False

        await self.eventually(listening, lambda: f"haproxy to listen: {out.output.decode(errors='replace')}")
        return desktop, site

    async def test_two_nodes_behind_the_example_haproxy(self) -> None:
        nodes = await self.cluster(2, extra=("--port", PROXIED, "--http-port", PROXIED,
                                             "--trusted-proxies", HAPROXY), wait=False)
        for node in nodes:
            async def sees_two(node=node):
                health = await self.health(node)
                return health["cluster"]["nodes"] == ["n1", "n2"]

            await self.eventually(sees_two, f"two nodes in /health of {node.log_path}")
        desktop, site = await self.haproxy(nodes)

        # The desktop protocol: least connections puts alice and bob on different nodes.
        alice = await self.through(desktop, "alice")
        bob = await self.through(desktop, "bob")
        counts = [await self.tcp_connections(node) for node in nodes]
        self.assertEqual(counts, [1, 1])

        async def both_online():
            return (await self.health(nodes[0]))["online_users"] == 2

        await self.eventually(both_online, "both users online cluster-wide")
        alice.text(bob.user_id, "through haproxy")
        self.assertEqual((await bob.expect(MsgType.TEXT))["text"], "through haproxy")

        # The site, REST and WebSocket, through it.
        http = Http(self, _At(site))
        people, mid = await self.meeting_of(http, "proxied", ("carol", "dave"))
        clients = []
        for name, (uid, token) in people.items():
            client = await ws_connect(self, site, mid, uid, f"peer-{name}", token)
            client.send({"type": "join"})
            clients.append(client)
        info = await next_message(clients[0], "room-info")
        while info["payload"]["participant_count"] < 2:
            info = await next_message(clients[0], "room-info")
        # A meeting's signaling is balanced like the rest (its SFU room is served by one node, which the
        # others forward to: tests/e2e/test_cluster.py): one WebSocket on each node, both in one room.
        self.assertEqual([await self.rooms(node) for node in nodes], [1, 1])

        # The nodes see the client's own address, not HAProxy's.
        await self.get_from("127.0.0.2", site, "/health")
        await self.eventually(lambda: _succeed(any("127.0.0.2 GET /health" in n.log_text() for n in nodes)),
                              "a node to log the client's own address")

        # A node stopped is taken out: new clients go to the other.
        await nodes[1].stop()
        erin = await self.through(desktop, "erin")
        self.assertEqual(await self.tcp_connections(nodes[0]), 2)
        self.assertTrue(erin.token)

    async def test_the_nodes_see_the_clients_and_trust_only_the_proxy(self) -> None:
        """
        With --trusted-proxies naming HAProxy (127.0.0.1), the nodes see each
        client's own address on both ports; a peer that is not HAProxy is a
        plain client: its X-Forwarded-For is ignored and its PROXY header refused.
        """
        nodes = await self.cluster(2, extra=("--port", PROXIED, "--http-port", PROXIED,
                                             "--trusted-proxies", HAPROXY), wait=False)
        desktop, site = await self.haproxy(nodes)

        def logged(text: str):
            return lambda: _succeed(any(text in node.log_text() for node in nodes))

        # The desktop protocol through HAProxy, from 127.0.0.3.
        alice = await self.through(desktop, "alice", source="127.0.0.3")
        await self.eventually(logged(f"{alice.user_id} logged in from 127.0.0.3"),
                              "a node to log the TCP client's own address")
        # The site through HAProxy, from 127.0.0.2.
        await self.get_from("127.0.0.2", site, "/health")
        await self.eventually(logged("127.0.0.2 GET /health"), "a node to log the HTTP client's own address")

        node = nodes[0]
        # Straight to a node from 127.0.0.4, which is not HAProxy: a plain client, whose
        # X-Forwarded-For changes nothing.
        answer = await self.get_from("127.0.0.4", node.http_port, "/health",
                                     extra_headers="X-Forwarded-For: 198.51.100.9\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200"), answer)
        await self.eventually(lambda: _succeed("127.0.0.4 GET /health" in node.log_text()),
                              "the node to log the direct client's own address")
        self.assertNotIn("198.51.100.9", node.log_text())
        # A PROXY header from it is refused: closed, unanswered, whatever address it claims.
        header = b"PROXY TCP4 198.51.100.10 127.0.0.1 40000 %d\r\n" % node.http_port
        self.assertEqual(await self.get_from("127.0.0.4", node.http_port, "/health", header), b"")
        await self.eventually(lambda: _succeed("PROXY header from 127.0.0.4, which is not in --trusted-proxies"
                                               in node.log_text()), "the node to log the refusal")
        self.assertNotIn("198.51.100.10", node.log_text())
        # From HAProxy's own address, a proxy further out (say nginx at 127.0.0.1) is
        # trusted too: its X-Forwarded-For, walked from the right, names the client.
        header = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 %d\r\n" % node.http_port
        await self.get_from("127.0.0.1", node.http_port, "/health", header,
                            extra_headers="X-Forwarded-For: 192.0.2.66, 127.0.0.1\r\n")
        await self.eventually(lambda: _succeed("192.0.2.66 GET /health" in node.log_text()),
                              "the node to log the client a trusted proxy's X-Forwarded-For names")

    async def test_a_meetings_sfu_media_behind_the_example_haproxy(self) -> None:
        """The example balances SFU calls and signaling over both nodes: the room's node serves them all."""
        stun = self.start_stun()
        nodes = await self.cluster(2, extra=("--port", PROXIED, "--http-port", PROXIED, "--trusted-proxies",
                                             HAPROXY, "--sfu-addresses", "127.0.0.1", "--stun-servers", stun,
                                             "--sfu-workers", "1"), wait=False)
        for node in nodes:
            async def sees_two(node=node):
                return (await self.health(node))["cluster"]["nodes"] == ["n1", "n2"]

            await self.eventually(sees_two, f"two nodes in /health of {node.log_path}")
        _, site = await self.haproxy(nodes)
        result = await self.run_peers(nodes[0], "stats", nodes=[_At(site)])
        self.assertTrue(result["all_receiving"], json.dumps(result, indent=1))
        clients = {c["name"]: c for c in result["clients"]}
        served = {c["peer_id"].rsplit("~", 1)[1] for c in clients.values()}
        self.assertEqual(len(served), 1, clients)  # one node serves the room
        status, peers = result["peers"]
        self.assertEqual((status, peers["count"]), (200, 2), peers)
        self.assertEqual(result["stats"][1]["connected_peers"], 2, result["stats"])
        for key in ("other_token_poll", "other_token_candidate", "other_token_leave"):
            self.assertEqual(result[key][0], 403, (key, result[key]))
        for leave in result["leaves"]:
            self.assertEqual((leave["status"], leave["rest_leave"]), (200, 200), leave)
        forwarded = 0
        for node in nodes:
            body = await self.direct(node, "/metrics")
            found = re.search(rb'^wecompany_sfu_cluster_calls_total\{outcome="forwarded"\} (\S+)', body, re.M)
            forwarded += int(float(found.group(1)))
        self.assertGreater(forwarded, 0, "every call reached the room's node: nothing shows the forwarding")

    async def through(self, port: int, name: str, source: str | None = None) -> Client:
        client = Client(self, name)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5,
                                                 bindAddress=(source, 0) if source else None), client.protocol)
        self.addCleanup(client.abort)
        await client.register(name)
        return await self.settled(client)

    async def tcp_connections(self, node) -> int:
        body = await self.direct(node, "/metrics")
        return int(float(re.search(rb"^wecompany_tcp_connections (\S+)", body, re.M).group(1)))

    async def rooms(self, node) -> int:
        body = await self.direct(node, "/metrics")
        return int(float(re.search(rb"^wecompany_rooms (\S+)", body, re.M).group(1)))

    async def health(self, node) -> dict:
        answer = await self.direct(node, "/health")
        return json.loads(answer.partition(b"\r\n\r\n")[2])

    async def direct(self, node, path: str) -> bytes:
        """GET ``path`` from a node itself, as HAProxy would (a PROXY header first)."""
        header = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 %d\r\n" % node.http_port
        return await self.get_from("127.0.0.1", node.http_port, path, header)

    async def get_from(self, source: str, port: int, path: str, header: bytes = b"", extra_headers: str = "") -> bytes:
        """The whole answer to one GET, sent from ``source`` (a loopback address)."""
        done = Deferred()

        class Once(Protocol):
            data = b""

            def connectionMade(self):
                self.transport.write(header + f"GET {path} HTTP/1.0\r\nHost: x\r\n{extra_headers}\r\n"
                                     .encode())

            def dataReceived(self, data):
                self.data += data

            def connectionLost(self, reason):
                done.callback(self.data)

        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0)),
                              Once())
        done.addTimeout(10, reactor)
        return await done


class _At:
    """Something Http can be pointed at: a port that is not a daemon's (HAProxy's)."""

    def __init__(self, port: int) -> None:
        self.http_port = port

    def report(self) -> str:
        return f"(HAProxy at port {self.http_port})"


async def _succeed(value):
    return value
