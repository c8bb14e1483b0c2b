"""
The behaviour every IStore gives, written once.

:class:`StoreBehaviour` is mixed into one trial TestCase per implementation
(``test_sqlite``, ``test_memory``), which supplies :meth:`make_store` and
:meth:`count_rows`. Whatever the implementation, the answers must be the same.
"""

from __future__ import annotations

from typing import Any

import attrs
from zope.interface.verify import verifyObject

from wecompany.errors import Conflict, InvalidInput, NotFound, Unavailable
from wecompany.store.interface import IStore
from wecompany.store.records import FileRecord, ProfileRecord, StoredMessage, UserRecord

NOW = 1_700_000_000.25
BIG_ID = 2**62 + 5  # a 63-bit message id


class StoreBehaviour:
    """Tests for an IStore; ``self.store`` is started in setUp and stopped after."""

    store: Any

    def make_store(self) -> Any:
        """A new, not yet started store."""
        raise NotImplementedError

    async def count_rows(self, table: str) -> int:
        """How many rows ``table`` ("users" or "profiles") of ``self.store`` holds."""
        raise NotImplementedError

    def setUp(self):
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
    async def test_provides_interface(self):
        self.assertTrue(verifyObject(IStore, self.store))
        self.assertIs(await self.store.ping(), True)

    async def test_stopped_store_is_unavailable(self):
        await self.store.stop()
        error = await self.assertFails(self.store.get_user(1), Unavailable)
        self.assertEqual(error.message, "store is not running")
        await self.assertFails(self.store.delete_offline_messages([]), Unavailable)
        await self.assertFails(self.store.list_users_by_ids([]), Unavailable)
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
            self.store.create_user("aLiCe", "h", "other@example.com", None, NOW), Conflict
        )
        self.assertEqual((error.code, error.error_code, error.message), (409, 1001, "username already exists"))
        await self.assertNothingWritten(1)
        self.assertEqual(await self.store.get_user_by_username("alice"), alice)
        self.assertIsNone(await self.store.get_user_by_login("other@example.com"))
        # The failed attempt used up no id.
        self.assertEqual((await self.make_user("bob")).id, alice.id + 1)

    async def test_email_clash(self):
        await self.make_user("alice", email="alice@example.com")
        error = await self.assertFails(
            self.store.create_user("bob", "h", "ALICE@example.com", None, NOW), Conflict
        )
        self.assertEqual((error.code, error.error_code, error.message), (409, 1002, "email already exists"))
        await self.assertNothingWritten(1)
        self.assertIsNone(await self.store.get_user_by_username("bob"))

    async def test_username_clash_is_reported_before_email_clash(self):
        await self.make_user("alice", email="alice@example.com")
        error = await self.assertFails(
            self.store.create_user("ALICE", "h", "alice@example.com", None, NOW), Conflict
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

