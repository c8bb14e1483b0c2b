"""
PostgreSQLStore: the shared store behaviour, plus what only a database that
several daemons share has (concurrent migrations and writers, lost
connections, server-side errors).

The server is ``WECOMPANY_TEST_POSTGRESQL`` (see :mod:`tests.pgtesting`); each
test has a database of its own. adbapi runs queries on a real thread pool, so
these tests run on the real reactor. Where two stores must race, the test
makes them: it holds a lock both need, waits until the server says both wait
for it, then lets go; nothing here waits on wall time.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit, urlunsplit

import attrs
import psycopg
from twisted.enterprise.adbapi import ConnectionLost
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import pgtesting
from tests.store.behaviour import HOUR, NOW, SETTINGS, MediaBehaviour, StoreBehaviour
from wecompany.errors import (
    EmailTaken,
    InvalidInput,
    MeetingFull,
    Unavailable,
    UsernameTaken,
)
from wecompany.store.dialect import POSTGRESQL
from wecompany.store.memory import MemoryStore
from wecompany.store.postgres import (
    PostgreSQLStore,
    PreparationError,
    connect,
    connection_arguments,
)
from wecompany.store.records import StoredMessage
from wecompany.store.schema import SchemaTooNew, load_migrations, migrate_now


async def query(store, statement, params=()):
    """Raw SQL on the store's own connection."""
    return await store._pool.runQuery(statement, params)


class PostgreSQLStoreTests(StoreBehaviour, MediaBehaviour, TestCase):
    def make_store(self, user_caches=(), meeting_caches=()):
        return PostgreSQLStore(pgtesting.emptied_database(self), reactor, user_caches=list(user_caches),
                               meeting_caches=list(meeting_caches))

    async def count_rows(self, table):
        [(count,)] = await query(self.store, f"SELECT COUNT(*) FROM {table}")
        return count


class _ClashBlindStore(PostgreSQLStore):
    """Skips the check before the insert, as if another writer raced it."""

    def _find_clash(self, txn, username, email, user_id=None):
        return None


async def _outcomes(*deferreds):
    """Each Deferred's result or exception, once all have fired."""
    results = await DeferredList(list(deferreds), consumeErrors=True)
    return [value if ok else value.value for ok, value in results]


class _PostgreSQLTestCase(TestCase):
    def database(self):
        """An empty database with the schema (see :func:`tests.pgtesting.emptied_database`)."""
        return pgtesting.emptied_database(self)

    async def open_store(self, url, store_type=PostgreSQLStore, **kw):
        store = store_type(url, reactor, **kw)
        self.addCleanup(store.stop)
        await store.start()
        return store

    def hold(self, url, *statements):
        """
        Run ``statements`` in a transaction on a connection of the test's own
        and keep it open (with its locks) -> a function that commits it.
        """
        holder = psycopg.connect(url)
        self.addCleanup(holder.close)
        for statement in statements:
            holder.execute(statement)
        return holder.commit

    async def until_waiting(self, url, sessions):
        await pgtesting.wait_until(self, lambda: pgtesting.waiting_for_locks(self, url) == sessions,
                                   f"{sessions} sessions to wait for a lock")


class PostgreSQLOnlyTests(_PostgreSQLTestCase):
    async def test_migrations_are_applied_once_by_two_stores_starting_together(self):
        url = pgtesting.scratch_database(self)
        # Both stores reach the migrations' lock while the test holds it.
        release = self.hold(url, POSTGRESQL.schema_lock)
        first, second = PostgreSQLStore(url, reactor), PostgreSQLStore(url, reactor)
        for store in (first, second):
            self.addCleanup(store.stop)
        started = [first.start(), second.start()]
        await self.until_waiting(url, 2)
        release()
        self.assertEqual(await _outcomes(*started), [None, None])
        self.assertEqual(await query(first, "SELECT version, name FROM schema_version ORDER BY version"),
                         [(1, "initial"), (2, "meetings"), (3, "token_version"), (4, "media")])
        alice = await first.create_user("alice", "h", None, None, NOW)
        self.assertEqual(await second.get_user(alice.id), alice)

    async def test_two_stores_on_one_database_see_each_others_writes(self):
        url = self.database()
        one, other = await self.open_store(url), await self.open_store(url)
        alice = await one.create_user("alice", "h", "alice@example.com", "Al", NOW)
        self.assertEqual(await other.get_user_by_login("ALICE@example.com"), alice)
        await self.assertFailure(other.create_user("ALICE", "h", None, None, NOW), UsernameTaken)
        meeting, _ = await other.create_meeting("m", "", alice.id, NOW, None, 5, "video", None, SETTINGS, "r", NOW)
        message = await one.add_meeting_message(meeting.id, alice.id, "hello", "text", NOW)
        self.assertEqual(await other.list_meeting_messages(meeting.id, 0, 10), (1, [message]))
        # A refresh token rotated through one store is spent for the other.
        await one.add_refresh_token("first", alice.id, "family", NOW, NOW + HOUR)
        second = await other.rotate_refresh_token("first", "second", NOW + 1, NOW + HOUR)
        self.assertIsNone(await one.rotate_refresh_token("first", "stolen", NOW + 2, NOW + HOUR))
        self.assertEqual(await other.get_refresh_token("second"), attrs.evolve(second, revoked_at=NOW + 2))

    async def test_join_capacity_holds_under_two_concurrent_stores(self):
        url = self.database()
        one, other = await self.open_store(url), await self.open_store(url)
        alice, bob, carol = [await one.create_user(name, "h", None, None, NOW) for name in ("alice", "bob", "carol")]
        # The host and one more.
        meeting, _ = await one.create_meeting("m", "", alice.id, NOW, None, 2, "video", None, SETTINGS, "r", NOW)
        # Both joins get as far as the participants table, then wait: without
        # the meeting's row lock, both would count one seat taken and take the last.
        release = self.hold(url, "LOCK TABLE participants IN EXCLUSIVE MODE")
        joins = [one.join_meeting(meeting.id, bob.id, "participant", NOW),
                 other.join_meeting(meeting.id, carol.id, "participant", NOW)]
        await self.until_waiting(url, 2)
        release()
        outcomes = await _outcomes(*joins)
        admitted = [outcome for outcome in outcomes if isinstance(outcome, tuple)]
        refused = [outcome for outcome in outcomes if isinstance(outcome, MeetingFull)]
        self.assertEqual((len(admitted), len(refused)), (1, 1), outcomes)
        self.assertEqual(len(await other.list_participants(meeting.id)), 2)

    async def test_concurrent_clashes_are_still_username_and_email_taken(self):
        url = self.database()
        one, other = await self.open_store(url), await self.open_store(url)
        for first, second, error_type in [(("alice", "a@example.com"), ("ALICE", "b@example.com"), UsernameTaken),
                                          (("bob", "bob@example.com"), ("robert", "BOB@example.com"), EmailTaken)]:
            # Both look for a clash and find none, then insert.
            release = self.hold(url, "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
            created = [one.create_user(first[0], "h", first[1], None, NOW),
                       other.create_user(second[0], "h", second[1], None, NOW)]
            await self.until_waiting(url, 2)
            release()
            outcomes = await _outcomes(*created)
            self.assertEqual(sorted(type(outcome).__name__ for outcome in outcomes),
                             sorted(["UserRecord", error_type.__name__]), outcomes)
        self.assertEqual(await query(one, "SELECT COUNT(*) FROM users"), [(2,)])
        self.assertEqual(await query(one, "SELECT COUNT(*) FROM profiles"), [(2,)])

    async def test_unique_violation_is_still_a_conflict(self):
        store = await self.open_store(self.database(), store_type=_ClashBlindStore)
        await store.create_user("alice", "h", "username@example.com", None, NOW)
        bob = await store.create_user("bob", "h", "bob@example.com", None, NOW)
        # The server's message quotes the clashing value, here one with
        # "username" in it: the constraint's name tells which column it was.
        for username, email, error_code in [("ALICE", None, 1001), ("carol", "USERNAME@example.com", 1002)]:
            error = await self.assertFailure(store.create_user(username, "h", email, None, NOW), InvalidInput)
            self.assertEqual(error.error_code, error_code)
        for changes, error_code in [({"username": "ALICE"}, 1001), ({"email": "Username@Example.com"}, 1002)]:
            error = await self.assertFailure(store.update_user(bob.id, changes), InvalidInput)
            self.assertEqual(error.error_code, error_code)
        self.assertEqual(await query(store, "SELECT COUNT(*) FROM profiles"), [(2,)])
        self.assertEqual(await store.get_user(bob.id), bob)

    async def test_a_killed_connection_is_unavailable_then_replaced(self):
        store = await self.open_store(self.database())
        alice = await store.create_user("alice", "h", None, None, NOW)
        [(pid,)] = await query(store, "SELECT pg_backend_pid()")
        # Returns once the server process has exited.
        [(terminated,)] = pgtesting.admin(self).execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        self.assertIs(terminated, True)
        error = await self.assertFailure(store.get_user(alice.id), Unavailable)
        self.assertEqual(error.code, 503)
        self.assertEqual(error.message,
                         "the database cannot be reached right now (the server ended the connection): try again later")
        # adbapi logs the rollback it could not make on the dead connection.
        self.flushLoggedErrors(psycopg.OperationalError, ConnectionLost)
        self.assertIsNone(store.storage_problem)  # not a storage problem: /health's ping tells
        self.assertEqual(await store.get_user(alice.id), alice)
        [(new_pid,)] = await query(store, "SELECT pg_backend_pid()")
        self.assertNotEqual(new_pid, pid)
        self.assertEqual((await store.create_user("bob", "h", None, None, NOW)).username, "bob")

    async def test_a_server_that_goes_away_and_comes_back(self):
        # The store reaches the server through a proxy the test stops and
        # starts again, as a server restart looks from the daemon.
        url = self.database()
        arguments = connection_arguments(url)
        proxy = _Proxy(arguments.get("host") or "127.0.0.1", int(arguments.get("port") or 5432))
        port = proxy.listen()
        self.addCleanup(proxy.stop)
        store = await self.open_store(_through(url, port))
        alice = await store.create_user("alice", "h", None, None, NOW)

        await proxy.stop()  # connections dropped, new ones refused
        for _ in range(2):  # the lost connection, then no connection at all
            error = await self.assertFailure(store.get_user(alice.id), Unavailable)
            self.assertEqual(error.code, 503)
        await self.assertFailure(store.ping(), Unavailable)
        self.flushLoggedErrors(psycopg.OperationalError, ConnectionLost)

        proxy.listen(port)
        self.assertTrue(await store.ping())
        self.assertEqual(await store.get_user(alice.id), alice)
        self.assertIsNone(store.storage_problem)

    async def test_an_unreachable_server_stops_prepare_with_a_clear_error(self):
        # Bound but not listening: every connection is refused.
        closed = socket.socket()
        self.addCleanup(closed.close)
        closed.bind(("127.0.0.1", 0))
        url = f"postgresql://wc:s3cret-pw@127.0.0.1:{closed.getsockname()[1]}/wecompany"
        store = PostgreSQLStore(url, reactor)
        error = self.assertRaises(PreparationError, store.prepare)
        self.assertIn(f"cannot connect to the PostgreSQL database postgresql://wc@127.0.0.1:"
                      f"{closed.getsockname()[1]}/wecompany: connection failed", str(error))
        self.assertIn("Connection refused", str(error))
        self.assertNotIn("s3cret-pw", str(error) + repr(store))

    def test_a_malformed_url_is_refused_without_its_password(self):
        error = self.assertRaises(ValueError, PostgreSQLStore, "postgresql://wc:s3cret-pw@db/x?nonsense=1")
        self.assertIn("postgresql://wc:***@db/x?nonsense=1 is not a usable PostgreSQL URL", str(error))
        self.assertNotIn("s3cret-pw", str(error))

    def test_prepare_migrates_and_refuses_a_newer_schema(self):
        url = pgtesting.scratch_database(self)
        PostgreSQLStore(url, reactor).prepare()
        PostgreSQLStore(url, reactor).prepare()  # idempotent
        connection = pgtesting.connect(self, url)
        self.assertEqual(connection.execute("SELECT version FROM schema_version ORDER BY version").fetchall(),
                         [(1,), (2,), (3,), (4,)])
        connection.execute("INSERT INTO schema_version VALUES (99, 'future')")
        error = self.assertRaises(SchemaTooNew, PostgreSQLStore(url, reactor).prepare)
        self.assertIn("database schema version 99 is newer than this server knows (up to 4)", str(error))

    async def test_a_user_with_rights_on_the_tables_only_starts_on_an_up_to_date_database(self):
        role = pgtesting.scratch_role(self)  # first: dropped after the database
        url = pgtesting.scratch_database(self)
        PostgreSQLStore(url, reactor).prepare()  # by its owner: a DBA, or the first start
        connection = pgtesting.connect(self, url)
        connection.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role.name}")
        connection.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role.name}")
        connection.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role.name}")
        as_role = role.url(url)
        PostgreSQLStore(as_role, reactor).prepare()
        store = await self.open_store(as_role)
        self.assertEqual((await store.create_user("alice", "h", None, None, NOW)).id, 1)

    async def test_upgrade_from_version_1(self):
        url = pgtesting.scratch_database(self)
        dialect = POSTGRESQL
        with connect(connection_arguments(url)) as connection:
            migrate_now(connection, dialect, load_migrations(dialect)[:1])
            connection.execute("INSERT INTO users (username, email, password_hash, role, status, created_at)"
                               " VALUES ('alice', 'a@example.com', 'h', 'user', 'active', %s)", (NOW,))
            connection.execute("INSERT INTO profiles (user_id, nickname, updated_at) VALUES (1, 'Al', %s)", (NOW,))
        store = await self.open_store(url)
        alice = await store.get_user_by_login("A@EXAMPLE.COM")
        self.assertEqual((alice.id, alice.username, alice.created_at, alice.token_version), (1, "alice", NOW, 0))
        meeting, host = await store.create_meeting("t", "", alice.id, NOW, None, 2, "video", None, SETTINGS, "r", NOW)
        self.assertEqual((host.username, host.nickname), ("alice", "Al"))
        self.assertEqual(await store.list_meetings(0, 10, member_id=alice.id), (1, [meeting]))
        self.assertEqual((await store.create_user("bob", "h", None, None, NOW)).id, 2)

    async def test_column_types(self):
        store = await self.open_store(self.database())
        rows = await query(store, "SELECT table_name, column_name, data_type, is_identity"
                                  " FROM information_schema.columns WHERE table_schema = current_schema()"
                                  " AND (table_name, column_name) IN (('users', 'id'), ('users', 'username'),"
                                  " ('users', 'email'), ('users', 'created_at'), ('offline_messages', 'id'),"
                                  " ('meetings', 'creator_id')) ORDER BY table_name, column_name")
        self.assertEqual(rows, [
            ("meetings", "creator_id", "bigint", "NO"),
            ("offline_messages", "id", "bigint", "NO"),
            ("users", "created_at", "double precision", "NO"),
            ("users", "email", "USER-DEFINED", "NO"),
            ("users", "id", "bigint", "YES"),
            ("users", "username", "USER-DEFINED", "NO"),
        ])
        [(udt,)] = await query(store, "SELECT udt_name FROM information_schema.columns"
                                      " WHERE table_name = 'users' AND column_name = 'username'")
        self.assertEqual(udt, "citext")

    async def test_a_number_no_column_holds_is_invalid_input(self):
        store = await self.open_store(self.database())
        for call in (lambda: store.get_user(2**63), lambda: store.get_file(2**64 + 1),
                     lambda: store.get_participant(1, -(2**63) - 1)):
            await self.assertFailure(call(), InvalidInput)
        alice = await store.create_user("alice", "h", None, None, NOW)
        # A BIGINT holds it, an INTEGER column does not (unlike SQLite's, which are 64 bits).
        await self.assertFailure(
            store.create_meeting("t", "", alice.id, NOW, None, 2**40, "video", None, {}, "r", NOW), InvalidInput)
        self.assertIsNone(await store.get_user(2**63 - 1))
        message = StoredMessage(2**63 - 1, alice.id, alice.id, "the largest id", NOW)
        await store.store_offline_message(message)
        self.assertEqual(await store.fetch_offline_messages(alice.id, 10), [message])

    async def test_a_full_disk_is_unavailable_not_an_internal_error(self):
        url = self.database()
        store = await self.open_store(url)
        alice = await store.create_user("alice", "h", None, None, NOW)
        meeting, _ = await store.create_meeting("t", "", alice.id, NOW, None, 5, "video", None, SETTINGS, "r", NOW)
        # What the server says when it cannot extend a file: SQLSTATE 53100.
        connection = pgtesting.connect(self, url)
        connection.execute("CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                           " RAISE EXCEPTION 'could not extend file: No space left on device'"
                           " USING ERRCODE = 'disk_full'; END $$")
        self.addCleanup(connection.execute, "DROP FUNCTION IF EXISTS disk_full() CASCADE")
        for table in ("meeting_messages", "offline_messages"):
            connection.execute(f"CREATE TRIGGER disk_full BEFORE INSERT ON {table}"
                               " FOR EACH ROW EXECUTE FUNCTION disk_full()")
        self.assertIsNone(store.storage_problem)
        error = await self.assertFailure(store.add_meeting_message(meeting.id, alice.id, "x", "text", NOW),
                                         Unavailable)
        self.assertIn("disk full", error.message)
        await self.assertFailure(store.store_offline_message(StoredMessage(1, alice.id, alice.id, "y", NOW)),
                                 Unavailable)
        self.assertEqual(store.storage_problem, "disk full")
        self.assertEqual((await store.get_user(alice.id)).username, "alice")  # reads still work
        self.assertTrue(await store.ping())
        connection.execute("DROP FUNCTION disk_full() CASCADE")  # room again
        await store.add_meeting_message(meeting.id, alice.id, "fits now", "text", NOW)
        self.assertIsNone(store.storage_problem)

    async def test_stop_finishes_queued_writes(self):
        url = self.database()
        store = await self.open_store(url)
        alice = await store.create_user("alice", "h", None, None, NOW)
        meeting, _ = await store.create_meeting("m", "", alice.id, NOW, None, 5, "video", None, SETTINGS, "r", NOW)
        message = StoredMessage(42, 1, 2, "sent just before shutdown", NOW)
        asked = [store.store_offline_message(message),
                 *[store.add_meeting_message(meeting.id, alice.id, f"m{i}", "text", NOW) for i in range(5)]]
        await store.stop()
        self.assertIsNone(self.successResultOf(asked[0]))
        records = [self.successResultOf(d) for d in asked[1:]]
        await self.assertFailure(store.fetch_offline_messages(2, 10), Unavailable)

        reopened = await self.open_store(url)
        self.assertEqual(await reopened.fetch_offline_messages(2, 10), [message])
        self.assertEqual(await reopened.list_meeting_messages(meeting.id, 0, 10), (5, records))

    async def test_reads_see_one_snapshot_and_do_not_write(self):
        store = await self.open_store(self.database())
        isolation, read_only = await store._read(
            lambda txn: store._one(txn, "SELECT current_setting('transaction_isolation'),"
                                        " current_setting('transaction_read_only')"))
        self.assertEqual((isolation, read_only), ("repeatable read", "on"))


class LocaleTests(_PostgreSQLTestCase):
    """Whatever the database's locale, case is folded and sorted as by the other stores."""

    async def test_a_linguistic_locale_folds_and_sorts_as_sqlite_does(self):
        # ICU's en-US sorts "Élan" before "Zed" and lower()s "É"; SQLite's
        # NOCASE and lower(), and MemoryStore, do neither.
        url = pgtesting.scratch_database(self, "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                                               " LOCALE 'C.UTF-8'")
        stores = [await self.open_store(url), MemoryStore()]
        await stores[1].start()
        answers = []
        for store in stores:
            owner = await store.create_user("owner", "h", None, None, NOW)
            for name in ("Élan", "Zed", "_under", "alpha", "9lives"):
                user = await store.create_user(name, "h", f"{name}@example.com", None, NOW)
                await store.add_contact(owner.id, user.id, NOW)
            await store.create_meeting("Café CRÈME", "", owner.id, NOW, None, 2, "video", None, {}, "r", NOW)
            _, contacts = await store.list_contacts(owner.id, 0, 10)
            answers.append([
                [user.username for user in contacts],
                [(await store.list_users(0, 10, keyword=keyword))[0] for keyword in ("élan", "ÉLAN", "ALPHA")],
                [(await store.list_meetings(0, 10, keyword=keyword))[0] for keyword in ("CAFÉ", "café", "crème")],
            ])
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0][0], ["9lives", "_under", "alpha", "Zed", "Élan"])


class _Proxy:
    """A TCP proxy on a loopback port, to the PostgreSQL server, that can be stopped and started."""

    def __init__(self, host, port):
        self.factory = _TrackingProxyFactory(host, port)
        self.listening = None

    def listen(self, port=0):
        self.listening = reactor.listenTCP(port, self.factory, interface="127.0.0.1")
        return self.listening.getHost().port

    async def stop(self):
        if self.listening is not None:
            listening, self.listening = self.listening, None
            await listening.stopListening()
        for connection in list(self.factory.connections):
            connection.transport.abortConnection()


class _TrackingServer(ProxyServer):
    def connectionMade(self):
        self.factory.connections.add(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.connections.discard(self)
        super().connectionLost(reason)


class _TrackingProxyFactory(ProxyFactory):
    protocol = _TrackingServer

    def __init__(self, host, port):
        super().__init__(host, port)
        self.connections = set()


def _through(url, port):
    """``url`` with the proxy's loopback port as its address."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}{'@' if userinfo else ''}127.0.0.1:{port}"))



class ErrorMappingTests(SynchronousTestCase):
    """What each of the server's errors is to the store's callers (no server needed)."""

    def test_storage_problems_and_outages(self):
        store = PostgreSQLStore("postgresql://wc@127.0.0.1/wecompany", reactor)
        cases = [
            # SQLSTATE, storage_problem (lasts until a write succeeds), outage (one call's 503)
            ("53100", "disk full", None),
            ("58030", "disk I/O error", None),
            ("25006", "the database is read-only", None),
            ("57P01", None, "the server ended the connection"),
            ("57P02", None, "the server crashed"),
            ("57P03", None, "the server is starting up"),
            ("08006", None, "connection failure"),
            ("53300", None, "the server is out of resources"),
            ("57014", None, None),  # a cancelled statement: a 500, as any bug
            ("23505", None, None),
        ]
        for sqlstate, problem, outage in cases:
            error = psycopg.errors.lookup(sqlstate)()
            self.assertEqual((store._storage_problem_of(error), store._outage_of(error)), (problem, outage), sqlstate)
        # libpq's own (no server answered, or the connection broke), and adbapi giving the connection up.
        self.assertEqual(store._outage_of(psycopg.OperationalError("connection failed")), "no connection")
        self.assertEqual(store._outage_of(ConnectionLost()), "connection lost")
        self.assertIsNone(store._outage_of(ValueError("not the database's")))
