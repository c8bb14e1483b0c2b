"""
Store benchmark: the SQLite store and the PostgreSQL candidates, in one run.

Each target gets a fresh database and runs four phases of ``--ops`` (1,000)
operations, with ``--concurrency`` operations in flight (closed loops: the
next when the last is answered). ``1`` is what one request sees, one
operation after another; ``32`` is a busy daemon asking many at once. The
targets take turns, ``--rounds`` (3) times, each on a fresh database, and
each figure is the target's best round (the least disturbed by whatever else
the machine did), with the spread of its rounds beside it.

=====================  ==============================================================
create_user            a user and its profile, one transaction
get_user               by a random existing id
add_meeting_message    into one of 10 meetings (the store's group commit)
list_meeting_messages  the first page of 20 of a random meeting, with its total
=====================  ==============================================================

Targets (``--targets``):

sqlite
    :class:`~wecompany.store.sqlite.SQLiteStore` on a file in a temporary
    directory, as the daemon runs it: the baseline.
psycopg
    :class:`~wecompany.store.postgres.PostgreSQLStore` as shipped: psycopg 3
    (``psycopg[binary]``), one connection, autocommit with explicit BEGINs.
psycopg2
    the same store on psycopg2 (``psycopg2-binary``, not a dependency:
    ``pip install psycopg2-binary``). psycopg2 cannot commit an explicit
    BEGIN in autocommit mode (it tracks transactions itself), so here it
    opens them, and reads run at READ COMMITTED: the same three round trips
    as psycopg's (BEGIN, query, COMMIT), so the figures compare the drivers.
psycopg2-snapshot
    psycopg2 giving what the store promises: reads in one snapshot, at the
    cost of a fourth round trip (SET TRANSACTION ... REPEATABLE READ).
psycopg-4
    psycopg 3 with a pool of 4 connections: what more connections would
    give. Interactions then run in any order, which breaks the store's
    ordering guarantees: measured, never shipped.

PostgreSQL is the server ``--postgresql`` names (default: the tests'
``WECOMPANY_TEST_POSTGRESQL`` or ``postgresql://postgres@127.0.0.1:5432/test``),
on this machine; each target's database (``wc_bench_<random>``) is dropped at
the end. Reported: operations per second, and the ratio to SQLite, per phase
and concurrency, with the worst round as a percentage of the best; the CPU
this process (store threads and reactor) spent per operation, in the best
round. The database server's own CPU is not counted (nor SQLite's fsyncs).

    python bench/store.py            # 2 concurrencies x 3 rounds x 5 targets x 4 phases  (~6 min)
    python bench/store.py --quick    # smoke test: 200 operations, one round               (< 30 s)
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import fmt, table  # noqa: E402

import attrs  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from twisted.enterprise.adbapi import ConnectionPool  # noqa: E402
from twisted.internet.defer import Deferred, DeferredList  # noqa: E402
from twisted.internet.task import react  # noqa: E402

from wecompany.store.dialect import POSTGRESQL  # noqa: E402
from wecompany.store.postgres import PostgreSQLStore, redact  # noqa: E402
from wecompany.store.sqlite import SQLiteStore  # noqa: E402

DEFAULT_SERVER = os.environ.get("WECOMPANY_TEST_POSTGRESQL") or "postgresql://postgres@127.0.0.1:5432/test"
TARGETS = ("sqlite", "psycopg", "psycopg2", "psycopg2-snapshot", "psycopg-4")
PHASES = ("create_user", "get_user", "add_meeting_message", "list_meeting_messages")
MEETINGS = 10
NOW = 1_700_000_000.0


class Psycopg2Store(PostgreSQLStore):
    """PostgreSQLStore on psycopg2, which opens each transaction itself (see the module docstring)."""

    _dialect = attrs.evolve(POSTGRESQL, begin_read=None, begin_write=None)

    def _make_pool(self):
        return ConnectionPool("psycopg2", **self._arguments, cp_min=1, cp_max=1, cp_reconnect=True,
                              cp_reactor=self._reactor)


class Psycopg2SnapshotStore(Psycopg2Store):
    """Psycopg2Store with the store's own read isolation."""

    _dialect = attrs.evolve(POSTGRESQL, begin_read="SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                            begin_write=None)


class FourConnectionStore(PostgreSQLStore):
    """psycopg 3 with four pooled connections: out of order (see the module docstring)."""

    def _make_pool(self):
        return ConnectionPool("psycopg", autocommit=True, **self._arguments, cp_min=4, cp_max=4,
                              cp_reconnect=True, cp_reactor=self._reactor)


class Databases:
    """Scratch PostgreSQL databases on the server, dropped by :meth:`drop_all`."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.admin = psycopg.connect(server, autocommit=True, connect_timeout=10)
        self.made: list[str] = []

    def create(self) -> str:
        name = f"wc_bench_{secrets.token_hex(6)}"
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.made.append(name)
        head, _, _ = self.server.rpartition("/")
        return f"{head}/{name}"

    def drop_all(self) -> None:
        for name in self.made:
            self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.admin.close()


def make_store(target: str, reactor, databases: Databases, workdir: str, commit_interval: float | None):
    paced = {} if commit_interval is None else {"commit_interval": commit_interval}
    if target == "sqlite":
        return SQLiteStore(os.path.join(workdir, f"{secrets.token_hex(4)}.sqlite3"), reactor)
    store_type = {"psycopg": PostgreSQLStore, "psycopg2": Psycopg2Store, "psycopg2-snapshot": Psycopg2SnapshotStore,
                  "psycopg-4": FourConnectionStore}[target]
    return store_type(databases.create(), reactor, **paced)


async def closed_loops(operation, count: int, concurrency: int) -> None:
    """``operation(i)`` for i in range(count), ``concurrency`` at a time."""
    numbers = iter(range(count))

    async def loop():
        for number in numbers:
            await operation(number)

    await DeferredList([Deferred.fromCoroutine(loop()) for _ in range(concurrency)],
                       fireOnOneErrback=True, consumeErrors=True)


async def measure(store, ops: int, concurrency: int, rng: random.Random) -> dict[str, tuple[float, float]]:
    """-> phase: (operations per second, CPU ms per operation)."""
    await store.start()
    try:
        host = await store.create_user("host", "h", None, None, NOW)
        meetings = [(await store.create_meeting(f"m{n}", "", host.id, NOW, None, 100, "video", None, {},
                                                f"room-{n}", NOW))[0].id for n in range(MEETINGS)]
        users: list[int] = []

        async def create_user(n):
            users.append((await store.create_user(f"user{n}", "hash", f"user{n}@example.com", None, NOW)).id)

        async def get_user(n):
            assert await store.get_user(rng.choice(users)) is not None

        async def add_meeting_message(n):
            await store.add_meeting_message(rng.choice(meetings), rng.choice(users), f"message {n}", "text", NOW)

        async def list_meeting_messages(n):
            total, page = await store.list_meeting_messages(rng.choice(meetings), 0, 20)
            assert total > 0 and page

        figures = {}
        for phase, operation in zip(PHASES, (create_user, get_user, add_meeting_message, list_meeting_messages)):
            cpu, started = time.process_time(), time.perf_counter()
            await closed_loops(operation, ops, concurrency)
            elapsed = time.perf_counter() - started
            figures[phase] = (ops / elapsed, 1000 * (time.process_time() - cpu) / ops)
        return figures
    finally:
        await store.stop()


async def main(reactor, args) -> None:
    print(common.describe_code())
    print(f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__} libpq {psycopg.pq.version()}); "
          f"PostgreSQL at {redact(args.postgresql)}")
    targets = args.targets.split(",")
    if any(target.startswith("psycopg2") for target in targets):
        try:
            import psycopg2
        except ImportError:
            print("psycopg2 is not installed (pip install psycopg2-binary): skipping its targets")
            targets = [target for target in targets if not target.startswith("psycopg2")]
        else:
            print(f"psycopg2 {psycopg2.__version__.split()[0]}")
    busy = common.wait_for_quiet(args.max_wait)
    print(f"machine busy before the run: {fmt(busy, 0)} % of a core")
    databases = Databases(args.postgresql)
    rng = random.Random(20261123)
    try:
        with tempfile.TemporaryDirectory(prefix="wc-bench-store-") as workdir:
            for concurrency in args.concurrency:
                rounds: dict[str, list[dict[str, tuple[float, float]]]] = {t: [] for t in targets}
                for _ in range(args.rounds):
                    for target in targets:
                        store = make_store(target, reactor, databases, workdir, args.pg_commit_interval)
                        rounds[target].append(await measure(store, args.ops, concurrency, rng))
                best = {t: {phase: max((r[phase] for r in rounds[t]), key=lambda figure: figure[0])
                            for phase in PHASES} for t in targets}
                worst = {t: {phase: min(r[phase][0] for r in rounds[t]) for phase in PHASES} for t in targets}
                rows = [("phase", *(f"{t} ops/s" for t in targets), *(f"{t} / sqlite" for t in targets[1:]))]
                for phase in PHASES:
                    rates = [best[t][phase][0] for t in targets]
                    rows.append((phase, *(f"{fmt(best[t][phase][0], 0)} ({100 * worst[t][phase] / best[t][phase][0]:.0f} %)"
                                          for t in targets),
                                 *(fmt(rate / rates[0], 2) for rate in rates[1:])))
                print()
                print(table(rows, f"{args.ops} operations per phase, {concurrency} in flight, best of "
                                  f"{args.rounds} (worst as % of best)"))
                cpu = [("phase", *(f"{t} CPU ms/op" for t in targets))]
                for phase in PHASES:
                    cpu.append((phase, *(fmt(best[t][phase][1], 3) for t in targets)))
                print(table(cpu))
    finally:
        databases.drop_all()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=1000, help="operations per phase (default: 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each target takes (default: 3)")
    parser.add_argument("--concurrency", type=lambda text: [int(n) for n in text.split(",")], default=[1, 32],
                        help="operations in flight, comma-separated (default: 1,32)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated (default: {','.join(TARGETS)})")
    parser.add_argument("--postgresql", default=DEFAULT_SERVER, help="a postgresql:// URL of the server to use")
    parser.add_argument("--max-wait", type=float, default=60.0,
                        help="seconds to wait for a quiet machine first (0: do not wait)")
    parser.add_argument("--pg-commit-interval", type=float, default=None,
                        help="the PostgreSQL stores' commit_interval (default: the store's own)")
    parser.add_argument("--quick", action="store_true", help="200 operations per phase, no waiting")
    args = parser.parse_args(argv)
    if args.quick:
        args.ops, args.rounds, args.max_wait = 200, 1, 0
    return args


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, parse_args(sys.argv[1:]))))
