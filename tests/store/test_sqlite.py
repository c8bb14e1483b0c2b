"""
SQLiteStore: the shared store behaviour, plus what only a database file has
(durability across a restart, migrations, pragmas, foreign keys).

adbapi runs queries on a real thread pool, so these tests run on the real
reactor; nothing here waits on wall time.
"""

from __future__ import annotations

import os
import stat

import attrs
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.store.behaviour import HOUR, NOW, SETTINGS, MediaBehaviour, StoreBehaviour
from wecompany.errors import InvalidInput, Unavailable
from wecompany.store.dialect import SQLITE
from wecompany.store.records import StoredMessage
from wecompany.store.schema import SchemaTooNew, load_migrations, migrate
from wecompany.store.sqlite import SQLiteStore, connection_pool


async def query(store, sql, params=()):
    """Raw SQL on the store's own connection."""
    return await store._pool.runQuery(sql, params)


class SQLiteStoreTests(StoreBehaviour, MediaBehaviour, TestCase):
    def make_store(self, user_caches=(), meeting_caches=()):
        return SQLiteStore(":memory:", reactor, user_caches=list(user_caches), meeting_caches=list(meeting_caches))

    async def count_rows(self, table):
        [(count,)] = await query(self.store, f"SELECT COUNT(*) FROM {table}")
        return count


class _ClashBlindStore(SQLiteStore):
    """Skips the check before the insert, as if another writer raced it."""

    def _find_clash(self, txn, username, email, user_id=None):
        return None


class SQLiteOnlyTests(TestCase):
    async def open_store(self, path=":memory:", store_type=SQLiteStore):
        store = store_type(path, reactor)
        self.addCleanup(store.stop)
        await store.start()
        return store

    async def test_every_call_is_timed_by_its_operation(self):
        """The store's one run-in-thread path reports each call's latency under its operation's name."""
        from wecompany.domain.stats import Timings
        from wecompany.store.sql import operation_name
        timings = Timings((0.001, 10.0))
        store = SQLiteStore(":memory:", reactor, query_timings=timings)
        await store.start()
        self.addCleanup(store.stop)
        await store.ping()
        await store.ping()
        await store.create_user("Alice", "argon2-hash", "alice@example.com", "Al", NOW)
        await store.get_user_by_login("alice")
        self.assertEqual(sum(timings.data["ping"][:-1]), 2)
        self.assertEqual(sum(timings.data["user_by_login"][:-1]), 1)
        self.assertIn("create_user", timings.data)
        self.assertGreater(timings.data["ping"][-1], 0.0)
        self.assertEqual(operation_name(lambda txn: None), "other")

    async def test_a_number_no_column_holds_is_invalid_input(self):
        # The transports bound ids; this is the backstop for one that slips through.
        store = await self.open_store()
        for call in (lambda: store.get_user(2**63), lambda: store.get_file(2**64 + 1),
                     lambda: store.get_participant(1, -(2**63) - 1)):
            with self.assertRaises(InvalidInput):
                await call()
        self.assertIsNone(await store.get_user(2**63 - 1))

    async def test_database_files_are_private_whatever_the_umask(self):
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        path = os.path.abspath(self.mktemp())
        SQLiteStore(path, reactor).prepare()  # start-up's synchronous migration creates the file
        store = await self.open_store(path)
        await store.create_user("alice", "h", None, None, NOW)
        for name in (path, f"{path}-wal", f"{path}-shm"):
            self.assertEqual(stat.S_IMODE(os.stat(name).st_mode), 0o600, name)

    async def test_a_full_disk_is_unavailable_not_an_internal_error(self):
        # SQLite's own SQLITE_FULL, as a full disk gives it: the database may not grow.
        store = await self.open_store(self.mktemp())
        alice = await store.create_user("alice", "h", None, None, NOW)
        meeting, _ = await store.create_meeting("t", "", alice.id, NOW, None, 5, "video", None, SETTINGS, "r", NOW)
        [(pages,)] = await query(store, "PRAGMA page_count")
        await query(store, f"PRAGMA max_page_count = {pages}")
        self.assertIsNone(store.storage_problem)
        error = await self.assertFailure(store.add_meeting_message(meeting.id, alice.id, "x" * 5000, "text", NOW),
                                         Unavailable)
        self.assertIn("disk full", error.message)
        await self.assertFailure(store.store_offline_message(StoredMessage(1, alice.id, alice.id, "y" * 9000, NOW)),
                                 Unavailable)
        self.assertEqual(store.storage_problem, "disk full")
        self.assertEqual((await store.get_user(alice.id)).username, "alice")  # reads still work
        self.assertTrue(await store.ping())
        await query(store, f"PRAGMA max_page_count = {pages + 1000}")  # room again
        await store.add_meeting_message(meeting.id, alice.id, "fits now", "text", NOW)
        self.assertIsNone(store.storage_problem)

    async def test_connection_settings(self):
        store = await self.open_store(self.mktemp())
        settings = [
            (await query(store, f"PRAGMA {name}"))[0][0]
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        ]
        self.assertEqual(settings, ["wal", 2, 1, 5000])

    async def test_data_survives_reopen(self):
        path = self.mktemp()
        store = await self.open_store(path)
        alice = await store.create_user("alice", "h", "a@example.com", "Al", NOW)
        bob = await store.create_user("bob", "h", None, None, NOW)
        await store.add_contact(alice.id, bob.id, NOW)
        messages = [StoredMessage(id, alice.id, bob.id, f"text {id}", NOW + id) for id in (3, 1, 2)]
        for message in messages:
            await store.store_offline_message(message)
        record = await store.create_file(alice.id, "f", 1, "aa" * 32, "aa/f", NOW, recipient_id=bob.id)
        await store.stop()

        reopened = await self.open_store(path)
        self.assertEqual(await reopened.fetch_offline_messages(bob.id, 10), messages)
        self.assertEqual(await reopened.get_user_by_login("A@EXAMPLE.COM"), alice)
        self.assertEqual(await reopened.list_contacts(alice.id, 0, 50), (1, [bob]))
        self.assertEqual(await reopened.get_file(record.id), record)

    async def test_stop_finishes_queued_writes(self):
        path = self.mktemp()
        store = await self.open_store(path)
        message = StoredMessage(42, 1, 2, "sent just before shutdown", NOW)
        stored = store.store_offline_message(message)
        await store.stop()
        self.assertIsNone(self.successResultOf(stored))
        await self.assertFailure(store.fetch_offline_messages(2, 10), Unavailable)

        reopened = await self.open_store(path)
        self.assertEqual(await reopened.fetch_offline_messages(2, 10), [message])

    async def test_stop_while_starting(self):
        store = SQLiteStore(self.mktemp(), reactor)
        started = store.start()
        stopped = store.stop()
        self.assertIsNone(await started)
        self.assertIsNone(await stopped)
        await self.assertFailure(store.ping(), Unavailable)

    async def test_migrations_apply_once(self):
        path = self.mktemp()
        store = await self.open_store(path)
        alice = await store.create_user("alice", "h", None, None, NOW)
        await store.stop()
        store = await self.open_store(path)
        self.assertEqual(
            await query(store, "SELECT version, name FROM schema_version ORDER BY version"),
            [(1, "initial"), (2, "meetings"), (3, "token_version"), (4, "media")],
        )
        self.assertEqual(await store.get_user(alice.id), alice)

    async def test_upgrade_from_version_1(self):
        path = self.mktemp()
        pool = connection_pool(path, reactor)
        await migrate(pool, SQLITE, load_migrations(SQLITE)[:1])
        await pool.runOperation(
            "INSERT INTO users (username, email, password_hash, role, status, created_at)"
            " VALUES ('alice', 'a@example.com', 'h', 'user', 'active', ?)",
            (NOW,),
        )
        await pool.runOperation(
            "INSERT INTO profiles (user_id, nickname, updated_at) VALUES (1, 'Al', ?)", (NOW,)
        )
        pool.close()

        store = await self.open_store(path)
        self.assertEqual(
            await query(store, "SELECT version, name FROM schema_version ORDER BY version"),
            [(1, "initial"), (2, "meetings"), (3, "token_version"), (4, "media")],
        )
        tables = {name for (name,) in await query(store, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        added = {"meetings", "participants", "meeting_messages", "refresh_tokens", "password_resets"}
        self.assertLessEqual({"users", *added}, tables)
        alice = await store.get_user_by_login("A@EXAMPLE.COM")
        self.assertEqual((alice.id, alice.username, alice.created_at, alice.token_version), (1, "alice", NOW, 0))
        meeting, host = await store.create_meeting(
            "t", "", alice.id, NOW, None, 2, "video", None, SETTINGS, "room", NOW
        )
        self.assertEqual((host.username, host.nickname), ("alice", "Al"))
        self.assertEqual(await store.list_meetings(0, 10, member_id=alice.id), (1, [meeting]))

    async def test_newer_schema_is_refused(self):
        path = self.mktemp()
        store = await self.open_store(path)
        await query(store, "INSERT INTO schema_version (version, name) VALUES (99, 'future') RETURNING version")
        await store.stop()

        newer = SQLiteStore(path, reactor)
        error = await self.assertFailure(newer.start(), SchemaTooNew)
        self.assertIn("database schema version 99 is newer than this server knows (up to 4)", str(error))
        await self.assertFailure(newer.get_user(1), Unavailable)
        self.assertIsNone(await newer.stop())

    async def test_deleting_a_user_row_cascades(self):
        store = await self.open_store()
        alice = await store.create_user("alice", "h", None, None, NOW)
        bob = await store.create_user("bob", "h", None, None, NOW)
        await store.add_contact(alice.id, bob.id, NOW)
        await store.add_contact(bob.id, alice.id, NOW)
        await store._pool.runOperation("DELETE FROM users WHERE id = ?", (bob.id,))
        self.assertIsNone(await store.get_profile(bob.id))
        self.assertEqual(await store.list_contacts(alice.id, 0, 50), (0, []))
        self.assertEqual(await store.watchers_of(alice.id), [])
        self.assertEqual(await query(store, "SELECT COUNT(*) FROM contacts"), [(0,)])

    async def test_unique_violation_is_still_a_conflict(self):
        store = await self.open_store(store_type=_ClashBlindStore)
        await store.create_user("alice", "h", "alice@example.com", None, NOW)
        for username, email, error_code in [("ALICE", None, 1001), ("bob", "Alice@Example.com", 1002)]:
            error = await self.assertFailure(store.create_user(username, "h", email, None, NOW), InvalidInput)
            self.assertEqual(error.error_code, error_code)
        self.assertEqual(await query(store, "SELECT COUNT(*) FROM users"), [(1,)])
        self.assertEqual(await query(store, "SELECT COUNT(*) FROM profiles"), [(1,)])

    async def test_meetings_survive_reopen(self):
        path = self.mktemp()
        store = await self.open_store(path)
        alice = await store.create_user("alice", "h", "a@example.com", "Al", NOW)
        bob = await store.create_user("bob", "h", None, None, NOW)
        meeting, _ = await store.create_meeting(
            "Planning", "Q3", alice.id, NOW + HOUR, NOW + 2 * HOUR, 5, "audio", "pw", SETTINGS, "room-1", NOW
        )
        await store.join_meeting(meeting.id, bob.id, "participant", NOW + 1)
        await store.update_participant(meeting.id, bob.id, {"video_enabled": False})
        message = await store.add_meeting_message(meeting.id, bob.id, "hi", "text", NOW + 2)
        token = await store.add_refresh_token("old", alice.id, "family", NOW, NOW + HOUR)
        new = await store.rotate_refresh_token("old", "new", NOW + 1, NOW + HOUR)
        await store.add_password_reset("reset", alice.id, NOW, NOW + HOUR)
        participants = await store.list_participants(meeting.id)
        await store.stop()

        reopened = await self.open_store(path)
        self.assertEqual(await reopened.get_meeting(meeting.id), meeting)
        self.assertEqual(await reopened.list_participants(meeting.id), participants)
        self.assertIs(participants[1].video_enabled, False)
        self.assertEqual(await reopened.list_meeting_messages(meeting.id, 0, 10), (1, [message]))
        self.assertEqual(
            await reopened.get_refresh_token("old"), attrs.evolve(token, revoked_at=NOW + 1, replaced_by="new")
        )
        self.assertEqual(await reopened.get_refresh_token("new"), new)
        self.assertEqual(await reopened.consume_password_reset("reset", NOW + 1), alice.id)

    async def test_settings_and_flags_are_stored_as_json_and_integers(self):
        store = await self.open_store()
        alice = await store.create_user("alice", "h", None, None, NOW)
        meeting, _ = await store.create_meeting("t", "", alice.id, NOW, None, 2, "video", None,
                                                {"b": True, "a": False}, "room", NOW)
        self.assertEqual(await query(store, "SELECT settings FROM meetings"), [('{"a":false,"b":true}',)])
        await store.update_participant(meeting.id, alice.id, {"audio_enabled": False})
        self.assertEqual(await query(store, "SELECT audio_enabled, video_enabled FROM participants"), [(0, 1)])

    async def test_deleting_a_user_row_cascades_to_meetings(self):
        store = await self.open_store()
        alice = await store.create_user("alice", "h", None, None, NOW)
        bob = await store.create_user("bob", "h", None, None, NOW)
        mine, _ = await store.create_meeting("a", "", alice.id, NOW, None, 5, "video", None, {}, "a", NOW)
        theirs, _ = await store.create_meeting("b", "", bob.id, NOW, None, 5, "video", None, {}, "b", NOW)
        await store.join_meeting(mine.id, bob.id, "participant", NOW)
        await store.add_meeting_message(mine.id, bob.id, "hi", "text", NOW)
        await store.add_refresh_token("t", bob.id, "f", NOW, NOW + HOUR)
        await store.add_password_reset("r", bob.id, NOW, NOW + HOUR)
        await store._pool.runOperation("DELETE FROM users WHERE id = ?", (bob.id,))
        self.assertIsNone(await store.get_meeting(theirs.id))
        self.assertEqual([p.user_id for p in await store.list_participants(mine.id)], [alice.id])
        for table in ("meeting_messages", "refresh_tokens", "password_resets"):
            self.assertEqual(await query(store, f"SELECT COUNT(*) FROM {table}"), [(0,)], table)

    async def test_unique_violation_on_update_is_still_a_conflict(self):
        store = await self.open_store(store_type=_ClashBlindStore)
        alice = await store.create_user("alice", "h", "alice@example.com", None, NOW)
        bob = await store.create_user("bob", "h", "bob@example.com", None, NOW)
        for changes, error_code in [({"username": "ALICE"}, 1001), ({"email": "Alice@Example.com"}, 1002)]:
            error = await self.assertFailure(store.update_user(bob.id, changes), InvalidInput)
            self.assertEqual(error.error_code, error_code)
        self.assertEqual(await store.get_user(bob.id), bob)
        self.assertEqual(await store.get_user(alice.id), alice)


class _CountingStore(SQLiteStore):
    """Records the size of every meeting-message transaction."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.batches = []

    def _add_meeting_messages_txn(self, txn, batch):
        self.batches.append(len(batch))
        return super()._add_meeting_messages_txn(txn, batch)


class _FailingBatchStore(_CountingStore):
    """Its first meeting-message transaction fails as a whole (a full disk, say)."""

    def _add_meeting_messages_txn(self, txn, batch):
        if not self.batches:
            self.batches.append(len(batch))
            raise OSError("disk full")
        return super()._add_meeting_messages_txn(txn, batch)


class _PacedStore(_CountingStore):
    """Paced by a fake clock (the pool itself needs the real reactor's threads)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.fake_clock = Clock()

    def _clock(self):
        return self.fake_clock


class GroupCommitTests(TestCase):
    """Meeting messages asked for while others are being committed share one transaction."""

    async def open_store(self, path=":memory:", store_type=_CountingStore, **kw):
        store = store_type(path, reactor, **kw)
        self.addCleanup(store.stop)
        await store.start()
        alice = await store.create_user("alice", "h", None, None, NOW)
        meeting, _ = await store.create_meeting("m", "", alice.id, NOW, None, 10, "video", None, SETTINGS,
                                                "room-1", NOW)
        return store, alice, meeting

    async def test_messages_asked_together_are_committed_together(self):
        store, alice, meeting = await self.open_store()
        bob = await store.create_user("bob", "h", None, "Bobby", NOW)
        asked = [store.add_meeting_message(meeting.id, (alice, bob)[i % 3 == 0].id, f"m{i}", "text", NOW + i)
                 for i in range(250)]
        records = [await d for d in asked]
        self.assertEqual([r.content for r in records], [f"m{i}" for i in range(250)])
        # The first goes at once; the other 249 wait for it and go as one
        # transaction (in three INSERTs: at most 500 parameters each).
        self.assertEqual(store.batches, [1, 249])
        self.assertEqual(await store.list_meeting_messages(meeting.id, 0, 300), (250, records))
        self.assertEqual({r.nickname for r in records if r.user_id == bob.id}, {"Bobby"})

    async def test_batches_start_at_most_once_an_interval(self):
        store, alice, meeting = await self.open_store(store_type=_PacedStore, commit_interval=0.5)
        clock = store.fake_clock
        await store.add_meeting_message(meeting.id, alice.id, "first", "text", NOW)  # at once
        second = store.add_meeting_message(meeting.id, alice.id, "second", "text", NOW)
        third = store.add_meeting_message(meeting.id, alice.id, "third", "text", NOW)
        self.assertNoResult(second)
        self.assertEqual(store.batches, [1])
        clock.advance(0.5)
        self.assertEqual([(await second).content, (await third).content], ["second", "third"])
        self.assertEqual(store.batches, [1, 2])
        clock.advance(10)  # after a quiet spell a message goes at once
        await store.add_meeting_message(meeting.id, alice.id, "fourth", "text", NOW)
        self.assertEqual(store.batches, [1, 2, 1])
        # A read asked for meanwhile does not wait for the clock, nor do the messages before it.
        fifth = store.add_meeting_message(meeting.id, alice.id, "fifth", "text", NOW)
        total, _ = await store.list_meeting_messages(meeting.id, 0, 10)
        self.assertEqual((total, (await fifth).content), (5, "fifth"))
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_other_operations_keep_their_place(self):
        store, alice, meeting = await self.open_store()
        first = store.add_meeting_message(meeting.id, alice.id, "first", "text", NOW)
        second = store.add_meeting_message(meeting.id, alice.id, "second", "text", NOW)  # waits for the next batch
        listed = store.list_meeting_messages(meeting.id, 0, 10)  # asked after both: must see both
        third = store.add_meeting_message(meeting.id, alice.id, "third", "text", NOW)
        total, page = await listed
        self.assertEqual([r.content for r in page], ["first", "second"])
        self.assertEqual([(await d).content for d in (first, second, third)], ["first", "second", "third"])
        self.assertEqual(store.batches, [1, 1, 1])

    async def test_too_many_waiting_is_refused_clearly(self):
        store, alice, meeting = await self.open_store(max_pending_messages=3)
        asked = [store.add_meeting_message(meeting.id, alice.id, f"m{i}", "text", NOW) for i in range(4)]
        refused = store.add_meeting_message(meeting.id, alice.id, "one too many", "text", NOW)
        error = self.failureResultOf(refused, Unavailable).value
        self.assertEqual(error.code, 503)
        self.assertEqual([(await d).content for d in asked], ["m0", "m1", "m2", "m3"])
        # Once the disk has caught up, messages are taken again.
        later = await store.add_meeting_message(meeting.id, alice.id, "later", "text", NOW)
        self.assertEqual((await store.list_meeting_messages(meeting.id, 0, 10))[1][-1], later)

    async def test_a_failed_transaction_fails_its_messages_only(self):
        store, alice, meeting = await self.open_store(store_type=_FailingBatchStore)
        lost = store.add_meeting_message(meeting.id, alice.id, "lost", "text", NOW)
        kept = store.add_meeting_message(meeting.id, alice.id, "kept", "text", NOW)
        await self.assertFailure(lost, OSError)
        record = await kept
        self.assertEqual(record.content, "kept")
        self.assertEqual(await store.list_meeting_messages(meeting.id, 0, 10), (1, [record]))

    async def test_stop_commits_waiting_messages(self):
        path = self.mktemp()
        store, alice, meeting = await self.open_store(path)
        asked = [store.add_meeting_message(meeting.id, alice.id, f"m{i}", "text", NOW) for i in range(5)]
        await store.stop()
        records = [self.successResultOf(d) for d in asked]
        self.assertEqual([r.content for r in records], [f"m{i}" for i in range(5)])
        await self.assertFailure(store.add_meeting_message(meeting.id, alice.id, "late", "text", NOW), Unavailable)
        reopened = SQLiteStore(path, reactor)
        self.addCleanup(reopened.stop)
        await reopened.start()
        self.assertEqual(await reopened.list_meeting_messages(meeting.id, 0, 10), (5, records))


class PrepareTests(TestCase):
    """SQLiteStore.prepare(): synchronous migrations for start-up."""

    def test_prepare_then_start(self):
        import sqlite3

        from wecompany.store.sqlite import SQLiteStore
        path = self.mktemp()
        store = SQLiteStore(path)
        store.prepare()
        with sqlite3.connect(path) as connection:
            versions = [v for (v,) in connection.execute("SELECT version FROM schema_version ORDER BY version")]
        self.assertEqual(versions, [1, 2, 3, 4])
        store.prepare()  # idempotent
        d = store.start()
        d.addCallback(lambda _: store.stop())
        return d

    def test_prepare_refuses_a_newer_schema(self):
        import sqlite3

        from wecompany.store.schema import SchemaTooNew
        from wecompany.store.sqlite import SQLiteStore
        path = self.mktemp()
        SQLiteStore(path).prepare()
        with sqlite3.connect(path) as connection:
            connection.execute("INSERT INTO schema_version VALUES (99, 'future')")
        self.assertRaises(SchemaTooNew, SQLiteStore(path).prepare)


class StartingStoreTests(TestCase):
    async def test_calls_made_while_starting_wait_for_the_start(self):
        store = SQLiteStore(self.mktemp())
        started = store.start()
        # Issued before the migrations are done: answered after them, not refused.
        pinged = store.ping()
        self.assertTrue(await pinged)
        await started
        await store.stop()
