"""UserCache: read through, forgotten on invalidate, bounded, never filled by a read older than an invalidation."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.interface import Method

from wecompany.domain.usercache import UserCache
from wecompany.store.interface import IMeetingStore, IStore
from wecompany.store.records import ProfileRecord, UserRecord


def user(user_id: int, version: int = 0) -> UserRecord:
    return UserRecord(user_id, f"user{user_id}", None, "hash", "user", "active", 1.0, token_version=version)


class Rows:
    """A store's get_user/get_profile over a dict, counting reads."""

    def __init__(self) -> None:
        self.users = {}
        self.reads = 0

    def get_user(self, user_id):
        self.reads += 1
        return succeed(self.users.get(user_id))

    def get_profile(self, user_id):
        self.reads += 1
        return succeed(ProfileRecord(user_id, "nick") if user_id in self.users else None)


class UserCacheTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.rows = Rows()
        self.cache = UserCache(self.clock, max_users=3, max_age=60.0)

    def read(self, user_id):
        return self.successResultOf(Deferred.fromCoroutine(self.cache.user(user_id, self.rows.get_user)))

    def read_profile(self, user_id):
        return self.successResultOf(Deferred.fromCoroutine(self.cache.profile(user_id, self.rows.get_profile)))

    def test_reads_through_once(self):
        self.rows.users[1] = user(1)
        self.assertEqual(self.read(1), user(1))
        self.assertEqual(self.read(1), user(1))
        self.assertEqual(self.read_profile(1), ProfileRecord(1, "nick"))
        self.assertEqual(self.read_profile(1), ProfileRecord(1, "nick"))
        self.assertEqual((self.rows.reads, self.cache.hits, self.cache.misses), (2, 2, 2))

    def test_invalidate_forgets_the_user_and_profile(self):
        self.rows.users[1] = user(1)
        self.rows.users[2] = user(2)
        for user_id in (1, 2):
            self.read(user_id)
            self.read_profile(user_id)
        self.rows.users[1] = user(1, version=1)
        self.cache.invalidate(1)
        self.assertEqual(self.read(1).token_version, 1)
        self.read_profile(1)
        self.assertEqual(self.rows.reads, 6)
        self.read(2)  # not touched by user 1's invalidation
        self.read_profile(2)
        self.assertEqual(self.rows.reads, 6)

    def test_invalidate_all(self):
        self.rows.users[1] = user(1)
        self.read(1)
        self.cache.invalidate_all()
        self.assertEqual(len(self.cache), 0)
        self.read(1)
        self.assertEqual(self.rows.reads, 2)

    def test_an_unknown_user_is_not_remembered(self):
        self.assertIsNone(self.read(5))
        self.rows.users[5] = user(5)
        self.assertEqual(self.read(5), user(5))

    def test_a_read_older_than_an_invalidation_does_not_fill(self):
        # The read saw the row before a write that was acknowledged while it was under way.
        pending = Deferred()
        d = Deferred.fromCoroutine(self.cache.user(1, lambda user_id: pending))
        self.cache.invalidate(1)
        pending.callback(user(1, version=0))
        self.assertEqual(self.successResultOf(d), user(1, version=0))
        self.rows.users[1] = user(1, version=1)
        self.assertEqual(self.read(1).token_version, 1)

    def test_an_invalidation_of_another_user_also_drops_an_old_read(self):
        # Simpler than tracking per user, and safe: at worst one more read.
        pending = Deferred()
        d = Deferred.fromCoroutine(self.cache.user(1, lambda user_id: pending))
        self.cache.invalidate(2)
        pending.callback(user(1))
        self.successResultOf(d)
        self.assertEqual(len(self.cache), 0)

    def test_bounded_least_recently_used_go_first(self):
        for user_id in range(1, 6):
            self.rows.users[user_id] = user(user_id)
        for user_id in (1, 2, 3):
            self.read(user_id)
        self.read(1)  # used: 2 is now the oldest
        self.read(4)
        self.read(5)
        self.assertEqual(len(self.cache), 3)
        reads = self.rows.reads
        self.read(1)
        self.read(4)
        self.read(5)
        self.assertEqual(self.rows.reads, reads)
        self.read(2)
        self.assertEqual(self.rows.reads, reads + 1)
        # Profiles have a bound of their own.
        for user_id in range(1, 6):
            self.read_profile(user_id)
        self.assertEqual(len(self.cache), 6)

    def test_nothing_is_trusted_longer_than_max_age(self):
        self.rows.users[1] = user(1)
        self.read(1)
        self.clock.advance(59)
        self.read(1)
        self.assertEqual(self.rows.reads, 1)
        self.clock.advance(1)
        self.read(1)
        self.assertEqual(self.rows.reads, 2)

    def test_limits_are_checked(self):
        self.assertRaises(ValueError, UserCache, self.clock, max_users=0)


# Every store method, by whether it writes a user's row or profile, or a
# meeting's row. The store must invalidate the user caches for the first set
# and the meeting caches for the second (tests/store/behaviour.py checks that
# it does); a new store method must be put in one of the three.
USER_WRITES = {"create_user", "update_user", "set_password_hash", "record_login", "revoke_all_tokens",
               "update_profile"}
MEETING_WRITES = {"create_meeting", "update_meeting", "delete_meeting"}
NEITHER = {
    "start", "stop", "ping", "get_user", "get_user_by_username", "get_user_by_login", "get_profile",
    "list_users_by_ids", "get_profiles", "list_users", "add_contact", "remove_contact", "list_contacts",
    "watchers_of", "store_offline_message", "fetch_offline_messages", "delete_offline_messages", "create_file",
    "complete_file", "delete_file", "get_file", "undelivered_files_for", "delete_incomplete_files",
    "mark_file_delivered", "get_meeting", "get_meeting_by_room", "list_meetings", "join_meeting",
    "add_participant", "get_participant", "list_participants", "update_participant", "remove_participant",
    "add_meeting_message", "list_meeting_messages", "add_refresh_token", "get_refresh_token",
    "rotate_refresh_token", "revoke_refresh_token", "add_password_reset", "consume_password_reset",
}


class StoreMethodsTests(SynchronousTestCase):
    def test_every_store_method_is_known_to_write_users_meetings_or_neither(self):
        methods = {name for interface in (IStore, IMeetingStore) for name in interface.names()
                   if isinstance(interface[name], Method)}
        unknown = methods - USER_WRITES - MEETING_WRITES - NEITHER
        self.assertEqual(unknown, set(), "does this method write users, profiles or meetings? If so, it must "
                                         "invalidate the store's user_caches or meeting_caches")
        self.assertEqual((USER_WRITES | MEETING_WRITES | NEITHER) - methods, set())
