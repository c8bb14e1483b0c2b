"""
Several nodes in one process over the fake Redis, one store and one clock:
the cases of the cluster tests (tests/mirror/test_*.py).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient, make_domain, make_user
from tests.mirror.fakeredis import FakeLink, FakeRedisServer
from wecompany.domain import events as ev
from wecompany.mirror.caches import MEETINGS, USERS
from wecompany.mirror.cluster import ClusterNode
from wecompany.store.memory import MemoryStore

NODE_TIMEOUT = 15.0


def run(coro):
    return Deferred.fromCoroutine(coro)


class Node:
    def __init__(self, case, name: str, **options):
        self.name = name
        self.link = FakeLink(case.server)
        self.domain = make_domain(case, clock=case.clock, store=case.store, redis_link=self.link,
                                  node_id=name, node_timeout=NODE_TIMEOUT, id_node=len(case.nodes) + 1, **options)
        self.node = ClusterNode(self.domain.cluster, self.domain.chat, self.domain.calls, self.domain.rooms,
                                self.domain.files, caches={USERS: self.domain.user_cache,
                                                           MEETINGS: self.domain.meeting_pages},
                                sfu=self.domain.sfu_router)
        self.node.start()

    @property
    def chat(self):
        return self.domain.chat


class ClusterCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = FakeRedisServer(self.clock)
        self.store = MemoryStore(user_caches=[], meeting_caches=[])  # the nodes add their caches
        self.store.start()
        self.nodes: list[Node] = []
        self.users: dict[str, int] = {}

    def node(self, name: str, **options) -> Node:
        node = Node(self, name, **options)
        self.nodes.append(node)
        self.settle()
        return node

    def settle(self, seconds: float = 0.0) -> None:
        """Let every message in flight arrive (and ``seconds`` pass)."""
        for _ in range(1000):
            due = [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]
            if not due:
                break
            self.clock.advance(0)
        # Time passes in steps of at most half a second, as it would: every
        # loop runs when due, not all at once at the end of a jump.
        while seconds > 0:
            step = min(0.5, seconds)
            self.clock.advance(step)
            seconds -= step
            self.settle()

    def user(self, name: str) -> str:
        if name not in self.users:
            self.users[name] = make_user(self.nodes[0].domain, name)
        return str(self.users[name])

    def login(self, node: Node, name: str, kind: str = "tcp") -> FakeClient:
        client = FakeClient(self.user(name), name, kind=kind)
        node.chat.open_session(client)
        self.settle()
        return client

    def logout(self, node: Node, client: FakeClient) -> None:
        node.chat.close_session(client)
        self.settle()

    def call(self, node, caller, callee: str):
        d = run(node.chat.place_call(caller, callee, True))
        self.settle()
        return self.successResultOf(d)

    def send(self, node: Node, client, to: str, text: str):
        d = run(node.chat.send_text(client, to, text))
        self.settle()
        return self.successResultOf(d)

    def texts(self, client) -> list[str]:
        return [e.text for e in client.take() if isinstance(e, ev.TextMessage)]

    def watch(self, watcher: str, watched: str) -> None:
        self.store.add_contact(int(self.user(watcher)), int(self.user(watched)), self.clock.seconds())


