"""
The behaviour every IStore gives, written once.

:class:`StoreBehaviour` is mixed into one trial TestCase per implementation
(``test_sqlite``, ``test_memory``), which supplies :meth:`make_store` and
:meth:`count_rows`. Whatever the implementation, the answers must be the same.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from wecompany.domain.usercache import UserCache

from wecompany.errors import (
    Conflict, EmailTaken, InvalidInput, MeetingFull, MeetingNotFound, NotFound, ParticipantRemoved, QuotaExceeded,
    Unavailable, UsernameTaken,
)
from wecompany.store.interface import IMediaStore, IMeetingStore, IStore
from wecompany.store.records import (
    FileRecord,
    MediaRecord,
    MeetingMessageRecord,
    MeetingRecord,
    ParticipantRecord,
    ProfileRecord,
    RefreshTokenRecord,
    StoredMessage,
    UserRecord,
)

NOW = 1_700_000_000.25
BIG_ID = 2**62 + 5  # a 63-bit message id
HOUR = 3600.0
SETTINGS = {
    "enable_video": True, "enable_audio": True, "enable_screen_share": False, "enable_chat": True,
    "enable_recording": False, "enable_ai": False, "mute_on_join": True, "require_approval": False,
}


@attrs.define
class _Recorder:
    """A user cache that only records what it is told."""

    told: list

    def invalidate(self, user_id):
        self.told.append(user_id)


class StoreBehaviour:
    """Tests for an IStore; ``self.store`` is started in setUp and stopped after."""

    store: Any

    def make_store(self, user_caches=(), meeting_caches=()) -> Any:
        """A new, not yet started store, telling ``user_caches`` and ``meeting_caches`` of its writes."""
        raise NotImplementedError

    async def count_rows(self, table: str) -> int:
        """How many rows the SQL table ``table`` ("users", "participants"...) of ``self.store`` holds."""
        raise NotImplementedError

    def setUp(self):
        self.room_numbers = itertools.count(1)
        self.store = self.make_store()
        self.addCleanup(self.store.stop)
        return self.store.start()

    async def assertFails(self, deferred, error_type):
        try:
            await deferred
        except error_type as error:
            return error
        self.fail(f"{error_type.__name__} not raised")

    async def make_user(self, username, email=None, nickname=None, now=NOW):
        return await self.store.create_user(username, f"hash-{username}", email, nickname, now)

    # -- life cycle -----------------------------------------------------------
    async def make_meeting(self, creator, title="Stand-up", start_time=NOW + HOUR, max_participants=10,
                           description="", **changes):
        """A meeting of ``creator`` (a UserRecord); ``changes`` are applied after creation."""
        meeting, _ = await self.store.create_meeting(
            title, description, creator.id, start_time, None, max_participants, "video", None, SETTINGS,
            f"room-{next(self.room_numbers)}", NOW,
        )
        if changes:
            meeting = await self.store.update_meeting(meeting.id, changes, NOW)
        return meeting

    async def test_provides_interface(self):
        self.assertTrue(verifyObject(IStore, self.store))
        self.assertTrue(verifyObject(IMeetingStore, self.store))
        self.assertTrue(verifyObject(IMediaStore, self.store))
        self.assertIs(await self.store.ping(), True)

    async def test_stopped_store_is_unavailable(self):
        await self.store.stop()
        error = await self.assertFails(self.store.get_user(1), Unavailable)
        self.assertEqual(error.message, "store is not running")
        await self.assertFails(self.store.delete_offline_messages([]), Unavailable)
        await self.assertFails(self.store.list_users_by_ids([]), Unavailable)
        await self.assertFails(self.store.get_profiles([]), Unavailable)
        await self.assertFails(self.store.list_meetings(0, 10), Unavailable)
        await self.assertFails(self.store.rotate_refresh_token("a", "b", NOW, NOW), Unavailable)
        # Stopping again is harmless.
        self.assertIsNone(await self.store.stop())

    # -- accounts -------------------------------------------------------------
    async def test_create_and_get_user(self):
        alice = await self.store.create_user("Alice", "argon2-hash", "alice@example.com", "Al", NOW)
        self.assertEqual(
            alice,
            UserRecord(
                id=alice.id, username="Alice", email="alice@example.com",
                password_hash="argon2-hash", role="user", status="active",
                created_at=NOW, last_login=None,
            ),
        )
        self.assertEqual(await self.store.get_user(alice.id), alice)
        self.assertIsNone(await self.store.get_user(alice.id + 1))

    async def test_ids_increase(self):
        first = await self.make_user("first")
        second = await self.make_user("second")
        self.assertEqual((first.id, second.id), (1, 2))

    async def test_create_admin(self):
        admin = await self.store.create_user("root", "h", None, None, NOW, role="admin")
        self.assertEqual((await self.store.get_user(admin.id)).role, "admin")

    async def test_username_lookup_ignores_case(self):
        alice = await self.make_user("Alice")
        self.assertEqual(await self.store.get_user_by_username("aLICE"), alice)
        self.assertEqual(await self.store.get_user_by_username("Alice"), alice)
        self.assertIsNone(await self.store.get_user_by_username("Alic"))

    async def test_login_by_username_or_email(self):
        bob = await self.make_user("bob", email="Bob@Example.com")
        self.assertEqual(await self.store.get_user_by_login("BOB"), bob)
        self.assertEqual(await self.store.get_user_by_login("bob@example.COM"), bob)
        self.assertIsNone(await self.store.get_user_by_login("nobody@example.com"))
        self.assertIsNone(await self.store.get_user_by_login(""))

    async def test_login_prefers_username_over_email(self):
        # Odd, but possible: one account's email is another's username.
        by_email = await self.make_user("first", email="carol")
        carol = await self.make_user("Carol")
        self.assertEqual(await self.store.get_user_by_login("CAROL"), carol)
        self.assertNotEqual(carol.id, by_email.id)

    async def test_profile_created_with_user(self):
        alice = await self.store.create_user("alice", "h", None, "Alice A.", NOW)
        self.assertEqual(
            await self.store.get_profile(alice.id),
            ProfileRecord(user_id=alice.id, nickname="Alice A.", avatar="", phone="", updated_at=NOW),
        )
        self.assertIsNone(await self.store.get_profile(alice.id + 1))

    async def test_nickname_defaults_to_username(self):
        for username, nickname in [("NoNick", None), ("EmptyNick", "")]:
            user = await self.make_user(username, nickname=nickname)
            self.assertEqual((await self.store.get_profile(user.id)).nickname, username)

    async def assertNothingWritten(self, users):
        self.assertEqual(await self.count_rows("users"), users)
        self.assertEqual(await self.count_rows("profiles"), users)

    async def test_username_clash(self):
        alice = await self.make_user("Alice", email="alice@example.com")
        error = await self.assertFails(
            self.store.create_user("aLiCe", "h", "other@example.com", None, NOW), UsernameTaken
        )
        self.assertEqual((error.code, error.error_code, error.message), (400, 1001, "username already exists"))
        await self.assertNothingWritten(1)
        self.assertEqual(await self.store.get_user_by_username("alice"), alice)
        self.assertIsNone(await self.store.get_user_by_login("other@example.com"))
        # The failed attempt used up no id.
        self.assertEqual((await self.make_user("bob")).id, alice.id + 1)

    async def test_email_clash(self):
        await self.make_user("alice", email="alice@example.com")
        error = await self.assertFails(
            self.store.create_user("bob", "h", "ALICE@example.com", None, NOW), EmailTaken
        )
        self.assertEqual((error.code, error.error_code, error.message), (400, 1002, "email already exists"))
        await self.assertNothingWritten(1)
        self.assertIsNone(await self.store.get_user_by_username("bob"))

    async def test_username_clash_is_reported_before_email_clash(self):
        await self.make_user("alice", email="alice@example.com")
        error = await self.assertFails(
            self.store.create_user("ALICE", "h", "alice@example.com", None, NOW), UsernameTaken
        )
        self.assertEqual(error.error_code, 1001)

    async def test_many_users_without_email(self):
        users = [await self.make_user(name, email=email)
                 for name, email in [("a1", None), ("a2", None), ("a3", ""), ("a4", "")]]
        self.assertEqual([user.email for user in users], [None] * 4)
        await self.assertNothingWritten(4)

    async def test_set_password_hash(self):
        alice = await self.make_user("alice")
        self.assertIsNone(await self.store.set_password_hash(alice.id, "new-hash"))
        self.assertEqual(
            await self.store.get_user(alice.id), attrs.evolve(alice, password_hash="new-hash")
        )
        # An unknown id changes nothing and is not an error.
        self.assertIsNone(await self.store.set_password_hash(alice.id + 1, "x"))

    async def test_record_login(self):
        alice = await self.make_user("alice")
        self.assertIsNone(await self.store.record_login(alice.id, NOW + 60))
        self.assertEqual(
            await self.store.get_user(alice.id), attrs.evolve(alice, last_login=NOW + 60)
        )
        self.assertIsNone(await self.store.record_login(alice.id + 1, NOW))

    async def test_list_users_by_ids(self):
        alice = await self.make_user("alice")
        bob = await self.make_user("bob")
        self.assertEqual(await self.store.list_users_by_ids([]), {})
        found = await self.store.list_users_by_ids([bob.id, 999, alice.id, bob.id])
        self.assertEqual(found, {alice.id: alice, bob.id: bob})
        self.assertEqual(list(found), [alice.id, bob.id])

    async def test_list_users_by_many_ids(self):
        users = [await self.make_user(f"user{n}") for n in range(3)]
        # More ids than SQLite takes in one statement.
        wanted = list(range(5000, 0, -1))
        self.assertEqual(await self.store.list_users_by_ids(wanted), {user.id: user for user in users})

    # -- contacts -------------------------------------------------------------
    async def test_add_contact_is_idempotent_and_one_way(self):
        alice = await self.make_user("alice")
        bob = await self.make_user("bob")
        self.assertIsNone(await self.store.add_contact(alice.id, bob.id, NOW))
        self.assertIsNone(await self.store.add_contact(alice.id, bob.id, NOW + 1))
        self.assertEqual(await self.store.list_contacts(alice.id, 0, 50), (1, [bob]))
        self.assertEqual(await self.store.list_contacts(bob.id, 0, 50), (0, []))

    async def test_add_contact_of_unknown_user(self):
        alice = await self.make_user("alice")
        for user_id, contact_id in [(alice.id, 99), (99, alice.id)]:
            error = await self.assertFails(self.store.add_contact(user_id, contact_id, NOW), NotFound)
            self.assertEqual((error.code, error.error_code), (404, 1003))
        self.assertEqual(await self.store.list_contacts(alice.id, 0, 50), (0, []))

    async def test_remove_contact(self):
        alice = await self.make_user("alice")
        bob = await self.make_user("bob")
        await self.store.add_contact(alice.id, bob.id, NOW)
        self.assertIs(await self.store.remove_contact(alice.id, bob.id), True)
        self.assertIs(await self.store.remove_contact(alice.id, bob.id), False)
        self.assertEqual(await self.store.list_contacts(alice.id, 0, 50), (0, []))

    async def test_list_contacts_orders_by_username_ignoring_case(self):
        owner = await self.make_user("owner")
        # "Zed" sorts after "_under" only when case is ignored ('Z' < '_' < 'z').
        names = ["delta", "Zed", "Alpha", "charlie", "_under", "Bravo"]
        by_name = {}
        for name in names:
            by_name[name] = await self.make_user(name)
            await self.store.add_contact(owner.id, by_name[name].id, NOW)
        ordered = ["_under", "Alpha", "Bravo", "charlie", "delta", "Zed"]
        total, page = await self.store.list_contacts(owner.id, 0, 50)
        self.assertEqual((total, page), (6, [by_name[name] for name in ordered]))
        self.assertEqual(
            await self.store.list_contacts(owner.id, 1, 2), (6, [by_name["Alpha"], by_name["Bravo"]])
        )
        self.assertEqual(await self.store.list_contacts(owner.id, 5, 2), (6, [by_name["Zed"]]))
        self.assertEqual(await self.store.list_contacts(owner.id, 6, 2), (6, []))
        self.assertEqual(await self.store.list_contacts(owner.id, 0, 0), (6, []))

    async def test_list_contacts_rejects_negative_page(self):
        owner = await self.make_user("owner")
        for offset, limit in [(-1, 10), (0, -1)]:
            await self.assertFails(self.store.list_contacts(owner.id, offset, limit), InvalidInput)

    async def test_watchers_of(self):
        alice, bob, carol = [await self.make_user(name) for name in ("alice", "bob", "carol")]
        await self.store.add_contact(carol.id, alice.id, NOW)
        await self.store.add_contact(bob.id, alice.id, NOW)
        await self.store.add_contact(alice.id, bob.id, NOW)
        self.assertEqual(await self.store.watchers_of(alice.id), [bob.id, carol.id])
        self.assertEqual(await self.store.watchers_of(bob.id), [alice.id])
        self.assertEqual(await self.store.watchers_of(carol.id), [])

    # -- offline messages -----------------------------------------------------
    async def test_offline_messages_oldest_first(self):
        # Ids are not in insertion order; the store keeps insertion order.
        waiting = [
            StoredMessage(id=BIG_ID, sender_id=1, recipient_id=2, text="first", sent_at=NOW),
            StoredMessage(id=5, sender_id=3, recipient_id=2, text="second ☃", sent_at=NOW + 1),
            StoredMessage(id=70, sender_id=1, recipient_id=2, text="third", sent_at=NOW + 2),
        ]
        other = StoredMessage(id=6, sender_id=2, recipient_id=1, text="elsewhere", sent_at=NOW)
        for message in [waiting[0], other, *waiting[1:]]:
            self.assertIsNone(await self.store.store_offline_message(message))
        self.assertEqual(await self.store.fetch_offline_messages(2, 10), waiting)
        self.assertEqual(await self.store.fetch_offline_messages(2, 2), waiting[:2])
        self.assertEqual(await self.store.fetch_offline_messages(2, 0), [])
        self.assertEqual(await self.store.fetch_offline_messages(1, 10), [other])
        self.assertEqual(await self.store.fetch_offline_messages(3, 10), [])
        await self.assertFails(self.store.fetch_offline_messages(2, -1), InvalidInput)

    async def test_delete_offline_messages(self):
        for message_id in (10, 11, 12):
            await self.store.store_offline_message(StoredMessage(message_id, 1, 2, str(message_id), NOW))
        self.assertIsNone(await self.store.delete_offline_messages([]))
        self.assertIsNone(await self.store.delete_offline_messages([12, 10, 999]))
        self.assertEqual([m.id for m in await self.store.fetch_offline_messages(2, 10)], [11])
        # More ids than one statement takes.
        self.assertIsNone(await self.store.delete_offline_messages(range(20_000)))
        self.assertEqual(await self.store.fetch_offline_messages(2, 10), [])

    async def test_storing_a_message_again_keeps_the_first(self):
        first = StoredMessage(7, 1, 2, "hello", NOW)
        await self.store.store_offline_message(first)
        await self.store.store_offline_message(StoredMessage(7, 1, 2, "retried", NOW + 5))
        self.assertEqual(await self.store.fetch_offline_messages(2, 10), [first])

    async def test_deleted_message_id_stored_again_goes_last(self):
        await self.store.store_offline_message(StoredMessage(1, 9, 2, "a", NOW))
        await self.store.store_offline_message(StoredMessage(2, 9, 2, "b", NOW))
        await self.store.delete_offline_messages([1])
        await self.store.store_offline_message(StoredMessage(1, 9, 2, "a again", NOW))
        self.assertEqual([m.text for m in await self.store.fetch_offline_messages(2, 10)], ["b", "a again"])

    # -- files ----------------------------------------------------------------
    async def test_create_and_get_file(self):
        record = await self.store.create_file(1, "report.pdf", 1234, "ab" * 32, "ab/report", NOW)
        self.assertEqual(
            record,
            FileRecord(
                id=record.id, owner_id=1, name="report.pdf", size=1234, sha256="ab" * 32,
                path="ab/report", status="receiving", created_at=NOW, recipient_id=None,
                delivered=False, content_type="application/octet-stream",
            ),
        )
        self.assertEqual(await self.store.get_file(record.id), record)
        self.assertIsNone(await self.store.get_file(record.id + 1))
        image = await self.store.create_file(1, "a.png", 5, "cd" * 32, "cd/a", NOW, recipient_id=2,
                                             content_type="image/png")
        self.assertEqual((image.id, image.recipient_id, image.content_type), (record.id + 1, 2, "image/png"))

    async def test_file_life(self):
        record = await self.store.create_file(1, "a.bin", 2**40, "00" * 32, "00/a", NOW, recipient_id=2)
        self.assertEqual(await self.store.undelivered_files_for(2), [])  # still receiving
        self.assertIsNone(await self.store.complete_file(record.id))
        complete = await self.store.get_file(record.id)
        self.assertEqual(complete, attrs.evolve(record, status="complete"))
        self.assertEqual(await self.store.undelivered_files_for(2), [complete])
        self.assertIsNone(await self.store.mark_file_delivered(record.id))
        self.assertEqual(await self.store.undelivered_files_for(2), [])
        self.assertIs((await self.store.get_file(record.id)).delivered, True)
        self.assertIsNone(await self.store.delete_file(record.id))
        self.assertIsNone(await self.store.get_file(record.id))
        # Unknown ids: nothing to do, no error.
        for change in (self.store.complete_file, self.store.mark_file_delivered, self.store.delete_file):
            self.assertIsNone(await change(record.id))

    async def test_delete_incomplete_files(self):
        stale = await self.store.create_file(1, "half.bin", 100, "00" * 32, "00/half", NOW - 60, recipient_id=2)
        done = await self.store.create_file(1, "done.bin", 5, "11" * 32, "11/done", NOW - 60, recipient_id=2)
        await self.store.complete_file(done.id)
        fresh = await self.store.create_file(1, "new.bin", 100, "22" * 32, "22/new", NOW, recipient_id=2)
        self.assertEqual(await self.store.delete_incomplete_files(NOW), [stale])
        self.assertIsNone(await self.store.get_file(stale.id))
        self.assertEqual((await self.store.get_file(done.id)).status, "complete")  # complete files stay
        self.assertEqual(await self.store.get_file(fresh.id), fresh)  # an upload begun since stays
        self.assertEqual(await self.store.delete_incomplete_files(NOW), [])

    async def test_delete_incomplete_files_of_one_node(self):
        mine = await self.store.create_file(1, "a.bin", 9, "00" * 32, "transfers/n_1/ab/a", NOW - 60, recipient_id=2)
        # "_" is a character here, not a wildcard: n_1 is not nx1.
        other = await self.store.create_file(1, "b.bin", 9, "11" * 32, "transfers/nx1/ab/b", NOW - 60, recipient_id=2)
        theirs = await self.store.create_file(1, "c.bin", 9, "22" * 32, "transfers/n_10/ab/c", NOW - 60,
                                              recipient_id=2)
        self.assertEqual(await self.store.delete_incomplete_files(NOW, "transfers/n_1/"), [mine])
        self.assertEqual([await self.store.get_file(r.id) for r in (other, theirs)], [other, theirs])
        self.assertEqual(await self.store.delete_incomplete_files(NOW, "transfers/"), [other, theirs])

    async def test_undelivered_files_oldest_first(self):
        made = []
        for recipient_id, name in [(2, "one"), (3, "other"), (2, "two"), (2, "three"), (None, "public")]:
            record = await self.store.create_file(1, name, 1, "ee" * 32, name, NOW, recipient_id=recipient_id)
            made.append(record)
        for record in reversed(made[:4]):
            await self.store.complete_file(record.id)
        await self.store.mark_file_delivered(made[3].id)
        undelivered = await self.store.undelivered_files_for(2)
        self.assertEqual([record.name for record in undelivered], ["one", "two"])
        self.assertEqual([record.name for record in await self.store.undelivered_files_for(3)], ["other"])
        # A file id is never reused.
        await self.store.delete_file(made[-1].id)
        self.assertEqual((await self.store.create_file(1, "n", 1, "ff" * 32, "n", NOW)).id, made[-1].id + 1)


    # -- the user cache ---------------------------------------------------------
    async def cached_store(self):
        """A started store telling a :class:`UserCache` (on a fake clock) of its writes -> (store, cache)."""
        cache = UserCache(Clock())
        store = self.make_store(user_caches=[cache])
        self.addCleanup(store.stop)
        await store.start()
        return store, cache

    async def test_every_write_to_a_user_invalidates_the_cache(self):
        store, cache = await self.cached_store()
        alice = await store.create_user("alice", "hash-1", "alice@example.com", None, NOW)
        writes = [
            ("set_password_hash", lambda: store.set_password_hash(alice.id, "hash-2")),
            ("record_login", lambda: store.record_login(alice.id, NOW + 1)),
            ("update_user", lambda: store.update_user(alice.id, {"role": "admin"})),
            ("update_user", lambda: store.update_user(alice.id, {"status": "banned"})),
            ("update_user", lambda: store.update_user(alice.id, {"status": "deleted", "email": None})),
            ("revoke_all_tokens", lambda: store.revoke_all_tokens(alice.id, NOW + 2)),
            ("update_profile", lambda: store.update_profile(alice.id, {"nickname": "Al"}, NOW + 3)),
        ]
        for name, write in writes:
            # Warm: the second read is the cache's.
            await cache.user(alice.id, store.get_user)
            await cache.profile(alice.id, store.get_profile)
            misses = cache.misses
            await cache.user(alice.id, store.get_user)
            self.assertEqual(cache.misses, misses, name)
            await write()
            # The write is acknowledged: the cache answers what the store now holds.
            self.assertEqual(await cache.user(alice.id, store.get_user), await store.get_user(alice.id), name)
            self.assertEqual(await cache.profile(alice.id, store.get_profile), await store.get_profile(alice.id),
                             name)
            self.assertEqual(cache.misses, misses + 2, f"{name} did not invalidate")
        final = await store.get_user(alice.id)
        self.assertEqual((final.role, final.status, final.token_version), ("admin", "deleted", 1))

    async def test_creating_a_user_invalidates_its_id(self):
        store, cache = await self.cached_store()
        told = []
        store.user_caches.append(_Recorder(told))
        alice = await store.create_user("alice", "h", None, None, NOW)
        self.assertEqual(told, [alice.id])
        # A failed creation tells nothing (there is no id), and reads tell nothing.
        await self.assertFails(store.create_user("ALICE", "h", None, None, NOW), UsernameTaken)
        await store.get_user(alice.id)
        await store.get_profile(alice.id)
        self.assertEqual(told, [alice.id])

    async def test_every_write_to_a_meeting_invalidates_the_meeting_caches(self):
        told = []
        store = self.make_store(meeting_caches=[_Recorder(told)])
        self.addCleanup(store.stop)
        await store.start()
        alice = await store.create_user("alice", "h", None, None, NOW)
        meeting, _ = await store.create_meeting("m", "", alice.id, NOW, None, 10, "video", None, SETTINGS,
                                                "room-x", NOW)
        self.assertEqual(told, [meeting.id])
        await store.update_meeting(meeting.id, {"title": "n"}, NOW + 1)
        await store.list_meetings(0, 10)
        await store.get_meeting(meeting.id)
        await store.join_meeting(meeting.id, alice.id, "host", NOW)
        self.assertEqual(told, [meeting.id] * 2)
        await store.delete_meeting(meeting.id)
        self.assertEqual(told, [meeting.id] * 3)

    # -- accounts administration ----------------------------------------------
    async def test_update_user(self):
        alice = await self.make_user("alice", email="alice@example.com")
        changes = {"email": "Alice@Work.example", "role": "admin", "status": "banned", "username": "Alicia"}
        updated = await self.store.update_user(alice.id, changes)
        self.assertEqual(updated, attrs.evolve(alice, **changes))
        self.assertEqual(await self.store.get_user(alice.id), updated)
        self.assertEqual(await self.store.get_user_by_login("alice@work.EXAMPLE"), updated)
        self.assertIsNone(await self.store.get_user_by_username("alice"))

    async def test_update_user_keeps_its_own_names(self):
        alice = await self.make_user("alice", email="alice@example.com")
        # The user's own username and email are no clash, in any case.
        updated = await self.store.update_user(alice.id, {"username": "ALICE", "email": "ALICE@example.com"})
        self.assertEqual((updated.username, updated.email), ("ALICE", "ALICE@example.com"))
        # No changes: the user as it is.
        self.assertEqual(await self.store.update_user(alice.id, {}), updated)
        # An empty email is none, as on creation.
        self.assertIsNone((await self.store.update_user(alice.id, {"email": ""})).email)

    async def test_update_user_clashes_change_nothing(self):
        alice = await self.make_user("alice", email="alice@example.com")
        bob = await self.make_user("bob", email="bob@example.com")
        for changes, error_code in [
            ({"username": "ALICE", "role": "admin"}, 1001),
            ({"email": "Alice@Example.com", "status": "banned"}, 1002),
            ({"username": "Alice", "email": "alice@example.com"}, 1001),
        ]:
            error = await self.assertFails(self.store.update_user(bob.id, changes), InvalidInput)
            self.assertEqual((error.code, error.error_code), (400, error_code))
            self.assertEqual(await self.store.get_user(bob.id), bob)
        self.assertEqual(await self.store.get_user(alice.id), alice)

    async def test_update_unknown_user(self):
        alice = await self.make_user("alice")
        self.assertIsNone(await self.store.update_user(alice.id + 1, {"role": "admin"}))
        # Even a clashing name: there is no user to clash.
        self.assertIsNone(await self.store.update_user(alice.id + 1, {"username": "alice"}))

    async def test_update_user_rejects_other_keys(self):
        alice = await self.make_user("alice")
        for changes in [{"password_hash": "x"}, {"role": "admin", "id": 5}, {"created_at": 0}]:
            await self.assertFails(self.store.update_user(alice.id, changes), ValueError)
            await self.assertFails(self.store.update_user(alice.id + 1, changes), ValueError)
        self.assertEqual(await self.store.get_user(alice.id), alice)

    async def test_update_profile(self):
        alice = await self.make_user("alice", nickname="Al")
        changes = {"nickname": "Alice A.", "avatar": "avatars/a.png", "phone": "+44 20 7946 0000"}
        updated = await self.store.update_profile(alice.id, changes, NOW + 5)
        self.assertEqual(updated, ProfileRecord(alice.id, updated_at=NOW + 5, **changes))
        self.assertEqual(await self.store.get_profile(alice.id), updated)
        touched = await self.store.update_profile(alice.id, {}, NOW + 6)
        self.assertEqual(touched, attrs.evolve(updated, updated_at=NOW + 6))
        self.assertIsNone(await self.store.update_profile(alice.id + 1, {"nickname": "x"}, NOW))
        await self.assertFails(self.store.update_profile(alice.id, {"user_id": 9}, NOW), ValueError)
        await self.assertFails(self.store.update_profile(alice.id, {"updated_at": 9}, NOW), ValueError)
        self.assertEqual(await self.store.get_profile(alice.id), touched)

    async def test_list_users_pages_by_id(self):
        users = [await self.make_user(f"user{n}") for n in range(5)]
        self.assertEqual(await self.store.list_users(0, 10), (5, users))
        self.assertEqual(await self.store.list_users(1, 2), (5, users[1:3]))
        self.assertEqual(await self.store.list_users(5, 2), (5, []))
        self.assertEqual(await self.store.list_users(0, 0), (5, []))
        for offset, limit in [(-1, 10), (0, -1)]:
            await self.assertFails(self.store.list_users(offset, limit), InvalidInput)

    async def test_list_users_by_keyword(self):
        alice = await self.make_user("Alice", email="alice@example.com")
        bob = await self.make_user("bob", email="BOB@Sample.org")
        per_cent = await self.make_user("per_cent", email="100%@example.com")
        plain = await self.make_user("perxcent", email=None)
        backslash = await self.make_user("back", email="a\\b@example.com")
        for keyword, found in [
            ("LIC", [alice]),  # username, ignoring case
            ("sample.ORG", [bob]),  # email, ignoring case
            ("EXAMPLE", [alice, per_cent, backslash]),
            ("%", [per_cent]),  # literally, not "anything"
            ("0%@", [per_cent]),
            ("r_c", [per_cent]),  # "_" is not "any one character"
            ("rxc", [plain]),
            ("\\", [backslash]),
            ("nobody", []),
            ("", [alice, bob, per_cent, plain, backslash]),
        ]:
            self.assertEqual(await self.store.list_users(0, 10, keyword=keyword), (len(found), found), keyword)
        self.assertEqual(await self.store.list_users(1, 1, keyword="example"), (3, [per_cent]))

    async def test_keyword_searches_fold_ascii_letters_only(self):
        # As SQLite's lower() does, whatever the database's locale would.
        alice = await self.make_user("alice", email="Élodie@example.com")
        meeting = await self.make_meeting(alice, "Café CRÈME")
        self.assertEqual(await self.store.list_users(0, 10, keyword="ÉLODIE"), (1, [alice]))
        self.assertEqual(await self.store.list_users(0, 10, keyword="élodie"), (0, []))
        self.assertEqual(await self.store.list_meetings(0, 10, keyword="CAFé crÈME"), (1, [meeting]))
        self.assertEqual(await self.store.list_meetings(0, 10, keyword="café crème"), (0, []))

    async def test_list_users_by_status(self):
        alice, bob, carol = [await self.make_user(name) for name in ("alice", "bob", "carol")]
        bob = await self.store.update_user(bob.id, {"status": "banned"})
        carol = await self.store.update_user(carol.id, {"status": "banned"})
        self.assertEqual(await self.store.list_users(0, 10, status="banned"), (2, [bob, carol]))
        self.assertEqual(await self.store.list_users(0, 10, status="active"), (1, [alice]))
        self.assertEqual(await self.store.list_users(0, 10, status="deleted"), (0, []))
        self.assertEqual(await self.store.list_users(0, 10, keyword="CAR", status="banned"), (1, [carol]))
        self.assertEqual(await self.store.list_users(0, 10, keyword="car", status="active"), (0, []))

    async def test_get_profiles(self):
        alice = await self.make_user("alice", nickname="Al")
        bob = await self.make_user("bob")
        self.assertEqual(await self.store.get_profiles([]), {})
        profiles = await self.store.get_profiles([bob.id, 999, alice.id, bob.id])
        self.assertEqual(
            profiles,
            {alice.id: await self.store.get_profile(alice.id), bob.id: await self.store.get_profile(bob.id)},
        )
        self.assertEqual(list(profiles), [alice.id, bob.id])
        self.assertEqual(profiles[alice.id].nickname, "Al")
        # More ids than SQLite takes in one statement.
        self.assertEqual(list(await self.store.get_profiles(range(5000, 0, -1))), [alice.id, bob.id])

    # -- meetings -------------------------------------------------------------
    async def test_create_meeting_with_its_host(self):
        alice = await self.make_user("alice", nickname="Al")
        meeting, host = await self.store.create_meeting(
            "Planning", "Q3 plans", alice.id, NOW + HOUR, NOW + 2 * HOUR, 25, "audio", "argon2-meeting",
            SETTINGS, "room-abc", NOW,
        )
        self.assertEqual(
            meeting,
            MeetingRecord(
                id=meeting.id, title="Planning", description="Q3 plans", creator_id=alice.id,
                start_time=NOW + HOUR, end_time=NOW + 2 * HOUR, max_participants=25, meeting_type="audio",
                status="scheduled", password_hash="argon2-meeting", settings=SETTINGS, room_id="room-abc",
                created_at=NOW, updated_at=NOW, started_at=None, ended_at=None,
            ),
        )
        self.assertEqual(
            host,
            ParticipantRecord(
                id=host.id, meeting_id=meeting.id, user_id=alice.id, username="alice", nickname="Al",
                role="host", status="invited", audio_enabled=True, video_enabled=True,
                joined_at=None, left_at=None,
            ),
        )
        self.assertEqual(await self.store.get_meeting(meeting.id), meeting)
        self.assertIsNone(await self.store.get_meeting(meeting.id + 1))
        self.assertEqual(await self.store.list_participants(meeting.id), [host])
        self.assertEqual(await self.store.get_participant(meeting.id, alice.id), host)

    async def test_meeting_settings_are_a_dict_of_their_own(self):
        alice = await self.make_user("alice")
        settings = {"enable_chat": True, "nested": {"ok": [1, 2]}}
        meeting, _ = await self.store.create_meeting(
            "t", "", alice.id, NOW, None, 2, "video", None, settings, "r", NOW
        )
        settings["enable_chat"] = False
        meeting.settings["enable_chat"] = False
        fetched = await self.store.get_meeting(meeting.id)
        self.assertEqual(fetched.settings, {"enable_chat": True, "nested": {"ok": [1, 2]}})
        self.assertIsInstance(fetched.settings, dict)

    async def assertNoMeetingRows(self, meetings=0, participants=0):
        self.assertEqual(await self.count_rows("meetings"), meetings)
        self.assertEqual(await self.count_rows("participants"), participants)

    async def test_create_meeting_of_unknown_user(self):
        error = await self.assertFails(
            self.store.create_meeting("t", "", 99, NOW, None, 2, "video", None, {}, "r", NOW), NotFound
        )
        self.assertEqual(error.error_code, 1003)
        await self.assertNoMeetingRows()

    async def test_room_ids_are_unique(self):
        alice = await self.make_user("alice")
        first, _ = await self.store.create_meeting("a", "", alice.id, NOW, None, 2, "video", None, {}, "r", NOW)
        await self.assertFails(
            self.store.create_meeting("b", "", alice.id, NOW, None, 2, "video", None, {}, "r", NOW), Conflict
        )
        await self.assertNoMeetingRows(1, 1)
        second, _ = await self.store.create_meeting(
            "b", "", alice.id, NOW, None, 2, "video", None, {}, "s", NOW
        )
        self.assertEqual(second.id, first.id + 1)

    async def test_get_meeting_by_room(self):
        alice = await self.make_user("alice")
        first, _ = await self.store.create_meeting("a", "", alice.id, NOW, None, 2, "video", None, {}, "room-a", NOW)
        second, _ = await self.store.create_meeting("b", "", alice.id, NOW, None, 2, "video", None, {}, "room-b",
                                                    NOW)
        self.assertEqual(await self.store.get_meeting_by_room("room-a"), first)
        self.assertEqual(await self.store.get_meeting_by_room("room-b"), second)
        for unknown in ("room-c", "", "ROOM-A", "room-%", str(first.id)):
            self.assertIsNone(await self.store.get_meeting_by_room(unknown), unknown)
        ended = await self.store.update_meeting(first.id, {"status": "ended"}, NOW + 1)
        self.assertEqual(await self.store.get_meeting_by_room("room-a"), ended)  # whatever its status
        await self.store.delete_meeting(second.id)
        self.assertIsNone(await self.store.get_meeting_by_room("room-b"))

    async def test_update_meeting(self):
        alice = await self.make_user("alice")
        meeting = await self.make_meeting(alice)
        settings = dict(SETTINGS, enable_ai=True)
        changes = {
            "title": "Retro", "description": "what went well", "start_time": NOW + 3 * HOUR,
            "end_time": NOW + 4 * HOUR, "max_participants": 3, "meeting_type": "audio",
            "password_hash": "h", "settings": settings, "status": "ongoing",
            "started_at": NOW + 3 * HOUR, "ended_at": None,
        }
        updated = await self.store.update_meeting(meeting.id, changes, NOW + 10)
        self.assertEqual(updated, attrs.evolve(meeting, updated_at=NOW + 10, **changes))
        self.assertEqual(await self.store.get_meeting(meeting.id), updated)
        ending = {"status": "ended", "ended_at": NOW + 4 * HOUR}
        ended = await self.store.update_meeting(meeting.id, ending, NOW + 11)
        self.assertEqual(ended, attrs.evolve(updated, updated_at=NOW + 11, **ending))
        # A password can be taken off again.
        unlocked = await self.store.update_meeting(meeting.id, {"password_hash": None}, NOW)
        self.assertIsNone(unlocked.password_hash)

    async def test_update_meeting_unknown_or_bad_key(self):
        alice = await self.make_user("alice")
        meeting = await self.make_meeting(alice)
        self.assertIsNone(await self.store.update_meeting(meeting.id + 1, {"title": "x"}, NOW))
        for changes in [{"room_id": "other"}, {"creator_id": 2}, {"updated_at": 1.0}, {"title": "x", "id": 3}]:
            await self.assertFails(self.store.update_meeting(meeting.id, changes, NOW + 1), ValueError)
        self.assertEqual(await self.store.get_meeting(meeting.id), meeting)

    async def test_delete_meeting_cascades(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice)
        other = await self.make_meeting(bob)
        await self.store.join_meeting(meeting.id, bob.id, "participant", NOW)
        await self.store.add_meeting_message(meeting.id, bob.id, "hi", "text", NOW)
        kept = await self.store.add_meeting_message(other.id, bob.id, "elsewhere", "text", NOW)
        self.assertIs(await self.store.delete_meeting(meeting.id), True)
        self.assertIs(await self.store.delete_meeting(meeting.id), False)
        self.assertIsNone(await self.store.get_meeting(meeting.id))
        self.assertEqual(await self.store.list_participants(meeting.id), [])
        self.assertEqual(await self.store.list_meeting_messages(meeting.id, 0, 10), (0, []))
        await self.assertNoMeetingRows(1, 1)
        self.assertEqual(await self.count_rows("meeting_messages"), 1)
        self.assertEqual(await self.store.list_meeting_messages(other.id, 0, 10), (1, [kept]))
        # A meeting id is never reused.
        self.assertEqual((await self.make_meeting(alice)).id, other.id + 1)

    async def test_list_meetings_order_and_paging(self):
        alice = await self.make_user("alice")
        # Made out of start order; two share a start time (then ids decide).
        late = await self.make_meeting(alice, "late", NOW + 3 * HOUR)
        early = await self.make_meeting(alice, "early", NOW + HOUR)
        middle = await self.make_meeting(alice, "middle", NOW + 2 * HOUR)
        middle_too = await self.make_meeting(alice, "middle too", NOW + 2 * HOUR)
        ascending = [early, middle, middle_too, late]
        self.assertEqual(await self.store.list_meetings(0, 10), (4, ascending))
        self.assertEqual(await self.store.list_meetings(0, 10, newest_first=True), (4, ascending[::-1]))
        self.assertEqual(await self.store.list_meetings(1, 2), (4, ascending[1:3]))
        self.assertEqual(await self.store.list_meetings(1, 2, newest_first=True), (4, [middle_too, middle]))
        self.assertEqual(await self.store.list_meetings(4, 2), (4, []))
        for offset, limit in [(-1, 10), (0, -1)]:
            await self.assertFails(self.store.list_meetings(offset, limit), InvalidInput)

    async def test_list_meetings_filters(self):
        alice, bob, carol = [await self.make_user(name) for name in ("alice", "bob", "carol")]
        standup = await self.make_meeting(alice, "Daily Stand-up", NOW + HOUR, description="15 min")
        review = await self.make_meeting(bob, "Review", NOW + 2 * HOUR, description="100% of the_code",
                                         status="ongoing")
        retro = await self.make_meeting(carol, "Retro", NOW + 3 * HOUR, status="ended")
        cancelled = await self.make_meeting(carol, "Old", NOW + 4 * HOUR, status="cancelled")
        await self.store.add_participant(retro.id, alice.id, "participant", NOW)
        await self.store.join_meeting(cancelled.id, bob.id, "participant", NOW)

        async def titles(**filters):
            total, meetings = await self.store.list_meetings(0, 10, **filters)
            self.assertEqual(total, len(meetings))
            return [meeting.title for meeting in meetings]

        self.assertEqual(await titles(statuses=["ongoing", "ended"]), ["Review", "Retro"])
        self.assertEqual(await titles(statuses={"scheduled"}), ["Daily Stand-up"])
        self.assertEqual(await titles(statuses=()), [])
        self.assertEqual(await titles(keyword="STAND"), ["Daily Stand-up"])  # title
        self.assertEqual(await titles(keyword="15 MIN"), ["Daily Stand-up"])  # description
        self.assertEqual(await titles(keyword="%"), ["Review"])
        self.assertEqual(await titles(keyword="e_c"), ["Review"])
        self.assertEqual(await titles(keyword="r%o"), [])
        self.assertEqual(await titles(keyword="re"), ["Review", "Retro"])
        # Creator, or a participant row of any status.
        self.assertEqual(await titles(member_id=alice.id), ["Daily Stand-up", "Retro"])
        self.assertEqual(await titles(member_id=bob.id), ["Review", "Old"])
        self.assertEqual(await titles(member_id=carol.id), ["Retro", "Old"])
        self.assertEqual(await titles(member_id=999), [])
        # Bounds are inclusive.
        self.assertEqual(await titles(start_from=NOW + 2 * HOUR), ["Review", "Retro", "Old"])
        self.assertEqual(await titles(start_until=NOW + 2 * HOUR), ["Daily Stand-up", "Review"])
        self.assertEqual(
            await titles(start_from=NOW + 2 * HOUR, start_until=NOW + 3 * HOUR), ["Review", "Retro"]
        )
        # Everything at once, newest first, paged.
        self.assertEqual(
            await self.store.list_meetings(
                1, 1, statuses=["ended", "cancelled", "ongoing"], keyword="O", member_id=bob.id,
                start_from=NOW, start_until=NOW + 4 * HOUR, newest_first=True,
            ),
            (2, [review]),
        )
        self.assertEqual(standup.status, "scheduled")

    # -- participants ---------------------------------------------------------
    async def test_join_meeting(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob", nickname="Bobby")
        meeting = await self.make_meeting(alice)
        participant, created = await self.store.join_meeting(meeting.id, bob.id, "participant", NOW + 1)
        self.assertIs(created, True)
        self.assertEqual(
            participant,
            ParticipantRecord(
                id=participant.id, meeting_id=meeting.id, user_id=bob.id, username="bob", nickname="Bobby",
                role="participant", status="joined", audio_enabled=True, video_enabled=True,
                joined_at=NOW + 1, left_at=None,
            ),
        )
        self.assertEqual(await self.store.get_participant(meeting.id, bob.id), participant)
        self.assertIsNone(await self.store.get_participant(meeting.id, bob.id + 1))

    async def test_join_again_keeps_one_row_and_its_role(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice, max_participants=2)
        first, _ = await self.store.join_meeting(meeting.id, bob.id, "moderator", NOW + 1)
        left = await self.store.update_participant(meeting.id, bob.id, {"status": "left", "left_at": NOW + 2})
        self.assertEqual(left.left_at, NOW + 2)
        # The meeting is full now, but a member's row is already counted.
        again, created = await self.store.join_meeting(meeting.id, bob.id, "participant", NOW + 3)
        self.assertIs(created, False)
        self.assertEqual(again, attrs.evolve(first, joined_at=NOW + 3, left_at=None))
        # The host joining keeps "host".
        host, created = await self.store.join_meeting(meeting.id, alice.id, "participant", NOW + 4)
        self.assertEqual((host.role, host.status, host.joined_at, created), ("host", "joined", NOW + 4, False))
        self.assertEqual(await self.count_rows("participants"), 2)

    async def test_join_full_meeting(self):
        alice, bob, carol = [await self.make_user(name) for name in ("alice", "bob", "carol")]
        meeting = await self.make_meeting(alice, max_participants=2)
        # The host's row counts although the host has not joined.
        await self.store.add_participant(meeting.id, bob.id, "participant", NOW)
        await self.store.update_participant(meeting.id, bob.id, {"status": "left"})
        # Every status counts.
        error = await self.assertFails(
            self.store.join_meeting(meeting.id, carol.id, "participant", NOW), MeetingFull
        )
        self.assertEqual((error.code, error.error_code), (403, 2003))
        self.assertIsNone(await self.store.get_participant(meeting.id, carol.id))
        self.assertEqual(await self.count_rows("participants"), 2)
        # Room again once a participant is removed (a removed row takes no seat).
        self.assertIs(await self.store.remove_participant(meeting.id, bob.id, NOW), True)
        _, created = await self.store.join_meeting(meeting.id, carol.id, "participant", NOW)
        self.assertIs(created, True)
        # Adding the removed user back needs a seat like anyone else.
        await self.assertFails(self.store.add_participant(meeting.id, bob.id, "participant", NOW), MeetingFull)

    async def test_meeting_of_one(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice, max_participants=1)
        await self.assertFails(self.store.join_meeting(meeting.id, bob.id, "participant", NOW), MeetingFull)
        await self.assertFails(self.store.add_participant(meeting.id, bob.id, "participant", NOW), MeetingFull)
        _, created = await self.store.join_meeting(meeting.id, alice.id, "host", NOW)
        self.assertIs(created, False)

    async def test_join_unknown_meeting_or_user(self):
        alice = await self.make_user("alice")
        meeting = await self.make_meeting(alice)
        error = await self.assertFails(
            self.store.join_meeting(meeting.id + 1, alice.id, "host", NOW), MeetingNotFound
        )
        self.assertEqual((error.code, error.error_code), (404, 2001))
        error = await self.assertFails(self.store.join_meeting(meeting.id, 99, "participant", NOW), NotFound)
        self.assertEqual(error.error_code, 1003)
        self.assertEqual(await self.count_rows("participants"), 1)

    async def test_add_participant(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice, max_participants=2)
        invited = await self.store.add_participant(meeting.id, bob.id, "moderator", NOW)
        self.assertEqual(
            invited,
            ParticipantRecord(
                id=invited.id, meeting_id=meeting.id, user_id=bob.id, username="bob", nickname="bob",
                role="moderator", status="invited", audio_enabled=True, video_enabled=True,
                joined_at=None, left_at=None,
            ),
        )
        for user in (alice, bob):
            await self.assertFails(
                self.store.add_participant(meeting.id, user.id, "participant", NOW), Conflict
            )
        carol = await self.make_user("carol")
        error = await self.assertFails(self.store.add_participant(meeting.id, carol.id, "participant", NOW),
                                       MeetingFull)
        self.assertEqual(error.error_code, 2003)
        await self.assertFails(self.store.add_participant(meeting.id + 1, carol.id, "participant", NOW),
                               MeetingNotFound)
        await self.assertFails(self.store.add_participant(meeting.id, 99, "participant", NOW), NotFound)
        participants = await self.store.list_participants(meeting.id)
        self.assertEqual([p.user_id for p in participants], [alice.id, bob.id])
        # Accepting the invitation is a join of the same row.
        joined, created = await self.store.join_meeting(meeting.id, bob.id, "participant", NOW + 1)
        self.assertEqual(
            (joined.id, joined.role, joined.status, created), (invited.id, "moderator", "joined", False)
        )

    async def test_update_participant(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice)
        joined, _ = await self.store.join_meeting(meeting.id, bob.id, "participant", NOW)
        changes = {"role": "moderator", "status": "left", "audio_enabled": False, "video_enabled": False,
                   "joined_at": NOW + 1, "left_at": NOW + 2}
        updated = await self.store.update_participant(meeting.id, bob.id, changes)
        self.assertEqual(updated, attrs.evolve(joined, **changes))
        self.assertEqual(await self.store.get_participant(meeting.id, bob.id), updated)
        self.assertEqual(await self.store.update_participant(meeting.id, bob.id, {}), updated)
        unmuted = await self.store.update_participant(meeting.id, bob.id, {"audio_enabled": True})
        self.assertIs(unmuted.audio_enabled, True)
        self.assertIsNone(await self.store.update_participant(meeting.id, 99, {"role": "host"}))
        self.assertIsNone(await self.store.update_participant(meeting.id + 1, bob.id, {"role": "host"}))
        for changes in [{"user_id": alice.id}, {"meeting_id": 5}, {"username": "x"}]:
            await self.assertFails(self.store.update_participant(meeting.id, bob.id, changes), ValueError)
        self.assertEqual(await self.store.get_participant(meeting.id, bob.id), unmuted)

    async def test_remove_participant(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice)
        host = await self.store.get_participant(meeting.id, alice.id)
        await self.store.join_meeting(meeting.id, bob.id, "participant", NOW)
        self.assertIs(await self.store.remove_participant(meeting.id, bob.id, NOW + 1), True)
        self.assertIs(await self.store.remove_participant(meeting.id, bob.id, NOW + 2), False)
        self.assertIs(await self.store.remove_participant(meeting.id + 1, alice.id, NOW), False)
        self.assertEqual(await self.store.list_participants(meeting.id), [host])

    async def test_a_removed_user_is_barred_until_added_back(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice)
        await self.store.join_meeting(meeting.id, bob.id, "participant", NOW)
        await self.store.remove_participant(meeting.id, bob.id, NOW + 1)
        # No participant to any read...
        self.assertIsNone(await self.store.get_participant(meeting.id, bob.id))
        self.assertIsNone(await self.store.update_participant(meeting.id, bob.id, {"status": "joined"}))
        self.assertEqual(await self.store.list_meetings(0, 10, member_id=bob.id), (0, []))
        # ... and the row stays, so joining again is refused and changes nothing.
        self.assertEqual(await self.count_rows("participants"), 2)
        error = await self.assertFails(self.store.join_meeting(meeting.id, bob.id, "participant", NOW + 2),
                                       ParticipantRemoved)
        self.assertEqual(error.code, 403)
        self.assertIsNone(await self.store.get_participant(meeting.id, bob.id))
        # Added back by a host or moderator: invited again, with the role given, and may join.
        back = await self.store.add_participant(meeting.id, bob.id, "moderator", NOW + 3)
        self.assertEqual((back.user_id, back.role, back.status, back.joined_at, back.left_at),
                         (bob.id, "moderator", "invited", None, None))
        await self.assertFails(self.store.add_participant(meeting.id, bob.id, "participant", NOW + 4), Conflict)
        joined, created = await self.store.join_meeting(meeting.id, bob.id, "participant", NOW + 5)
        self.assertEqual((joined.status, joined.role, created), ("joined", "moderator", False))
        self.assertEqual(await self.count_rows("participants"), 2)

    async def test_participants_carry_current_names(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice)
        await self.store.join_meeting(meeting.id, bob.id, "participant", NOW)
        message = await self.store.add_meeting_message(meeting.id, bob.id, "hello", "text", NOW)
        await self.store.update_user(bob.id, {"username": "Robert"})
        await self.store.update_profile(bob.id, {"nickname": "Rob"}, NOW)
        participants = await self.store.list_participants(meeting.id)
        self.assertEqual(
            [(p.username, p.nickname) for p in participants], [("alice", "alice"), ("Robert", "Rob")]
        )
        self.assertEqual(
            await self.store.list_meeting_messages(meeting.id, 0, 10),
            (1, [attrs.evolve(message, username="Robert", nickname="Rob")]),
        )

    # -- meeting chat ---------------------------------------------------------
    async def test_meeting_messages(self):
        alice, bob = await self.make_user("alice", nickname="Al"), await self.make_user("bob")
        meeting = await self.make_meeting(alice)
        other = await self.make_meeting(alice, "other")
        first = await self.store.add_meeting_message(meeting.id, alice.id, "hello ☃", "text", NOW)
        self.assertEqual(
            first,
            MeetingMessageRecord(
                id=first.id, meeting_id=meeting.id, user_id=alice.id, username="alice", nickname="Al",
                content="hello ☃", message_type="text", created_at=NOW,
            ),
        )
        elsewhere = await self.store.add_meeting_message(other.id, bob.id, "elsewhere", "text", NOW)
        # Not a member: the store does not judge who may talk.
        second = await self.store.add_meeting_message(meeting.id, bob.id, "hi", "text", NOW - 1)
        third = await self.store.add_meeting_message(meeting.id, alice.id, "bob joined", "system", NOW + 1)
        self.assertEqual((second.id, third.id), (elsewhere.id + 1, elsewhere.id + 2))
        # Oldest first by id, whatever created_at says.
        self.assertEqual(await self.store.list_meeting_messages(meeting.id, 0, 10), (3, [first, second, third]))
        self.assertEqual(await self.store.list_meeting_messages(meeting.id, 1, 1), (3, [second]))
        self.assertEqual(await self.store.list_meeting_messages(meeting.id, 3, 1), (3, []))
        self.assertEqual(await self.store.list_meeting_messages(other.id, 0, 10), (1, [elsewhere]))
        self.assertEqual(await self.store.list_meeting_messages(other.id + 1, 0, 10), (0, []))
        await self.assertFails(self.store.list_meeting_messages(meeting.id, -1, 10), InvalidInput)

    async def test_meeting_messages_asked_for_together(self):
        # Asked for without waiting in between (as a busy room does): each
        # gets its own answer, in the order asked, a bad one fails alone, and
        # a read asked for after them sees every one that was stored.
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice)
        asked = [self.store.add_meeting_message(meeting.id, alice.id if i % 2 else bob.id, f"m{i}", "text", NOW + i)
                 for i in range(20)]
        unknown_meeting = self.store.add_meeting_message(meeting.id + 1, alice.id, "lost", "text", NOW)
        unknown_user = self.store.add_meeting_message(meeting.id, 99, "lost", "text", NOW)
        asked.append(self.store.add_meeting_message(meeting.id, alice.id, "last", "text", NOW))
        listed = self.store.list_meeting_messages(meeting.id, 0, 50)
        records = [await d for d in asked]
        self.assertEqual([r.content for r in records], [f"m{i}" for i in range(20)] + ["last"])
        self.assertEqual([r.username for r in records[:3]], ["bob", "alice", "bob"])
        ids = [r.id for r in records]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))
        await self.assertFails(unknown_meeting, MeetingNotFound)
        self.assertEqual((await self.assertFails(unknown_user, NotFound)).error_code, 1003)
        self.assertEqual(await listed, (21, records))

    async def test_meeting_message_to_unknown_meeting_or_from_unknown_user(self):
        alice = await self.make_user("alice")
        meeting = await self.make_meeting(alice)
        await self.assertFails(self.store.add_meeting_message(meeting.id + 1, alice.id, "x", "text", NOW),
                               MeetingNotFound)
        error = await self.assertFails(
            self.store.add_meeting_message(meeting.id, 99, "x", "text", NOW), NotFound
        )
        self.assertEqual(error.error_code, 1003)
        self.assertEqual(await self.count_rows("meeting_messages"), 0)

    # -- refresh tokens -------------------------------------------------------
    async def test_add_and_get_refresh_token(self):
        alice = await self.make_user("alice")
        token = await self.store.add_refresh_token("hash-1", alice.id, "family-1", NOW, NOW + HOUR)
        self.assertEqual(token, RefreshTokenRecord("hash-1", alice.id, "family-1", NOW, NOW + HOUR))
        self.assertEqual(await self.store.get_refresh_token("hash-1"), token)
        self.assertIsNone(await self.store.get_refresh_token("hash-2"))
        await self.assertFails(self.store.add_refresh_token("hash-1", alice.id, "f", NOW, NOW + HOUR), Conflict)
        error = await self.assertFails(
            self.store.add_refresh_token("hash-3", 99, "f", NOW, NOW + HOUR), NotFound
        )
        self.assertEqual(error.error_code, 1003)
        self.assertEqual(await self.count_rows("refresh_tokens"), 1)

    async def test_rotate_refresh_token(self):
        alice = await self.make_user("alice")
        old = await self.store.add_refresh_token("old", alice.id, "family", NOW, NOW + HOUR)
        new = await self.store.rotate_refresh_token("old", "new", NOW + 10, NOW + 2 * HOUR)
        self.assertEqual(new, RefreshTokenRecord("new", alice.id, "family", NOW + 10, NOW + 2 * HOUR))
        self.assertEqual(await self.store.get_refresh_token("new"), new)
        self.assertEqual(
            await self.store.get_refresh_token("old"), attrs.evolve(old, revoked_at=NOW + 10, replaced_by="new")
        )
        newer = await self.store.rotate_refresh_token("new", "newer", NOW + 20, NOW + 3 * HOUR)
        self.assertEqual((newer.family_id, newer.user_id), ("family", alice.id))

    async def test_rotate_unknown_or_expired_refresh_token(self):
        alice = await self.make_user("alice")
        token = await self.store.add_refresh_token("old", alice.id, "family", NOW, NOW + HOUR)
        self.assertIsNone(await self.store.rotate_refresh_token("nope", "new", NOW, NOW + HOUR))
        # Expired at its expiry time.
        self.assertIsNone(await self.store.rotate_refresh_token("old", "new", NOW + HOUR, NOW + 2 * HOUR))
        self.assertEqual(await self.store.get_refresh_token("old"), token)
        self.assertIsNone(await self.store.get_refresh_token("new"))

    async def test_replayed_refresh_token_revokes_its_family(self):
        alice = await self.make_user("alice")
        await self.store.add_refresh_token("first", alice.id, "family", NOW, NOW + HOUR)
        other = await self.store.add_refresh_token("other", alice.id, "other family", NOW, NOW + HOUR)
        second = await self.store.rotate_refresh_token("first", "second", NOW + 1, NOW + HOUR)
        live = await self.store.rotate_refresh_token("second", "third", NOW + 2, NOW + HOUR)
        # "first" again: stolen. The thief gets nothing, and the live token dies too.
        self.assertIsNone(await self.store.rotate_refresh_token("first", "fourth", NOW + 3, NOW + HOUR))
        self.assertIsNone(await self.store.get_refresh_token("fourth"))
        self.assertEqual(await self.store.get_refresh_token("third"), attrs.evolve(live, revoked_at=NOW + 3))
        # Tokens revoked before keep when and by what.
        self.assertEqual(
            await self.store.get_refresh_token("second"),
            attrs.evolve(second, revoked_at=NOW + 2, replaced_by="third"),
        )
        self.assertEqual(await self.store.get_refresh_token("other"), other)
        self.assertIsNone(await self.store.rotate_refresh_token("third", "fifth", NOW + 4, NOW + HOUR))

    async def test_rotate_to_a_hash_in_use_changes_nothing(self):
        alice = await self.make_user("alice")
        old = await self.store.add_refresh_token("old", alice.id, "family", NOW, NOW + HOUR)
        await self.store.add_refresh_token("taken", alice.id, "other", NOW, NOW + HOUR)
        await self.assertFails(self.store.rotate_refresh_token("old", "taken", NOW, NOW + HOUR), Conflict)
        self.assertEqual(await self.store.get_refresh_token("old"), old)

    async def test_revoke_all_tokens(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        live = [
            await self.store.add_refresh_token(f"a{n}", alice.id, f"f{n}", NOW, NOW + HOUR) for n in range(2)
        ]
        expired = await self.store.add_refresh_token("a-old", alice.id, "f-old", NOW - 2 * HOUR, NOW - HOUR)
        await self.store.add_refresh_token("a-rotated", alice.id, "f2", NOW, NOW + HOUR)
        await self.store.rotate_refresh_token("a-rotated", "a-current", NOW, NOW + HOUR)
        bobs = await self.store.add_refresh_token("b", bob.id, "fb", NOW, NOW + HOUR)
        # Two live, and the one "a-rotated" was replaced by; not the expired or the revoked one.
        self.assertEqual((alice.token_version, bob.token_version), (0, 0))
        self.assertEqual(await self.store.revoke_all_tokens(alice.id, NOW + 5), 3)
        self.assertEqual((await self.store.get_user(alice.id)).token_version, 1)
        for token in live:
            self.assertEqual(
                await self.store.get_refresh_token(token.token_hash), attrs.evolve(token, revoked_at=NOW + 5)
            )
        self.assertEqual((await self.store.get_refresh_token("a-current")).revoked_at, NOW + 5)
        self.assertEqual(await self.store.get_refresh_token("a-old"), expired)
        self.assertEqual((await self.store.get_refresh_token("a-rotated")).revoked_at, NOW)
        self.assertEqual(await self.store.get_refresh_token("b"), bobs)
        self.assertEqual(await self.store.revoke_all_tokens(alice.id, NOW + 6), 0)
        # Every call raises the version again, and only this user's.
        self.assertEqual([u.token_version for u in (await self.store.list_users_by_ids([alice.id, bob.id])).values()],
                         [2, 0])
        self.assertEqual(await self.store.revoke_all_tokens(99, NOW), 0)

    async def test_revoke_refresh_token(self):
        alice = await self.make_user("alice")
        token = await self.store.add_refresh_token("t", alice.id, "f", NOW, NOW + HOUR)
        await self.store.add_refresh_token("expired", alice.id, "f", NOW - HOUR, NOW)
        bob = await self.make_user("bob")
        # Only its owner's logout revokes a token.
        self.assertIs(await self.store.revoke_refresh_token("t", bob.id, NOW + 1), False)
        self.assertEqual(await self.store.get_refresh_token("t"), token)
        self.assertIs(await self.store.revoke_refresh_token("t", alice.id, NOW + 1), True)
        self.assertEqual(await self.store.get_refresh_token("t"), attrs.evolve(token, revoked_at=NOW + 1))
        # Already revoked: the first time stays.
        self.assertIs(await self.store.revoke_refresh_token("t", alice.id, NOW + 2), False)
        self.assertEqual((await self.store.get_refresh_token("t")).revoked_at, NOW + 1)
        self.assertIs(await self.store.revoke_refresh_token("expired", alice.id, NOW + 2), False)
        self.assertIs(await self.store.revoke_refresh_token("unknown", alice.id, NOW), False)

    # -- password resets ------------------------------------------------------
    async def test_password_reset_is_single_use(self):
        alice = await self.make_user("alice")
        self.assertIsNone(await self.store.add_password_reset("reset", alice.id, NOW, NOW + HOUR))
        self.assertIsNone(await self.store.consume_password_reset("other", NOW))
        self.assertEqual(await self.store.consume_password_reset("reset", NOW + 1), alice.id)
        self.assertIsNone(await self.store.consume_password_reset("reset", NOW + 2))

    async def test_password_reset_expires(self):
        alice = await self.make_user("alice")
        await self.store.add_password_reset("reset", alice.id, NOW, NOW + HOUR)
        self.assertIsNone(await self.store.consume_password_reset("reset", NOW + HOUR))
        await self.store.add_password_reset("early", alice.id, NOW, NOW + HOUR)
        self.assertEqual(await self.store.consume_password_reset("early", NOW + HOUR - 1), alice.id)

    async def test_password_reset_hash_and_user_checked(self):
        alice = await self.make_user("alice")
        await self.store.add_password_reset("reset", alice.id, NOW, NOW + HOUR)
        await self.assertFails(self.store.add_password_reset("reset", alice.id, NOW, NOW + 2 * HOUR), Conflict)
        error = await self.assertFails(self.store.add_password_reset("r2", 99, NOW, NOW + HOUR), NotFound)
        self.assertEqual(error.error_code, 1003)
        self.assertEqual(await self.count_rows("password_resets"), 1)
        self.assertEqual(await self.store.consume_password_reset("reset", NOW + HOUR - 1), alice.id)


class MediaBehaviour:
    """The media items of every IStore (mixed in beside :class:`StoreBehaviour`)."""

    async def add_media(self, uploader, size=100, name="clip.webm", **options):
        return await self.store.add_media(uploader.id, name, "video/webm", size, "ab" * 32, "video",
                                          f"media/uploads/{name}", NOW, **options)

    async def test_add_and_get_media(self):
        alice = await self.make_user("alice")
        meeting = await self.make_meeting(alice)
        record = await self.store.add_media(alice.id, "talk.webm", "video/webm", 12345, "cd" * 32, "video",
                                            "media/uploads/ab/1", NOW, meeting_id=meeting.id, duration_ms=61_500,
                                            width=1280, height=720)
        self.assertEqual(record, MediaRecord(
            id=record.id, uploader_id=alice.id, meeting_id=meeting.id, filename="talk.webm",
            content_type="video/webm", size=12345, sha256="cd" * 32, file_type="video",
            storage_key="media/uploads/ab/1", created_at=NOW, duration_ms=61_500, width=1280, height=720,
            source_id=None))
        self.assertEqual(await self.store.get_media(record.id), record)
        self.assertIsNone(await self.store.get_media(record.id + 1))
        plain = await self.add_media(alice, name="notes.txt")
        self.assertEqual((plain.id, plain.meeting_id, plain.duration_ms, plain.width, plain.height),
                         (record.id + 1, None, None, None, None))

    async def test_large_sizes_and_durations(self):
        alice = await self.make_user("alice")
        record = await self.add_media(alice, size=5 << 40, duration_ms=2**40)
        self.assertEqual((await self.store.get_media(record.id)).size, 5 << 40)
        self.assertEqual(await self.store.media_usage(alice.id), 5 << 40)

    async def test_add_media_of_unknown_user_or_meeting(self):
        alice = await self.make_user("alice")
        await self.assertFails(self.store.add_media(alice.id + 50, "a", "text/plain", 1, "ab" * 32, "document",
                                                    "media/x", NOW), NotFound)
        await self.assertFails(self.add_media(alice, meeting_id=999), MeetingNotFound)
        await self.assertFails(self.add_media(alice, shared_with=[alice.id + 50]), NotFound)
        self.assertEqual(await self.count_rows("media"), 0)

    async def test_grants(self):
        alice, bob, carol = await self.make_user("alice"), await self.make_user("bob"), await self.make_user("carol")
        sent = await self.add_media(alice, shared_with=[bob.id, bob.id, alice.id])
        self.assertIs(await self.store.media_shared_with(sent.id, bob.id), True)
        self.assertIs(await self.store.media_shared_with(sent.id, carol.id), False)
        self.assertIs(await self.store.media_shared_with(sent.id, alice.id), False)  # she uploaded it
        self.assertEqual(await self.count_rows("media_grants"), 1)

    async def test_lists_newest_first_and_paged(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        meeting = await self.make_meeting(alice)
        first = await self.add_media(alice, name="1")
        shared = await self.add_media(bob, name="2", shared_with=[alice.id])
        of_meeting = await self.add_media(bob, name="3", meeting_id=meeting.id)
        mine = await self.add_media(alice, name="4", meeting_id=meeting.id)
        self.assertEqual(await self.store.list_media(0, 10, user_id=alice.id), (3, [mine, shared, first]))
        self.assertEqual(await self.store.list_media(1, 1, user_id=alice.id), (3, [shared]))
        self.assertEqual(await self.store.list_media(3, 5, user_id=alice.id), (3, []))
        self.assertEqual(await self.store.list_media(0, 10, user_id=bob.id), (2, [of_meeting, shared]))
        self.assertEqual(await self.store.list_media(0, 10, meeting_id=meeting.id), (2, [mine, of_meeting]))
        self.assertEqual(await self.store.list_media(0, 10, user_id=bob.id, meeting_id=meeting.id),
                         (1, [of_meeting]))
        await self.assertFails(self.store.list_media(-1, 10), InvalidInput)

    async def test_delete_media(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        source = await self.add_media(alice, shared_with=[bob.id])
        result = await self.add_media(alice, name="result.opus", source_id=source.id)
        self.assertEqual(result.source_id, source.id)
        self.assertEqual(await self.store.delete_media(source.id), source)
        self.assertIsNone(await self.store.delete_media(source.id))
        self.assertIsNone(await self.store.get_media(source.id))
        self.assertEqual(await self.count_rows("media_grants"), 0)
        # A result keeps its bytes and loses its source.
        self.assertIsNone((await self.store.get_media(result.id)).source_id)
        orphan = await self.add_media(alice, name="late", source_id=source.id)
        self.assertIsNone(orphan.source_id)
        # Ids are never reused.
        self.assertEqual((await self.add_media(alice)).id, orphan.id + 1)

    async def test_a_deleted_meeting_leaves_its_media_to_the_uploader(self):
        alice = await self.make_user("alice")
        meeting = await self.make_meeting(alice)
        record = await self.add_media(alice, meeting_id=meeting.id)
        await self.store.delete_meeting(meeting.id)
        self.assertIsNone((await self.store.get_media(record.id)).meeting_id)
        self.assertEqual(await self.store.list_media(0, 10, meeting_id=meeting.id), (0, []))

    async def test_quota(self):
        alice, bob = await self.make_user("alice"), await self.make_user("bob")
        self.assertEqual(await self.store.media_usage(alice.id), 0)
        await self.add_media(alice, size=600, quota=1000)
        await self.add_media(bob, size=900, quota=1000)  # another user's usage is his own
        error = await self.assertFails(self.add_media(alice, size=401, quota=1000), QuotaExceeded)
        self.assertEqual((error.code, error.error_code), (413, 3001))
        self.assertIn("600 of 1000 bytes", error.message)
        await self.add_media(alice, size=400, quota=1000)  # exactly full
        self.assertEqual(await self.store.media_usage(alice.id), 1000)
        await self.add_media(alice, size=5)  # no quota given: not checked (processing results)
        self.assertEqual(await self.count_rows("media"), 4)

    async def test_quota_of_uploads_at_once(self):
        # Each fits, not both: whichever commits second is refused.
        alice = await self.make_user("alice")
        outcomes = await gather_outcomes([self.add_media(alice, size=600, quota=1000) for _ in range(3)])
        self.assertEqual(sorted(type(outcome).__name__ for outcome in outcomes),
                         ["MediaRecord", "QuotaExceeded", "QuotaExceeded"])
        self.assertEqual(await self.store.media_usage(alice.id), 600)


async def gather_outcomes(coroutines) -> list:
    """Run ``coroutines`` at once -> each one's result or exception, in order."""
    from twisted.internet.defer import Deferred, DeferredList
    results = await DeferredList([Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)
    return [value if ok else value.value for ok, value in results]
