"""
Each node's read caches follow the writes of the others, over the fake
Redis: what one node's store invalidates, the other nodes forget.

The cluster test harness shares one store among its nodes, which tells
every node's caches of every write (a perfect bus). These tests give each
node a cache the shared store does not tell, so that only the relay can.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from tests.mirror.clustering import ClusterCase
from wecompany.domain.meetingpages import MeetingPages
from wecompany.domain.usercache import UserCache
from wecompany.mirror.caches import MEETINGS, USERS, relays
from wecompany.mirror.cluster import all_channel


class RelayTests(ClusterCase):
    def setUp(self):
        super().setUp()
        self.a, self.b = self.node("a"), self.node("b")
        # b's own caches, told by nobody but the bus.
        self.cache, self.pages = UserCache(self.clock), MeetingPages(self.clock)
        self.b.node.caches = {USERS: self.cache, MEETINGS: self.pages}
        self.relay_users, self.relay_pages = relays(self.a.link, all_channel("wecompany:"), "a")
        self.uid = int(self.user("alice"))

    def cached_user(self):
        reads: list = []

        async def load(user_id):
            reads.append(user_id)
            return await self.store.get_user(user_id)

        d = Deferred.fromCoroutine(self.cache.user(self.uid, load))
        self.settle()
        self.successResultOf(d)
        return reads

    def test_a_users_change_on_one_node_is_forgotten_on_the_others(self):
        self.assertEqual(self.cached_user(), [self.uid])  # read once
        self.assertEqual(self.cached_user(), [])  # then from memory
        self.relay_users.invalidate(self.uid)  # a's store wrote the user
        self.settle()
        self.assertEqual(self.cached_user(), [self.uid])  # read again on b

    def test_a_node_forgets_everything_when_redis_is_back(self):
        self.cached_user()
        self.server.crash(lose_data=False)
        self.settle()
        self.relay_users.invalidate(self.uid)  # lost: nobody hears it while Redis is down
        self.server.restart()
        self.settle()
        self.assertEqual(self.cached_user(), [self.uid])

    def test_its_own_invalidations_come_back_and_are_ignored(self):
        mine_users = UserCache(self.clock)
        self.a.node.caches = {USERS: mine_users}
        calls: list = []
        mine_users.invalidate = calls.append  # what a's node would do with its own message
        self.relay_users.invalidate(self.uid)
        self.settle()
        self.assertEqual(calls, [])
