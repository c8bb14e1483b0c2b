"""
The limits on guessing passwords, one set for every transport: per client
address and per account (or meeting), slots taken before the hash, and no
success that forgives anyone else's failures.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain, make_user
from wecompany.domain.passwords import PasswordHasher
from wecompany.domain.ratelimit import FailureCounter, LoginGuard
from wecompany.errors import InvalidCredentials, RateLimited, Unavailable

GOOD = "Secret-pass1"
WRONG = "Wrong-pass1"


def run(coro):
    return Deferred.fromCoroutine(coro)


class FailureCounterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.counter = FailureCounter(self.clock, max_failures=3, window=60, max_keys=2)

    def test_failures_count_until_the_window_passes(self):
        for _ in range(3):
            self.counter.reserve("a")
            self.counter.settle("a", failed=True)
        error = self.assertRaises(RateLimited, self.counter.check, "a")
        self.assertEqual(error.retry_after, 60)
        self.clock.advance(30)
        self.assertEqual(self.assertRaises(RateLimited, self.counter.reserve, "a").retry_after, 30)
        self.clock.advance(30)
        self.counter.reserve("a")  # the window has passed

    def test_attempts_under_way_hold_their_slot(self):
        for _ in range(3):
            self.counter.reserve("a")
        self.assertRaises(RateLimited, self.counter.reserve, "a")
        self.counter.settle("a", failed=False)  # one ended well: its slot is free again
        self.counter.reserve("a")

    def test_forgive_clears_failures_not_attempts(self):
        self.counter.reserve("a")
        self.counter.settle("a", failed=True)
        self.counter.reserve("a")
        self.counter.reserve("a")
        self.counter.forgive("a")
        self.counter.reserve("a")  # two under way, one new: three
        self.assertRaises(RateLimited, self.counter.reserve, "a")

    def test_memory_is_bounded(self):
        for key in "bcdef":
            self.counter.reserve(key)
            self.counter.settle(key, failed=True)
        self.assertLessEqual(len(self.counter._entries), 2)
        for key in "ef":  # idle keys are forgotten as soon as nothing is counted
            self.counter.forgive(key)
        self.assertEqual(len(self.counter._entries), 0)


class GatedRunner:
    """A run_in_thread whose work waits until the test lets it finish: hashes in parallel."""

    def __init__(self):
        self.waiting: list[tuple[Deferred, object, tuple]] = []
        self.calls = 0

    def __call__(self, f, *args):
        self.calls += 1
        d = Deferred()
        self.waiting.append((d, f, args))
        return d

    def finish_all(self):
        while self.waiting:
            d, f, args = self.waiting.pop(0)
            d.callback(f(*args))


class LoginGuardTests(SynchronousTestCase):
    def setUp(self):
        self.d = make_domain(self)
        self.accounts = self.d.accounts
        self.alice = make_user(self.d, "alice")
        make_user(self.d, "mallory")

    def login(self, name, password, address="10.6.6.6"):
        return run(self.accounts.authenticate(name, password, address))

    def test_a_login_to_ones_own_account_buys_no_guesses_at_another(self):
        # Finding 3: four guesses at the victim, one login of one's own, again and again.
        checked = 0
        for _ in range(6):
            for _ in range(4):
                failure = self.failureResultOf(self.login("alice", WRONG), InvalidCredentials, RateLimited)
                checked += failure.check(InvalidCredentials) is not None
            self.successResultOf(self.login("mallory", GOOD))
        self.assertEqual(checked, 5)  # the victim's limit, not 24
        self.d.clock.advance(60)
        self.successResultOf(self.login("alice", GOOD))  # the owner, once the window has passed

    def test_the_address_limit_holds_across_accounts(self):
        for i in range(12):
            make_user(self.d, f"user{i}")
        answers = [self.login(f"user{i % 12}", WRONG) for i in range(30)]
        refused = [a for a in answers if self.failureResultOf(a, InvalidCredentials, RateLimited).check(RateLimited)]
        self.assertEqual(len(refused), 10)  # 20 wrong passwords per address per window
        self.failureResultOf(self.login("mallory", GOOD), RateLimited)  # even a right one, from there
        self.successResultOf(self.login("mallory", GOOD, "10.7.7.7"))  # another address is not affected

    def test_parallel_attempts_take_their_slots_before_hashing(self):
        runner = GatedRunner()
        self.accounts.hasher = PasswordHasher(runner, time_cost=1, memory_cost=8, parallelism=1)
        answers = [self.login("alice", WRONG) for _ in range(40)]  # all at once, from a new address
        self.assertEqual(runner.calls, 5)  # only five hashes were started
        self.assertEqual(sum(1 for a in answers if a.called), 35)  # the rest refused at once
        runner.finish_all()
        outcomes = [self.failureResultOf(a, InvalidCredentials, RateLimited).type for a in answers]
        self.assertEqual((outcomes.count(InvalidCredentials), outcomes.count(RateLimited)), (5, 35))

    def test_unknown_users_cost_a_hash_and_count(self):
        runner = GatedRunner()
        self.accounts.hasher = PasswordHasher(runner, time_cost=1, memory_cost=8, parallelism=1)
        for name in ("nobody", "alice"):
            d = self.login(name, WRONG)
            self.assertEqual(len(runner.waiting), 1)  # one verify each, the same work
            runner.finish_all()
            self.failureResultOf(d, InvalidCredentials)
        for _ in range(4):
            d = self.login("NoBody", WRONG)
            runner.finish_all()
            self.failureResultOf(d, InvalidCredentials)
        self.failureResultOf(self.login("nobody", GOOD), RateLimited)  # an unknown name has its limit too

    def test_an_undecided_attempt_counts_nothing(self):
        self.accounts.hasher = PasswordHasher(GatedRunner(), time_cost=1, memory_cost=8, parallelism=1,
                                              max_pending=0)
        for _ in range(10):
            self.failureResultOf(self.login("alice", WRONG), Unavailable)  # the hash queue is full
        self.accounts.hasher = self.d.hasher
        self.successResultOf(self.login("alice", GOOD))

    def test_the_owners_success_forgives_the_account_only(self):
        for _ in range(4):
            self.failureResultOf(self.login("alice", WRONG, "10.1.1.1"), InvalidCredentials)
        self.successResultOf(self.login("alice", GOOD, "10.1.1.1"))
        for _ in range(5):  # the account has its five again...
            self.failureResultOf(self.login("alice", WRONG, "10.2.2.2"), InvalidCredentials)
        for i in range(15):  # ... while 10.1.1.1 keeps its four failures: 16 more, not 20
            make_user(self.d, f"other{i}")
        answers = [self.login(f"other{i}", WRONG, "10.1.1.1") for i in range(15)]
        answers += [self.login("mallory", WRONG, "10.1.1.1") for _ in range(2)]
        kinds = [self.failureResultOf(a, InvalidCredentials, RateLimited).type for a in answers]
        self.assertEqual(kinds.count(InvalidCredentials), 16)

    def test_guard_alone(self):
        clock = Clock()
        guard = LoginGuard(clock, per_address=3, per_target=2, window=10)

        def attempt(address, target):
            return self.successResultOf(Deferred.fromCoroutine(guard.attempt(address, target)))

        def refused(address, target):
            self.failureResultOf(Deferred.fromCoroutine(guard.attempt(address, target)), RateLimited)

        attempt("a", "t1").failed()
        attempt("a", "t1").failed()
        refused("b", "t1")  # the target's limit, from anywhere
        under_way = attempt("a", "t2")
        refused("a", "t3")  # two failures and one under way
        under_way.succeeded()
        under_way.failed()  # only the first ending counts
        attempt("a", "t3").abandoned()
        self.successResultOf(Deferred.fromCoroutine(guard.check_address("a")))
        clock.advance(10)
        attempt("b", "t1").succeeded()
