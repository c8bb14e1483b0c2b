"""Registration, password and token login, password policy, tokens, rate limits, ids."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain, synchronous_runner
from wecompany.domain.ids import IdGenerator
from wecompany.domain.passwords import PasswordHasher, PasswordPolicy, check_email, check_username
from wecompany.domain.ratelimit import TokenBucket
from wecompany.domain.tokens import TokenIssuer
from wecompany.errors import (
    EmailTaken, Forbidden, InvalidCredentials, InvalidInput, RegistrationClosed, Unauthenticated, UsernameTaken,
)

GOOD = "Secret-pass1"


def run(coro):
    return Deferred.fromCoroutine(coro)


class AccountsTests(SynchronousTestCase):
    def setUp(self):
        self.d = make_domain(self)
        self.accounts = self.d.accounts

    def test_register_hashes_with_argon2id(self):
        user = self.successResultOf(run(self.accounts.register("alice", GOOD, "a@example.com")))
        self.assertTrue(user.password_hash.startswith("$argon2id$"))
        self.assertNotIn(GOOD, user.password_hash)

    def test_register_conflicts(self):
        self.successResultOf(run(self.accounts.register("alice", GOOD, "a@example.com")))
        f = self.failureResultOf(run(self.accounts.register("ALICE", GOOD)), UsernameTaken)
        self.assertEqual((f.value.code, f.value.error_code), (400, 1001))
        f = self.failureResultOf(run(self.accounts.register("alice2", GOOD, "A@example.com")), EmailTaken)
        self.assertEqual((f.value.code, f.value.error_code), (400, 1002))

    def test_login_by_name_or_email(self):
        user = self.successResultOf(run(self.accounts.register("alice", GOOD, "a@example.com")))
        for login in ("alice", "Alice", "a@example.com"):
            self.assertEqual(self.successResultOf(run(self.accounts.authenticate(login, GOOD, "10.0.0.1"))).id, user.id)
        self.assertEqual(self.d.store.get_user(user.id).result.last_login, self.d.clock.seconds())

    def test_login_failures(self):
        self.successResultOf(run(self.accounts.register("alice", GOOD)))
        f = self.failureResultOf(run(self.accounts.authenticate("alice", "Wrong-pass1", "10.0.0.1")),
                                 InvalidCredentials)
        self.assertEqual((f.value.error_code, f.value.message), (1004, "invalid password"))
        f = self.failureResultOf(run(self.accounts.authenticate("nobody", GOOD, "10.0.0.1")), InvalidCredentials)
        self.assertEqual(f.value.error_code, 1003)

    def test_banned_user(self):
        user = self.successResultOf(run(self.accounts.register("alice", GOOD)))
        self.d.store._users[user.id] = __import__("attrs").evolve(self.d.store._users[user.id], status="banned")
        self.failureResultOf(run(self.accounts.authenticate("alice", GOOD, "10.0.0.1")), Forbidden)
        token = self.d.tokens.issue(user.id, "alice")
        self.failureResultOf(run(self.accounts.authenticate_token(token)), Forbidden)

    def test_closed_registration_refuses_clients_but_not_operators(self):
        closed = make_domain(self, registration="closed")
        f = self.failureResultOf(run(closed.accounts.register("alice", GOOD)), RegistrationClosed)
        self.assertEqual(f.value.code, 403)
        self.assertIn("registration is closed", f.value.message)
        self.assertIsNone(closed.store.get_user_by_username("alice").result)
        admin = self.successResultOf(run(closed.accounts.create("alice", GOOD, "a@example.com", role="admin")))
        self.assertEqual((admin.username, admin.role, admin.email), ("alice", "admin", "a@example.com"))
        self.assertTrue(admin.password_hash.startswith("$argon2id$"))
        # An operator's account obeys the same rules as a registration.
        self.failureResultOf(run(closed.accounts.create("ALICE", GOOD)), UsernameTaken)
        self.failureResultOf(run(closed.accounts.create("bobby", "short")), InvalidInput)

    def test_operator_sets_a_password(self):
        user = self.successResultOf(run(self.accounts.register("alice", GOOD)))
        token = self.accounts.issue_token(user)
        self.successResultOf(run(self.d.credentials.set_password(user, "Another-pass2")))
        self.successResultOf(run(self.accounts.authenticate("alice", "Another-pass2", "10.0.0.1")))
        self.failureResultOf(run(self.accounts.authenticate_token(token)), Unauthenticated)  # signed out
        self.failureResultOf(run(self.d.credentials.set_password(user, "weak")), InvalidInput)

    def test_token_roundtrip(self):
        user = self.successResultOf(run(self.accounts.register("alice", GOOD)))
        token = self.accounts.issue_token(user)
        self.assertEqual(self.successResultOf(run(self.accounts.authenticate_token(token))).id, user.id)


class PolicyTests(SynchronousTestCase):
    def test_password_rules(self):
        p = PasswordPolicy()
        p.check(GOOD)
        for bad, text in [("Ab1!", "at least 8"), ("A" * 120 + "a1!aaaaaa", "at most 128"),
                          ("abcdefgh1", "at least 3"), ("Qwerty123!", "common"),
                          ("xX12345678", "common")]:
            e = self.assertRaises(InvalidInput, p.check, bad)
            self.assertIn(text, e.message)
        self.assertRaises(InvalidInput, p.check, "Alice-Secret1", "alice")

    def test_usernames_and_emails(self):
        check_username("a_b_1")
        for bad in ("ab", "a" * 21, "has space", "名字名字", "a-b"):
            self.assertRaises(InvalidInput, check_username, bad)
        check_email("x.y+z@mail.example.com")
        for bad in ("x", "x@", "@y.z", "x@y", "x y@z.com"):
            self.assertRaises(InvalidInput, check_email, bad)

    def test_verify_never_raises(self):
        h = PasswordHasher(synchronous_runner, time_cost=1, memory_cost=8, parallelism=1)
        good = self.successResultOf(run(h.hash(GOOD)))
        self.assertTrue(self.successResultOf(run(h.verify(good, GOOD))))
        self.assertFalse(self.successResultOf(run(h.verify(good, "nope"))))
        self.assertFalse(self.successResultOf(run(h.verify("not a hash", GOOD))))
        self.assertFalse(self.successResultOf(run(h.verify(None, GOOD))))


class TokenTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tokens = TokenIssuer(b"s" * 32, self.clock, ttl=3600)

    def test_claims(self):
        claims = self.tokens.verify(self.tokens.issue(7, "alice", "a@example.com"))
        self.assertEqual((claims["user_id"], claims["sub"], claims["iss"], claims["username"]),
                         (7, "7", "wecompany", "alice"))
        self.assertEqual(claims["exp"] - claims["iat"], 3600)

    def test_expiry_and_forgery(self):
        token = self.tokens.issue(7, "alice")
        self.clock.advance(3600 + 29)
        self.tokens.verify(token)  # within leeway
        self.clock.advance(2)
        self.assertEqual(self.assertRaises(Unauthenticated, self.tokens.verify, token).message, "token expired")
        other = TokenIssuer(b"t" * 32, self.clock)
        self.assertRaises(Unauthenticated, self.tokens.verify, other.issue(7, "alice"))
        self.assertRaises(Unauthenticated, self.tokens.verify, "a.b.c")
        self.assertRaises(Unauthenticated, self.tokens.verify, "")

    def test_none_algorithm_refused(self):
        import jwt
        forged = jwt.encode({"user_id": 1, "sub": "1", "iss": "wecompany", "iat": 0, "nbf": 0,
                             "exp": 2_000_000_000}, None, algorithm="none")
        self.assertRaises(Unauthenticated, self.tokens.verify, forged)

    def test_short_secret_refused(self):
        self.assertRaises(ValueError, TokenIssuer, b"short", self.clock)

    def test_a_token_verified_before_still_expires(self):
        token = self.tokens.issue(7, "alice")
        self.tokens.verify(token)  # remembered now
        self.clock.advance(3600 + 31)
        self.assertEqual(self.assertRaises(Unauthenticated, self.tokens.verify, token).message, "token expired")
        early = TokenIssuer(b"s" * 32, Clock()).issue(8, "bob")  # issued at 0, not valid before then
        # A token from the future is refused, whether seen before or not.
        future = TokenIssuer(b"s" * 32, _At(self.clock.seconds() + 600)).issue(9, "carol")
        for _ in range(2):
            self.assertEqual(self.assertRaises(Unauthenticated, self.tokens.verify, future).message,
                             "token not yet valid")
        self.assertEqual(self.assertRaises(Unauthenticated, self.tokens.verify, early).message, "token expired")

    def test_verified_tokens_are_remembered_bounded_and_refused_ones_not_at_all(self):
        tokens = TokenIssuer(b"s" * 32, self.clock, max_verified=3)
        issued = [tokens.issue(i, f"user{i}") for i in range(5)]
        for token in issued:
            tokens.verify(token)
        self.assertEqual(list(tokens._verified), issued[2:])
        tokens.verify(issued[2])  # used: now the newest
        self.assertEqual(list(tokens._verified), [issued[3], issued[4], issued[2]])
        forged = issued[0][:-2] + ("AA" if not issued[0].endswith("AA") else "BB")
        self.assertRaises(Unauthenticated, tokens.verify, forged)
        self.assertRaises(Unauthenticated, tokens.verify, "a.b.c")
        self.assertNotIn(forged, tokens._verified)
        self.assertEqual(len(tokens._verified), 3)

    def test_callers_get_claims_of_their_own(self):
        token = self.tokens.issue(7, "alice")
        self.tokens.verify(token)["user_id"] = 8
        self.assertEqual(self.tokens.verify(token)["user_id"], 7)


class _At:
    def __init__(self, now):
        self.now = now

    def seconds(self):
        return self.now


class RateLimitTests(SynchronousTestCase):
    def test_token_bucket(self):
        clock = Clock()
        b = TokenBucket(clock, rate=10, burst=5)
        self.assertEqual([b.allow() for _ in range(6)], [True] * 5 + [False])
        clock.advance(0.1)
        self.assertEqual([b.allow(), b.allow()], [True, False])


class IdTests(SynchronousTestCase):
    def test_increasing_even_when_clock_stands_still(self):
        clock = Clock()
        clock.advance(1_700_000_000)
        gen = IdGenerator(clock, node=3)
        ids = [gen.next_id() for _ in range(10000)]
        self.assertEqual(ids, sorted(set(ids)))
        self.assertTrue(all(0 < i < 2 ** 63 for i in ids))
        clock.advance(-5)  # clock goes backwards
        self.assertGreater(gen.next_id(), ids[-1])


class FloodGuardTests(SynchronousTestCase):
    def test_allow_warn_drop_close(self):
        from wecompany.domain.ratelimit import ALLOW, CLOSE, DROP, WARN, FloodGuard
        clock = Clock()
        guard = FloodGuard(clock, rate=10, burst=3)
        self.assertEqual([guard.check() for _ in range(3)], [ALLOW] * 3)
        # The drop budget holds a burst of 3 too: the fourth drop closes.
        self.assertEqual([guard.check() for _ in range(4)], [WARN, DROP, DROP, CLOSE])
        clock.advance(1.0)  # both buckets refill; a new warning is due
        self.assertEqual([guard.check() for _ in range(3)], [ALLOW] * 3)
        self.assertEqual(guard.check(), WARN)


class HashQueueTests(SynchronousTestCase):
    def test_pending_hashes_are_bounded(self):
        from twisted.internet.defer import Deferred as D

        from wecompany.errors import Unavailable
        gates = []

        def gated(f, *args):
            d = D()
            gates.append((d, f, args))
            return d
        h = PasswordHasher(gated, time_cost=1, memory_cost=8, parallelism=1, max_pending=2)
        first, second = run(h.hash(GOOD)), run(h.hash(GOOD))
        self.failureResultOf(run(h.hash(GOOD)), Unavailable)
        self.assertEqual(h.pending, 2)
        d, f, args = gates.pop(0)
        d.callback(f(*args))
        self.assertTrue(self.successResultOf(first).startswith("$argon2id$"))
        self.assertEqual(h.pending, 1)
        third = run(h.hash(GOOD))  # room again
        self.assertNoResult(third)
        for d, f, args in gates:
            d.callback(f(*args))
        self.successResultOf(second), self.successResultOf(third)
        self.assertEqual(h.pending, 0)
