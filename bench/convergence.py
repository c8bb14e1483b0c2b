"""
Presence and ``room-info`` convergence after a join on another node.

Watchers sit on node 1 and users arrive on the last node (node 2, or node 3
with ``--nodes 3``), one after another; the script times how long node 1's
clients take to learn of each arrival and departure. The same is measured
on a single node (a one-node cluster on the same Redis and PostgreSQL
setup, arrivals on that node) as the baseline, in the same run.

Setup, per cluster (``common.ClusterNodes``: a private Redis, a scratch
PostgreSQL database): ``--watchers`` (20) users log in over TCP
(``AUTH_TOKEN``) on node 1 and each adds an equal share of the ``--joins``
(500) presence users as contacts (``CONTACTS`` op 1): every presence user is
watched by exactly one watcher. ``--rooms`` (50) meetings are made through
REST, each with ``--members`` (4) members connected to ``/ws/signaling`` on
node 1 and joined (``join`` / ``room-info``); the ``--joins`` room joiners
(other users, ``--joins / --rooms`` per room) have joined their meeting
through REST (the handshake requires it) but are not connected yet.

Then ``--joins`` arrivals, paced at ``--rate`` (20) per second, each on the
far node and at once: a presence user connects over TCP and sends
``AUTH_TOKEN``; a room joiner opens its WebSocket and sends ``join``. Timed
from the client's send (``perf_counter_ns``; every client is in this one
process):

- **presence on**: ``AUTH_TOKEN`` sent -> its watcher on node 1 receives
  ``PRESENCE`` online (login -> ``AUTH_RESULT`` is shown for reference);
- **user-joined**, **room-info**: ``join`` sent -> each member on node 1
  receives ``user-joined`` for the joiner, and a ``room-info`` whose
  participants list it (one sample per member);
- whether the joiner's own first ``room-info`` (from the far node) already
  lists every member on node 1.

Once every member and the watcher have seen the arrival (or after
``--timeout`` 5 s), the joiner leaves: the WebSocket sends a close frame and
the TCP connection is closed, timed the same way: **presence off**,
**user-left**, **room-info** without the joiner. A missing notification
counts as a miss (target: none). Target (issue 9): **p99 < 50 ms** on
loopback for each, across nodes; the one-node figures are the baseline.

    python bench/convergence.py             # 500 arrivals at 20/s on each of one node and two (~2.5 min)
    python bench/convergence.py --nodes 3   # arrivals on node 3 of three
    python bench/convergence.py --quick     # smoke test: 40 arrivals (< 1 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import signaling  # noqa: E402
from common import codec, fmt, percentile, table, verdict  # noqa: E402
from common import MsgType  # noqa: E402

TARGET_P99_MS = 50.0
KINDS = (
    ("presence on", "AUTH_TOKEN on the far node -> watcher's PRESENCE online"),
    ("login (reference)", "AUTH_TOKEN -> AUTH_RESULT, on the far node itself"),
    ("user-joined", "join on the far node -> each member's user-joined"),
    ("room-info (joined)", "join -> each member's room-info listing the joiner"),
    ("presence off", "TCP close -> watcher's PRESENCE offline"),
    ("user-left", "WebSocket close -> each member's user-left"),
    ("room-info (left)", "WebSocket close -> each member's room-info without the joiner"),
)
JUDGED = ("presence on", "user-joined", "room-info (joined)", "presence off", "user-left", "room-info (left)")


class Watcher(common.FrameClient):
    """A TCP client that records when each PRESENCE change reaches it: ``seen[(user_id, online)] = ns``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[str, bool], int] = {}

    def control(self, body: bytes) -> None:
        if body and body[0] == MsgType.PRESENCE:
            now = time.perf_counter_ns()
            msg = codec.decode_server(body)
            self.seen.setdefault((msg["user_id"], msg["online"]), now)
            return
        super().control(body)


class Member(signaling.WsClient):
    """
    A room member that records, per user id, when ``user-joined`` /
    ``user-left`` arrived and when a ``room-info`` first listed / stopped
    listing it (``perf_counter_ns``).
    """

    def __init__(self, *a) -> None:
        super().__init__(*a)
        self.listed: set[int] = set()
        self.joined_seen: dict[int, int] = {}
        self.left_seen: dict[int, int] = {}
        self.listed_at: dict[int, int] = {}
        self.unlisted_at: dict[int, int] = {}
        self.other_types = 0

    def _message(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        try:
            msg = json.loads(data)
            kind, payload = msg["type"], msg.get("payload") or {}
        except (ValueError, KeyError, TypeError):
            self.unexpected.append(data[:120])
            return
        if kind == "room-info":
            listed = {p["user_id"] for p in payload.get("participants", ())}
            for uid in listed - self.listed:
                self.listed_at.setdefault(uid, now)
            for uid in self.listed - listed:
                self.unlisted_at.setdefault(uid, now)
            self.listed = listed
        elif kind == "user-joined":
            self.joined_seen.setdefault(payload.get("user_id"), now)
        elif kind == "user-left":
            self.left_seen.setdefault(payload.get("user_id"), now)
        signaling.WsClient._message(self, data)


async def wait_until(predicate, timeout: float, step: float = 0.002) -> bool:
    """Poll ``predicate`` (cheap) until true or ``timeout`` s: the times are recorded on receipt, not here."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


class Samples:
    def __init__(self) -> None:
        self.ms = {k: [] for k, _ in KINDS}
        self.missed = {k: 0 for k, _ in KINDS}
        self.failures: dict[str, int] = {}
        self.failure_samples: list[str] = []
        self.incomplete_first_info = 0
        self.arrivals = 0

    def add(self, kind: str, t0_ns: int, at_ns: int | None) -> None:
        if at_ns is None:
            self.missed[kind] += 1
        else:
            self.ms[kind].append((at_ns - t0_ns) / 1e6)

    def fail(self, what: str, e: BaseException) -> None:
        key = f"{what}: {signaling.failure_key(e)}"
        self.failures[key] = self.failures.get(key, 0) + 1
        if len(self.failure_samples) < 3:
            self.failure_samples.append(f"{what}: {e!r}")


async def presence_arrival(far_port: int, token: str, uid: str, watcher: Watcher, s: Samples, timeout: float):
    c = None
    try:
        c = await common.connect(far_port, common.FrameClient, timeout)
        t0 = time.perf_counter_ns()
        await c.login(token, timeout)
        s.add("login (reference)", t0, time.perf_counter_ns())
    except Exception as e:
        s.fail("login", e)
        if c is not None:
            c.close()
        return
    await wait_until(lambda: (uid, True) in watcher.seen, timeout)
    s.add("presence on", t0, watcher.seen.get((uid, True)))
    t1 = time.perf_counter_ns()
    c.close()
    await wait_until(lambda: (uid, False) in watcher.seen, timeout)
    s.add("presence off", t1, watcher.seen.get((uid, False)))


async def room_arrival(far_port: int, spec: dict, members: list[Member], s: Samples, timeout: float):
    uid = spec["user_id"]
    try:
        c = await signaling.open_socket(far_port, spec, signaling.Stats(), timeout)
    except Exception as e:
        s.fail("WebSocket", e)
        return
    try:
        t0 = time.perf_counter_ns()
        c.send_frame(1, signaling.JOIN)
        try:
            await asyncio.wait_for(c.room_info, timeout)
        except Exception as e:
            s.fail("join", e)
            return
        if c.participants != len(members) + 1:
            s.incomplete_first_info += 1
        await wait_until(lambda: all(uid in m.joined_seen and uid in m.listed_at for m in members), timeout)
        for m in members:
            s.add("user-joined", t0, m.joined_seen.get(uid))
            s.add("room-info (joined)", t0, m.listed_at.get(uid))
        t1 = time.perf_counter_ns()
        c.close()  # the closing handshake's first frame: the node leaves the room on it
        await wait_until(lambda: all(uid in m.left_seen and uid in m.unlisted_at for m in members), timeout)
        for m in members:
            s.add("user-left", t1, m.left_seen.get(uid))
            s.add("room-info (left)", t1, m.unlisted_at.get(uid))
    finally:
        c.close()


async def measure(args, cluster: common.ClusterNodes, people: dict) -> dict:
    """One cluster: watchers and members on node 1, ``--joins`` arrivals on the last node."""
    near, far = cluster.nodes[0], cluster.nodes[-1]
    tokens = cluster.tokens()
    ids = cluster.ids
    # Rooms through REST: members first (the first hosts), then this room's joiners.
    rooms = [people["members"][r * args.members:(r + 1) * args.members] + people["joiners"][r::args.rooms]
             for r in range(args.rooms)]
    mids = await signaling.rest_setup(near.http_port, rooms, ids, tokens)
    member_specs, joiner_specs = [], {}
    for r, (names, mid) in enumerate(zip(rooms, mids)):
        for k, name in enumerate(names):
            spec = {"meeting_id": mid, "user_id": ids[name], "peer_id": f"peer-{name}", "token": tokens[name],
                    "index": len(member_specs) + len(joiner_specs), "room": r}
            if k < args.members:
                member_specs.append(spec)
            else:
                joiner_specs[name] = spec

    watchers, _, failures = await common.connect_and_login(
        near.port, [tokens[n] for n in people["watchers"]], concurrency=20, factory=Watcher)
    if failures:
        raise RuntimeError(f"watcher logins failed: {failures[:3]}")
    watcher_of = {}
    for j, name in enumerate(people["presence"]):
        w = watchers[j % len(watchers)]
        watcher_of[name] = w
        w.send(codec.u8(MsgType.CONTACTS) + codec.u8(codec.CONTACT_ADD) + codec.qstr(name))
        await w.expect(MsgType.CONTACTS, 30)
    stats = signaling.Stats()
    members: list[Member] = []
    sem = asyncio.Semaphore(20)

    async def member(spec):
        async with sem:
            c = await signaling.open_client(near.http_port, spec, stats, 30, factory=Member)
            c.room = spec["room"]
            return c

    members = await asyncio.gather(*(member(s) for s in member_specs))
    by_room = {r: [m for m in members if m.room == r] for r in range(args.rooms)}
    await asyncio.sleep(1.0)  # the members' last room-info refreshes
    print(f"  {len(watchers)} watchers (TCP) and {len(members)} room members (WebSocket) on node 1; "
          f"{args.joins} arrivals on node {len(cluster.nodes)} at {args.rate:g}/s ...", flush=True)

    s = Samples()
    meter = common.CpuMeter(*cluster.pids, cluster.redis.pid)
    pg_pids = cluster.database.backend_pids()
    pg0 = common.cpu_seconds_of(pg_pids)
    meter.start()
    t_start = time.monotonic()
    tasks = []
    for i in range(args.joins):
        due = t_start + i / args.rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        pname, rname = people["presence"][i], people["joiners"][i]
        spec = joiner_specs[rname]
        tasks.append(asyncio.ensure_future(presence_arrival(
            far.port, tokens[pname], str(ids[pname]), watcher_of[pname], s, args.timeout)))
        tasks.append(asyncio.ensure_future(room_arrival(far.http_port, spec, by_room[spec["room"]], s,
                                                        args.timeout)))
        s.arrivals += 1
    # Every task ends within its own timeouts (connect, login or join, two waits); bounded again here.
    await asyncio.wait_for(asyncio.gather(*tasks), 4 * args.timeout + 30)
    meter.stop()
    pg_s = common.cpu_seconds_of(pg_pids) - pg0
    result = {"samples": s, "cpu": meter, "pg_pct": 100 * pg_s / meter.wall,
              "noise": meter.noise(meter.client_pct / 100 * meter.wall + pg_s),
              "members_unexpected": sum(len(m.unexpected) for m in members),
              "members_errors": sum(len(m.errors) for m in members),
              "members_disconnected": sum(1 for m in members if m.closed.done()),
              "watchers_errors": sum(len(w.errors) for w in watchers),
              "watchers_disconnected": sum(1 for w in watchers if w.closed.done())}
    await asyncio.gather(*(m.aclose() for m in members))
    for w in watchers:
        w.close()
    return result


def main(args) -> int:
    limit = common.raise_nofile_limit()
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    people = {
        "watchers": [f"watch{i:04d}" for i in range(args.watchers)],
        "presence": [f"arrive{i:05d}" for i in range(args.joins)],
        "members": [f"member{i:05d}" for i in range(args.rooms * args.members)],
        "joiners": [f"joiner{i:05d}" for i in range(args.joins)],
    }
    names = [n for group in people.values() for n in group]
    if limit < len(names) + 500:
        print(f"RLIMIT_NOFILE is {limit}: too low")
        return 2
    runs: dict[str, dict] = {}
    logs, statuses = [], []
    for label, count in (("one node", 1), (f"{args.nodes} nodes, across", args.nodes)):
        ws = common.Workspace(f"convergence-{count}", keep=args.keep)
        cluster = None
        try:
            cluster = common.ClusterNodes(ws, count, names, postgresql=args.postgresql)
            cluster.start()
            print(f"{label}: pids {cluster.pids}, redis {cluster.redis.pid}", flush=True)
            runs[label] = common.arun(asyncio.wait_for(measure(args, cluster, people),
                                                       args.joins / args.rate + 4 * args.timeout + 300))
        finally:
            if cluster is not None:
                logs.extend(n.log_text() for n in cluster.nodes)
                statuses.extend(cluster.stop())
            ws.close()

    names_ = list(runs)
    rows = [("notification", *(f"{n}: p50 / p99 / max ms (n, missed)" for n in names_), "target")]
    for kind, _ in KINDS:
        cells = []
        for n in names_:
            s = runs[n]["samples"]
            v = s.ms[kind]
            cells.append(f"{fmt(percentile(v, 50))} / {fmt(percentile(v, 99))} / {fmt(max(v, default=float('nan')))}"
                         f" ({len(v)}, {s.missed[kind]})")
        rows.append((kind, *cells, f"p99 < {TARGET_P99_MS:g} ms" if kind in JUDGED else ""))
    rows.append(("joiner's first room-info lists all members",
                 *(f"{runs[n]['samples'].arrivals - runs[n]['samples'].incomplete_first_info} / "
                   f"{runs[n]['samples'].arrivals}" for n in names_), "all"))
    rows.append(("CPU: nodes (each) / redis / postgres backends", *(
        " + ".join(f"{100 * x / runs[n]['cpu'].wall:.0f}" for x in runs[n]["cpu"].per_pid_s[:-1])
        + f" / {100 * runs[n]['cpu'].per_pid_s[-1] / runs[n]['cpu'].wall:.0f}"
        + f" / {runs[n]['pg_pct']:.0f} %" for n in names_), ""))
    rows.append(("client CPU (this process)", *(f"{runs[n]['cpu'].client_pct:.0f} %" for n in names_), ""))
    rows.append(("machine noise", *(runs[n]["noise"] for n in names_), ""))
    print()
    print(table(rows, title=f"Convergence: {args.joins} arrivals at {args.rate:g}/s on the last node; "
                            f"{args.watchers} TCP watchers and {args.rooms} rooms x {args.members} WebSocket "
                            f"members on node 1; times from the client's send"))
    for kind, what in KINDS:
        print(f"  {kind}: {what}")
    print()
    across = runs[names_[-1]]["samples"]
    rows = [("figure", "value", "target", "verdict")]
    for kind in JUDGED:
        p99 = percentile(across.ms[kind], 99)
        rows.append((f"{kind} p99 across nodes", f"{fmt(p99)} ms (one node: "
                     f"{fmt(percentile(runs[names_[0]]['samples'].ms[kind], 99))} ms)",
                     f"< {TARGET_P99_MS:g} ms", verdict(p99 < TARGET_P99_MS and across.ms[kind] != [])))
    missed = sum(sum(runs[n]["samples"].missed.values()) for n in names_)
    fails = sum(sum(runs[n]["samples"].failures.values()) for n in names_)
    rows.append(("missed notifications (both runs)", f"{missed}", "0", verdict(missed == 0)))
    rows.append(("failed logins / joins (both runs)", f"{fails} "
                 + " ".join(f"{runs[n]['samples'].failures or ''}" for n in names_), "0", verdict(fails == 0)))
    errs = sum(runs[n]["members_errors"] + runs[n]["members_unexpected"] + runs[n]["watchers_errors"]
               for n in names_)
    gone = sum(runs[n]["members_disconnected"] + runs[n]["watchers_disconnected"] for n in names_)
    rows.append(("watchers' / members' errors, unexpected, disconnected", f"{errs} / {gone}", "0 / 0",
                 verdict(errs == 0 and gone == 0)))
    tracebacks = sum(log.count("Traceback") for log in logs)
    rows.append(("tracebacks in the nodes' logs", f"{tracebacks}", "0", verdict(tracebacks == 0)))
    rows.append(("exit statuses after SIGTERM", f"{statuses}", "0", verdict(all(x == 0 for x in statuses))))
    print(table(rows, title="Target (issue 9): presence and room-info convergence p99 < 50 ms on loopback"))
    for n in names_:
        if runs[n]["samples"].failure_samples:
            print(f"{n}: first failures: {runs[n]['samples'].failure_samples}")
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2, help="nodes of the cluster measured across (2 or 3)")
    p.add_argument("--joins", type=int, default=500, help="arrivals (each: a TCP login and a room join)")
    p.add_argument("--rate", type=float, default=20.0, help="arrivals per second")
    p.add_argument("--watchers", type=int, default=20, help="TCP watchers on node 1")
    p.add_argument("--rooms", type=int, default=50)
    p.add_argument("--members", type=int, default=4, help="WebSocket members per room on node 1")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each notification")
    p.add_argument("--postgresql", default=common.DEFAULT_POSTGRESQL,
                   help="the PostgreSQL server the clusters' scratch databases are made on")
    p.add_argument("--max-wait", type=float, default=180.0, help="seconds to wait for a quiet machine")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories (logs)")
    p.add_argument("--quick", action="store_true", help="smoke test: 40 arrivals at 20/s, 10 rooms")
    args = p.parse_args(argv)
    if args.quick:
        args.max_wait, args.joins, args.rooms, args.watchers = 0.0, 40, 10, 5
    if args.nodes < 2:
        p.error("--nodes must be at least 2 (one node is the baseline, always run)")
    if args.joins < args.rooms:
        p.error("--joins must be at least --rooms")
    return args


if __name__ == "__main__":
    sys.exit(main(parse()))
