"""
The limits on guessing and on auth requests, kept for every node in the
fake Redis: spreading the attempts over the nodes buys nothing.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from tests.mirror.clustering import ClusterCase
from wecompany.errors import InvalidCredentials, RateLimited

LIMITS = {"login_failures_per_address": 4, "login_failures_per_account": 3, "login_failure_window": 60.0}


class GuessTests(ClusterCase):
    def setUp(self):
        super().setUp()
        self.a, self.b = self.node("a", **LIMITS), self.node("b", **LIMITS)
        self.user("alice")

    def login(self, node, password: str, address: str = "198.51.100.7") -> Deferred:
        d = Deferred.fromCoroutine(node.domain.accounts.authenticate("alice", password, address))
        self.settle()
        return d

    def test_guesses_at_one_account_from_many_nodes_count_once(self):
        for node, address in ((self.a, "192.0.2.1"), (self.b, "192.0.2.2"), (self.a, "192.0.2.3")):
            self.failureResultOf(self.login(node, "wrong", address), InvalidCredentials)
        # The account's three failures were on two nodes; either refuses the next guess, even the right one.
        for node in (self.a, self.b):
            failure = self.failureResultOf(self.login(node, "Secret-pass1", "192.0.2.9"), RateLimited)
            self.assertIn("failed attempts", failure.value.message)

    def test_one_address_spreading_over_nodes(self):
        for i, node in enumerate((self.a, self.b, self.a, self.b)):
            self.user(f"user{i}")
            d = Deferred.fromCoroutine(node.domain.accounts.authenticate(f"user{i}", "wrong", "203.0.113.5"))
            self.settle()
            self.failureResultOf(d, InvalidCredentials)
        d = Deferred.fromCoroutine(self.b.domain.accounts.authenticate("alice", "Secret-pass1", "203.0.113.5"))
        self.failureResultOf(d, RateLimited)

    def test_attempts_under_way_on_another_node_hold_their_slots(self):
        attempts = [self.successResultOf(Deferred.fromCoroutine(node.domain.guard.attempt("192.0.2.1", "user:1")))
                    for node in (self.a, self.b, self.a)]
        d = Deferred.fromCoroutine(self.b.domain.guard.attempt("192.0.2.2", "user:1"))
        self.assertIn("under way", self.failureResultOf(d, RateLimited).value.message)
        attempts[0].abandoned()
        self.settle()
        self.successResultOf(Deferred.fromCoroutine(self.b.domain.guard.attempt("192.0.2.2", "user:1")))

    def test_a_success_forgives_the_account_everywhere(self):
        self.failureResultOf(self.login(self.a, "wrong"), InvalidCredentials)
        self.failureResultOf(self.login(self.b, "wrong"), InvalidCredentials)
        self.successResultOf(self.login(self.b, "Secret-pass1", "192.0.2.50"))
        for _ in range(2):
            self.failureResultOf(self.login(self.a, "wrong", "192.0.2.51"), InvalidCredentials)
        self.successResultOf(self.login(self.a, "Secret-pass1", "192.0.2.52"))  # 2 < 3 since the success

    def test_failures_are_forgotten_after_the_window_and_leave_no_keys(self):
        for node in (self.a, self.b, self.a):
            self.failureResultOf(self.login(node, "wrong", "192.0.2.1"), InvalidCredentials)
        self.settle(LIMITS["login_failure_window"] + 1)
        self.assertEqual([k for k in self.server.keys() if ":limit:" in k], [])
        self.successResultOf(self.login(self.b, "Secret-pass1", "192.0.2.1"))

    def test_without_redis_each_node_still_limits_what_it_sees(self):
        self.server.crash()
        self.settle()
        for _ in range(3):
            self.failureResultOf(self.login(self.a, "wrong", "192.0.2.1"), InvalidCredentials)
        self.failureResultOf(self.login(self.a, "Secret-pass1", "192.0.2.2"), RateLimited)
        self.successResultOf(self.login(self.b, "Secret-pass1", "192.0.2.2"))  # b saw none of them


class RateTests(ClusterCase):
    def setUp(self):
        super().setUp()
        options = {"auth_rate": 1.0, "auth_burst": 4.0}
        self.a, self.b = self.node("a", **options), self.node("b", **options)

    def hit(self, node, address: str = "192.0.2.1") -> Deferred:
        d = Deferred.fromCoroutine(node.domain.auth_limiter.hit(address))
        self.settle()
        return d

    def test_one_budget_for_every_node(self):
        for node in (self.a, self.b, self.a, self.b):
            self.successResultOf(self.hit(node))
        failure = self.failureResultOf(self.hit(self.a), RateLimited)
        self.assertAlmostEqual(failure.value.retry_after, 1.0, delta=0.01)
        self.successResultOf(self.hit(self.b, "192.0.2.2"))  # another address has its own
        self.clock.advance(1.0)
        self.successResultOf(self.hit(self.b))
        self.failureResultOf(self.hit(self.a), RateLimited)

    def test_the_budget_leaves_no_key_once_refilled(self):
        self.successResultOf(self.hit(self.a))
        self.settle(1.1)
        self.assertEqual([k for k in self.server.keys() if ":limit:" in k], [])
