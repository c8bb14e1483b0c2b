"""
Scaling on this machine: one node against two nodes behind one Redis, in one run.

Two clusters run side by side, each as ``docs/cluster.rst`` has it (a
private ``redis-server``, a scratch PostgreSQL database, ``common.ClusterNodes``):
**one node** (``ClusterNodes(..., 1)``) and **two nodes**. Each has an
HAProxy in front of it, started from ``etc/haproxy/wecompany.cfg`` on free
loopback ports (``common.HAProxy``: the example's ``balance leastconn``,
health checks, keep-alive; the PROXY header to the nodes is left out, so
that the one node can be measured both directly and through HAProxy).

**REST** (as ``bench/rest_auth.py``): ``wrk`` (``--connections`` 50,
``--threads`` 2, ``--duration`` 10 s after an unmeasured ``--warmup`` of
2 s) sends ``GET /api/v1/users/profile``, every request with another of
``--users`` (1,000) users' Bearer tokens, to: the one node directly, the
one node through its HAProxy (the proxy's own cost), and the two nodes
through theirs; ``--rounds`` (3) times in turn. Judged on the median
ratio two nodes / one node (direct, and through HAProxy).

**WebSocket chat** (the load of ``bench/signaling.py``, its client and its
``chat_phase``): ``--rooms`` (200) meetings of ``--room-size`` (10) users,
joined through REST, every member connected to ``/ws/signaling``; on two
nodes the members of every room alternate between the nodes (so every
message reaches half its room over Redis). Every client sends a ``chat``
every ``--interval`` (1) s for ``--chat-duration`` (30) s.

Printed for each run: throughput, latency, the CPU of each node, of Redis,
of the PostgreSQL backends serving the scratch database, of HAProxy, of
wrk (or the chat clients), of the idle other cluster, steal and other
processes' CPU. Target (issue 9): REST throughput two nodes / one node
**>= 1.6x**, PASS/FAIL; the chat's figures are reported (its own target,
fan-out p99 < 50 ms, is shown).

    python bench/scaling.py            # 3 rounds of REST, then the chat on each  (~7 min)
    python bench/scaling.py --rounds 0 --interval 2   # the chat alone, at 1,000 messages/s
    python bench/scaling.py --quick    # smoke test: 200 users, 2 s runs, 40 chat clients (< 1.5 min)

Needs ``wrk``, ``haproxy``, ``redis-server`` and a PostgreSQL server (``--postgresql``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import rest_auth  # noqa: E402
import signaling  # noqa: E402
from common import fmt, percentile, table, verdict  # noqa: E402

PROFILE_PATH = "/api/v1/users/profile"
TARGET_RATIO = 1.6


class Setup:
    """One cluster and the HAProxy in front of it, with the pids its CPU figures are read from."""

    def __init__(self, name: str, ws: common.Workspace, count: int, names: list[str], postgresql: str) -> None:
        self.name = name
        self.cluster = common.ClusterNodes(ws, count, names, postgresql=postgresql)
        self.proxy = None
        self.ws = ws

    def start(self) -> None:
        self.cluster.start()
        self.proxy = common.HAProxy(self.ws.path, self.cluster.nodes)

    @property
    def nodes(self):
        return self.cluster.nodes

    def groups(self) -> dict[str, list[int]]:
        """Named groups of pids, for the CPU table."""
        g = {f"node {i + 1}": [n.pid] for i, n in enumerate(self.nodes)}
        g["redis"] = [self.cluster.redis.pid]
        g["postgres"] = self.cluster.database.backend_pids()
        g["haproxy"] = [self.proxy.pid]
        return g

    def all_pids(self) -> list[int]:
        return [p for pids in self.groups().values() for p in pids]

    def stop(self) -> list:
        if self.proxy is not None:
            self.proxy.stop()
        return self.cluster.stop()


class GroupMeter:
    """CPU seconds of named groups of pids, wrk's (this process's children), steal and the machine's, over a run."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = {k: common.cpu_seconds_of(v) for k, v in self.groups.items()}
        self.w0 = rest_auth.children_cpu_seconds()
        self.o0 = common.own_cpu_seconds()
        self.m0 = common.machine_busy_seconds()
        self.s0 = common.steal_seconds()

    def stop(self) -> None:
        self.wall = time.monotonic() - self.t0
        self.cpu_s = {k: common.cpu_seconds_of(v) - self.c0[k] for k, v in self.groups.items()}
        self.wrk_s = rest_auth.children_cpu_seconds() - self.w0
        own = common.own_cpu_seconds() - self.o0
        machine = common.machine_busy_seconds() - self.m0
        self.steal_pct = 100 * (common.steal_seconds() - self.s0) / self.wall
        self.others_pct = max(0.0, 100 * (machine - sum(self.cpu_s.values()) - self.wrk_s - own) / self.wall)
        self.machine_pct = 100 * machine / self.wall

    def pct(self, key: str) -> float:
        return 100 * self.cpu_s.get(key, 0.0) / self.wall


def rest_run(args, label: str, port: int, setup: Setup, idle: Setup, script: str, token_file: str) -> dict:
    print(f"REST {label}: wrk on :{port} ...", flush=True)
    if args.warmup > 0:
        rest_auth.run_wrk(args, port, PROFILE_PATH, script, token_file, args.warmup)
    groups = setup.groups()
    groups["idle cluster"] = idle.all_pids()
    meter = GroupMeter(groups)
    meter.start()
    result = rest_auth.run_wrk(args, port, PROFILE_PATH, script, token_file, args.duration)
    meter.stop()
    nodes = [k for k in groups if k.startswith("node ")]
    result.update(label=label, meter=meter, nodes_pct=[meter.pct(k) for k in nodes],
                  node_s=sum(meter.cpu_s[k] for k in nodes))
    return result


def rest_run_split(args, label: str, ports: list[int], setup: Setup, idle: Setup, script: str,
                   token_file: str) -> dict:
    """
    wrk against each node directly, at once, the connections and threads
    shared out (what a client-side or DNS balancer does, without a proxy
    on the same cores): the figures summed (latencies: the worse node's).
    """
    import argparse
    from concurrent.futures import ThreadPoolExecutor

    print(f"REST {label}: wrk on {', '.join(f':{p}' for p in ports)} at once ...", flush=True)
    share = argparse.Namespace(**{**vars(args), "connections": max(1, args.connections // len(ports)),
                                  "threads": max(1, args.threads // len(ports))})

    def each(duration):
        with ThreadPoolExecutor(len(ports)) as pool:
            return list(pool.map(lambda port: rest_auth.run_wrk(share, port, PROFILE_PATH, script, token_file,
                                                                duration), ports))

    if args.warmup > 0:
        each(args.warmup)
    groups = setup.groups()
    groups["idle cluster"] = idle.all_pids()
    meter = GroupMeter(groups)
    meter.start()
    parts = each(args.duration)
    meter.stop()
    result = {"requests": sum(p["requests"] for p in parts), "rate": sum(p["rate"] for p in parts),
              "p50": max(p["p50"] for p in parts), "p99": max(p["p99"] for p in parts),
              "max": max(p["max"] for p in parts), "status_errors": sum(p["status_errors"] for p in parts),
              "socket_errors": sum(p["socket_errors"] for p in parts)}
    nodes = [k for k in groups if k.startswith("node ")]
    result.update(label=label, meter=meter, nodes_pct=[meter.pct(k) for k in nodes],
                  node_s=sum(meter.cpu_s[k] for k in nodes))
    return result


def rest_table(runs: list[dict], args) -> str:
    rows = [("run", "req/s", "p50 ms", "p99 ms", "errors", "nodes CPU", "redis", "postgres", "haproxy", "wrk",
             "idle cluster", "steal", "others", "req/node-CPU-s")]
    for r in runs:
        m = r["meter"]
        rows.append((r["label"], f"{r['rate']:,.0f}", fmt(r["p50"] * 1000), fmt(r["p99"] * 1000),
                     f"{r['status_errors'] + r['socket_errors']}",
                     " + ".join(f"{x:.0f}" for x in r["nodes_pct"]) + " %", f"{m.pct('redis'):.0f} %",
                     f"{m.pct('postgres'):.0f} %", f"{m.pct('haproxy'):.0f} %" if "direct" not in r["label"] else "-",
                     f"{100 * m.wrk_s / m.wall:.0f} %", f"{m.pct('idle cluster'):.0f} %", f"{m.steal_pct:.0f} %",
                     f"{m.others_pct:.0f} %", f"{r['requests'] / max(1e-9, r['node_s']):,.0f}"))
    return table(rows, title=f"REST: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
                             f"GET {PROFILE_PATH}, Bearer tokens of {args.users} users (CPU in % of one core; "
                             f"the machine has {os.cpu_count()} cores = {100 * os.cpu_count()} %)")


def lower_median(values: list[float]) -> float:
    s = sorted(values)
    return s[(len(s) - 1) // 2] if s else float("nan")


def chat_specs(setup: Setup, rooms: list[list[str]], mids: list[int], tokens: dict) -> list[dict]:
    specs = signaling.specs_for(rooms, mids, setup.cluster.ids, tokens)
    ports = [n.http_port for n in setup.nodes]
    for k, spec in enumerate(specs):
        spec["port"] = ports[(k % len(rooms[0])) % len(ports)]  # a room's members alternate between the nodes
    return specs


async def chat_run(args, setup: Setup, idle: Setup, rooms, specs) -> dict:
    ctx = common.mp_context()
    pids = [n.pid for n in setup.nodes]
    groups = setup.groups()
    more = [*pids[1:], setup.cluster.redis.pid, *groups["postgres"]]
    cfg = types.SimpleNamespace(duration=args.chat_duration, concurrency=args.concurrency, procs=args.procs,
                                drain=args.drain, interval=args.interval, room_size=args.room_size)
    idle_pids = idle.all_pids()
    idle0 = common.cpu_seconds_of(idle_pids)
    proxy0 = common.cpu_seconds_of([setup.proxy.pid])
    chat = await signaling.chat_phase(ctx, setup.nodes[0].http_port, pids[0], specs, rooms, cfg, more_pids=more)
    cpu = chat["cpu"]
    n_nodes = len(pids)
    chat["nodes_pct"] = [100 * s / cpu.wall for s in cpu.per_pid_s[:n_nodes]]
    chat["redis_pct"] = 100 * cpu.per_pid_s[n_nodes] / cpu.wall
    chat["pg_pct"] = 100 * sum(cpu.per_pid_s[n_nodes + 1:]) / cpu.wall
    chat["nodes_s"] = sum(cpu.per_pid_s[:n_nodes])
    # Idle cluster and this setup's (unused) HAProxy over the whole phase (connect + chat + drain): noise only.
    chat["idle_s"] = common.cpu_seconds_of(idle_pids) - idle0 + common.cpu_seconds_of([setup.proxy.pid]) - proxy0
    return chat


def chat_table(runs: dict, args) -> str:
    d = args.chat_duration
    names = list(runs)
    rows = [("figure", *names, "target")]

    def row(label, fn, target=""):
        rows.append((label, *(fn(runs[n]) for n in names), target))

    n_chat = args.rooms * args.room_size
    row("clients connected and joined", lambda c: f"{c['connected']} / {n_chat}", f"{n_chat}")
    row("chat messages sent", lambda c: f"{c['sent']:,} ({c['sent'] / d:,.0f}/s)",
        f"{n_chat / args.interval:,.0f}/s")
    row("deliveries / expected", lambda c: f"{c['delivered']:,} / {c['expected']:,}", "all")
    row("delivered messages/s (during the run)", lambda c: f"{c['delivered_in_run'] / d:,.0f}/s",
        f"{n_chat * args.room_size / args.interval:,.0f}/s")
    row("fan-out latency p50 / p99",
        lambda c: "{} / {} ms".format(*(fmt(x) for x in common.summarize_ms(c["lat"])[:2])),
        f"p99 < {signaling.TARGET_P99_MS:g} ms")
    row("fan-out latency p99.9 / max",
        lambda c: "{} / {} ms".format(*(fmt(x) for x in common.summarize_ms(c["lat"])[2:])))
    row("CPU: nodes (each)", lambda c: " + ".join(f"{x:.0f}" for x in c["nodes_pct"]) + " %")
    row("CPU: redis / postgres backends", lambda c: f"{c['redis_pct']:.0f} / {c['pg_pct']:.0f} %")
    row("CPU per chat message: nodes", lambda c: f"{c['nodes_s'] / max(1, c['sent']) * 1e6:.0f} us")
    row("CPU per chat message: nodes+redis+pg",
        lambda c: f"{c['cpu'].server_s / max(1, c['sent']) * 1e6:.0f} us")
    row("client CPU (all client processes)", lambda c: f"{c['client_cpu']:.0f} %")
    row("client send lateness p99 / loop lag p99",
        lambda c: f"{fmt(percentile(c['lateness'], 99))} / {fmt(percentile(c['loop_lag'], 99))} ms")
    row("idle cluster + unused HAProxy (whole phase)", lambda c: f"{c['idle_s']:.1f} CPU-s")
    row("machine noise", lambda c: c["noise"])
    row("errors: join failures / error msgs / unexpected / disconnected",
        lambda c: f"{sum(c['failures'].values())} / {c['errors']} / {c['unexpected']} / {c['disconnected']}",
        "0")
    return table(rows, title=f"WebSocket chat: {n_chat} clients in {args.rooms} rooms of {args.room_size}, "
                             f"a chat every {args.interval:g} s each for {d:g} s (two nodes: each room's "
                             f"members alternate between the nodes)")


def main(args) -> int:
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed")
            return 2
    limit = common.raise_nofile_limit()
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    rest_names = [f"scale{i:05d}" for i in range(args.users)]
    chat_names = [f"chat{i:05d}" for i in range(args.rooms * args.room_size)]
    if limit < 2 * len(chat_names) + 500:
        print(f"RLIMIT_NOFILE is {limit}: too low")
        return 2
    spaces = [common.Workspace("scaling-1", keep=args.keep), common.Workspace("scaling-2", keep=args.keep)]
    setups: list[Setup] = []
    rest_runs: list[dict] = []
    chats: dict[str, dict] = {}
    logs, statuses = [], []
    try:
        t = time.perf_counter()
        one = Setup("one node", spaces[0], 1, rest_names + chat_names, args.postgresql)
        setups.append(one)
        two = Setup("two nodes", spaces[1], 2, rest_names + chat_names, args.postgresql)
        setups.append(two)
        for s in setups:
            s.start()
        print(f"two clusters up in {time.perf_counter() - t:.1f} s: one node (pid {one.nodes[0].pid}, HAProxy "
              f":{one.proxy.site_port}), two nodes (pids {two.cluster.pids}, HAProxy :{two.proxy.site_port}); "
              f"accounts made in each database")
        rooms = [chat_names[i:i + args.room_size] for i in range(0, len(chat_names), args.room_size)]
        specs = {}
        for s in setups:
            tokens = s.cluster.tokens()
            mids = common.arun(signaling.rest_setup(s.nodes[0].http_port, rooms, s.cluster.ids, tokens))
            specs[s.name] = chat_specs(s, rooms, mids, tokens)
        print(f"REST setup: {len(rooms)} meetings and {len(chat_names)} joins in each cluster")
        # One token file per cluster (same names, but each cluster has its own secret).
        script = os.path.join(spaces[0].path, "bearer.lua")
        with open(script, "w") as f:
            f.write(rest_auth.WRK_SCRIPT)
        token_files = {}
        for s in setups:
            tokens = s.cluster.tokens()
            token_files[s.name] = os.path.join(s.ws.path, "tokens.txt")
            with open(token_files[s.name], "w") as f:
                f.write("\n".join(tokens[n] for n in rest_names) + "\n")
        time.sleep(0.5 if args.quick else 2.0)

        # Unmeasured rounds first: each daemon's first requests are slower (its caches fill, its
        # allocator grows); a one-node run measured first looked 40 % slower than the third.
        targets = [(port, s.name) for s in setups for port in (s.proxy.site_port, *(n.http_port for n in s.nodes))]
        for round_ in range(args.warm_rounds if args.rounds else 0):
            for port, name in targets:
                rest_auth.run_wrk(args, port, PROFILE_PATH, script, token_files[name], args.duration / 2)
        for round_ in range(args.rounds):
            tag = f" #{round_ + 1}" if args.rounds > 1 else ""
            rest_runs.append(rest_run(args, "one node, direct" + tag, one.nodes[0].http_port, one, two, script,
                                      token_files[one.name]))
            rest_runs.append(rest_run(args, "one node, HAProxy" + tag, one.proxy.site_port, one, two, script,
                                      token_files[one.name]))
            rest_runs.append(rest_run(args, "two nodes, HAProxy" + tag, two.proxy.site_port, two, one, script,
                                      token_files[two.name]))
            rest_runs.append(rest_run_split(args, "two nodes, direct" + tag, [n.http_port for n in two.nodes], two,
                                            one, script, token_files[two.name]))

        if args.rooms:
            for s, other in ((one, two), (two, one)):
                print(f"chat on {s.name} ...", flush=True)
                chats[s.name] = common.arun(asyncio.wait_for(
                    chat_run(args, s, other, rooms, specs[s.name]), args.chat_duration + args.drain + 600))
                time.sleep(2.0 if not args.quick else 0.5)
    finally:
        for s in setups:
            logs.extend(n.log_text() for n in s.nodes)
            statuses.extend(s.stop())
        for w in spaces:
            w.close()

    rows = [("figure", "per round", "median", "target", "verdict")]
    if rest_runs:  # --rounds 0: the chat only
        print()
        print(rest_table(rest_runs, args))
        by = {k: [r for r in rest_runs if r["label"].startswith(k)] for k in
              ("one node, direct", "one node, HAProxy", "two nodes, HAProxy", "two nodes, direct")}
        rounds = range(len(by["two nodes, HAProxy"]))
        split = [by["two nodes, direct"][i]["rate"] / by["one node, direct"][i]["rate"] for i in rounds]
        r_split = lower_median(split)
        vs_direct = [by["two nodes, HAProxy"][i]["rate"] / by["one node, direct"][i]["rate"] for i in rounds]
        vs_proxy = [by["two nodes, HAProxy"][i]["rate"] / by["one node, HAProxy"][i]["rate"] for i in rounds]
        proxy_cost = [by["one node, HAProxy"][i]["rate"] / by["one node, direct"][i]["rate"] for i in rounds]
        r_direct, r_proxy = lower_median(vs_direct), lower_median(vs_proxy)
        errs = sum(r["status_errors"] + r["socket_errors"] for r in rest_runs)
        rows += [("REST two nodes direct / one node direct", " / ".join(f"{x:.2f}" for x in split),
                  f"{r_split:.2f} x", f">= {TARGET_RATIO:g} x", verdict(r_split >= TARGET_RATIO)),
                 ("REST two nodes (HAProxy) / one node direct", " / ".join(f"{x:.2f}" for x in vs_direct),
                  f"{r_direct:.2f} x", f">= {TARGET_RATIO:g} x", verdict(r_direct >= TARGET_RATIO)),
                 ("REST two nodes (HAProxy) / one node (HAProxy)", " / ".join(f"{x:.2f}" for x in vs_proxy),
                  f"{r_proxy:.2f} x", f">= {TARGET_RATIO:g} x", verdict(r_proxy >= TARGET_RATIO)),
                 ("REST one node through HAProxy / direct", " / ".join(f"{x:.2f}" for x in proxy_cost),
                  f"{lower_median(proxy_cost):.2f} x", "(the proxy's cost)", ""),
                 ("REST errors (non-2xx, socket)", f"{errs}", "", "0", verdict(errs == 0))]
    print()
    if chats:
        print(chat_table(chats, args))
        print()
        c1, c2 = chats["one node"], chats["two nodes"]
        ratio = c2["delivered_in_run"] / max(1, c1["delivered_in_run"])
        per_msg = (c2["nodes_s"] / max(1, c2["sent"])) / max(1e-12, c1["nodes_s"] / max(1, c1["sent"]))
        rows.append(("chat delivered/s two nodes / one node", f"{c2['delivered_in_run'] / args.chat_duration:,.0f}"
                     f" / {c1['delivered_in_run'] / args.chat_duration:,.0f}", f"{ratio:.2f} x",
                     "(reported; offered load is fixed)", ""))
        rows.append(("chat nodes' CPU per message two / one", "", f"{per_msg:.2f} x", "(reported)", ""))
        p99s = [common.summarize_ms(c["lat"])[1] for c in (c1, c2)]
        rows.append(("chat fan-out p99 one / two nodes", f"{fmt(p99s[0])} / {fmt(p99s[1])} ms", "",
                     f"< {signaling.TARGET_P99_MS:g} ms", verdict(all(p < signaling.TARGET_P99_MS for p in p99s))))
        undelivered = sum(c["expected"] - c["delivered"] for c in (c1, c2))
        rows.append(("chat undelivered (both runs)", f"{undelivered}", "", "0", verdict(undelivered == 0)))
    tracebacks = sum(log.count("Traceback") for log in logs)
    rows.append(("tracebacks in the nodes' logs", f"{tracebacks}", "", "0", verdict(tracebacks == 0)))
    rows.append(("exit statuses after SIGTERM", f"{statuses}", "", "0", verdict(all(s == 0 for s in statuses))))
    print(table(rows, title=f"Scaling (issue 9): one node against two behind one Redis, {os.cpu_count()} cores; "
                            "medians over rounds are the lower middle"))
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1000, help="REST accounts, each with its own token")
    p.add_argument("--connections", type=int, default=50, help="wrk's keep-alive connections")
    p.add_argument("--threads", type=int, default=2, help="wrk's threads")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds of wrk before each run")
    p.add_argument("--warm-rounds", type=int, default=1,
                   help="unmeasured rounds over every REST target before the measured ones")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of the three REST runs (median judged; 0: no REST, the chat only)")
    p.add_argument("--rooms", type=int, default=200, help="chat rooms (0: no chat runs)")
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--chat-duration", type=float, default=30.0, help="seconds of chat per run")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between one client's chat messages")
    p.add_argument("--procs", type=int, default=2, help="chat client processes")
    p.add_argument("--concurrency", type=int, default=100, help="WebSocket connections opened at a time")
    p.add_argument("--drain", type=float, default=15.0, help="at most this many seconds for late deliveries")
    p.add_argument("--postgresql", default=common.DEFAULT_POSTGRESQL,
                   help="the PostgreSQL server the clusters' scratch databases are made on")
    p.add_argument("--max-wait", type=float, default=180.0, help="seconds to wait for a quiet machine")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories (logs)")
    p.add_argument("--quick", action="store_true", help="smoke test: 200 users, 2 s wrk runs, 40 chat clients, 5 s")
    args = p.parse_args(argv)
    if args.quick:
        args.max_wait, args.rounds = 0.0, 1
        args.users, args.duration, args.warmup = 200, 2.0, 1.0
        args.rooms, args.chat_duration, args.drain = 4, 5.0, 5.0
    return args


if __name__ == "__main__":
    sys.exit(main(parse()))
