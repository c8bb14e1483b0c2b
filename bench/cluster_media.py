"""
Cross-node call media: the TCP media benchmark's load through a cluster.

The load of ``bench/media.py`` (``--calls`` 100 calls, both parties sending
``--rate`` 50 packets/s of ``--size`` 1,000 bytes for ``--duration`` 30 s:
10,000 packets/s relayed), run twice in one run:

1. **one node**: one daemon on its own (SQLite, no Redis), as ``media.py``
   measures it: the baseline;
2. **across, Redis**: two daemons clustered on a private ``redis-server``
   and a scratch PostgreSQL database (``common.ClusterNodes``), every
   caller logged in on node 1 and every callee on node 2, so every packet
   crosses nodes: the caller's node owns the call, and media from the
   callee's node reaches it (and its answers reach the callee's node)
   through Redis pub/sub;
3. **across, node links**: the same with ``--node-link`` on both nodes,
   so media goes over a direct connection between them
   (``wecompany/mirror/medialink.py``).

``--paths`` picks the cross-node runs; ``--same-node`` adds one: the
Redis cluster with both parties of every call on node 1 (what clustering
costs a call that does not cross nodes).

Figures for each run: one-way relay latency p50/p99/p99.9/max, packets
sent / received and loss, CPU of each daemon and of Redis (percent of one
core) and the CPU per relayed packet, the clients' CPU, steal and other
processes' CPU. Target (issue 9): report p50/p99 and loss next to one node;
the TCP benchmark's own targets (p99 < 10 ms, loss 0) are shown for both.

    python bench/cluster_media.py            # full: 100 calls, 30 s per run (~4 min)
    python bench/cluster_media.py --quick    # smoke test: 20 calls, 4 s per run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import media  # noqa: E402
from common import fmt, table, verdict  # noqa: E402


class ClusterRelay:
    """What ``media.measure`` reads of a relay, for the nodes of a cluster and their Redis."""

    port = None  # every party names its node's port

    def __init__(self, cluster: common.ClusterNodes) -> None:
        self.cluster = cluster
        self.pid = cluster.nodes[0].pid
        self.pids = (*cluster.pids, cluster.redis.pid)

    def rss_kib(self) -> int:
        return sum(node.rss_kib() for node in self.cluster.nodes)


def wait_for_links(cluster: common.ClusterNodes, timeout: float = 30.0) -> None:
    """Until each node's log says its media link with the other is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all("media link with node" in node.log_text() for node in cluster.nodes):
            return
        time.sleep(0.1)
    raise RuntimeError("the nodes' media links did not come up")


def main(args) -> int:
    common.raise_nofile_limit()
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    names = [f"media{i:04d}" for i in range(2 * args.calls)]
    runs = {}
    ws = common.Workspace("cluster-media", keep=args.keep)
    logs, statuses = [], []
    try:
        data_dir = ws.sub("alone")
        secret, ids = common.prepare_accounts(data_dir, names)
        tokens = common.mint_tokens(secret, ids)
        daemon = common.Daemon(data_dir)
        daemon.start()
        try:
            print(f"one node (pid {daemon.pid}): {args.calls} calls, {args.duration:g} s ...", flush=True)
            pairs = [(tokens[names[2 * i]], tokens[names[2 * i + 1]]) for i in range(args.calls)]
            runs["one node"] = media.measure(args, daemon, "daemon", pairs)
        finally:
            statuses.append(daemon.stop())
            logs.append(daemon.log_text())

        for path, extra in (("Redis", ()), ("node links", ("--node-link", "tcp:0:interface=127.0.0.1"))):
            if path not in args.paths:
                continue
            cws = common.Workspace(f"cluster-media-{len(runs)}", keep=args.keep)
            try:
                cluster = common.ClusterNodes(cws, 2, names, postgresql=args.postgresql, args=extra)
            except BaseException:
                cws.close()
                raise
            try:
                cluster.start()
                if extra:
                    wait_for_links(cluster)
                tokens = cluster.tokens()
                a, b = (node.port for node in cluster.nodes)
                relay = ClusterRelay(cluster)
                print(f"two nodes, media through {path} (pids {cluster.pids}, redis {cluster.redis.pid}): "
                      "callers on n1, callees on n2 ...", flush=True)
                pairs = [((tokens[names[2 * i]], a), (tokens[names[2 * i + 1]], b)) for i in range(args.calls)]
                runs[f"across, {path}"] = media.measure(
                    args, relay, "daemon", pairs, os.path.join(ws.path, f"profile-{len(runs)}.txt")
                    if args.profile else None)
                if args.same_node and path == "Redis":
                    # Other accounts, so that no call of the last run is still being cleaned up.
                    print("two nodes: both parties on n1 ...", flush=True)
                    pairs = [((tokens[names[2 * i + 1]], a), (tokens[names[2 * i]], a)) for i in range(args.calls)]
                    runs["same node of two"] = media.measure(args, relay, "daemon", pairs)
            finally:
                logs.extend(node.log_text() for node in cluster.nodes)
                statuses.extend(cluster.stop())
                cws.close()
    finally:
        ws.close()

    load = 2 * args.calls * args.rate
    names_ = list(runs)
    rows = [("figure", *names_, "target")]

    def row(label, fn, target=""):
        rows.append((label, *(fn(runs[n]) for n in names_), target))

    row("packets sent / received", lambda f: f"{f['sent']:,} / {f['received']:,}")
    row("lost", lambda f: f"{f['sent'] - f['received']:,} ({100 * (f['sent'] - f['received']) / max(1, f['sent']):.3f} %)",
        "0")
    row("reordered", lambda f: f"{f['reordered']}")
    row("relay latency p50", lambda f: f"{fmt(f['lat_ms'][0], 3)} ms")
    row("relay latency p99", lambda f: f"{fmt(f['lat_ms'][1], 3)} ms", f"< {media.TARGET_P99_MS:g} ms")
    row("relay latency p99.9 / max", lambda f: f"{fmt(f['lat_ms'][2], 3)} / {fmt(f['lat_ms'][3], 3)} ms")
    row("CPU: daemons (each) / Redis", lambda f: (
        " + ".join(f"{x:.0f}" for x in f["per_pid_cpu"][:-1]) + f" / {f['per_pid_cpu'][-1]:.0f} %"
        if len(f["per_pid_cpu"]) > 1 else f"{f['per_pid_cpu'][0]:.0f} % / -"))
    row("server CPU per relayed packet (all)", lambda f: f"{f['relay_cpu'] * 1e4 / load:.0f} us")
    row("client CPU (all client processes)", lambda f: f"{f['client_cpu']:.0f} %")
    row("machine noise", lambda f: f["noise"])
    row("ERROR frames / unexpected / disconnected",
        lambda f: f"{f['errors']} / {f['unexpected']} / {f['disconnected']}", "0")
    tracebacks = sum(log.count("Traceback") for log in logs)
    print()
    print(table(rows, title=f"Call media across nodes: {args.calls} calls x 2 directions x {args.rate:g} pkt/s of "
                            f"{args.size} B = {load:,.0f} pkt/s, {args.duration:g} s per run"))
    alone = runs["one node"]
    for name in names_:
        if not name.startswith("across"):
            continue
        across = runs[name]
        lost = across["sent"] - across["received"]
        print(f"{name} vs one node: p50 {fmt(across['lat_ms'][0] / max(1e-9, alone['lat_ms'][0]))} x, "
              f"p99 {fmt(across['lat_ms'][1] / max(1e-9, alone['lat_ms'][1]))} x, server CPU "
              f"{fmt(across['relay_cpu'] / max(1e-9, alone['relay_cpu']))} x; loss {lost} {verdict(lost == 0)}; "
              f"p99 {fmt(across['lat_ms'][1], 3)} ms {verdict(across['lat_ms'][1] < media.TARGET_P99_MS)} "
              "(against bench/media.py's one-node target)")
    print(f"tracebacks in the daemons' logs: {tracebacks} {verdict(tracebacks == 0)}; exit statuses after "
          f"SIGTERM: {statuses} {verdict(all(s == 0 for s in statuses))}")
    for name in names_:
        if runs[name].get("profile"):
            print()
            print(f"py-spy profile of node 1 (the calls' owner), {name}:")
            print(runs[name]["profile"])
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    media.add_load_options(p)
    p.add_argument("--paths", default="Redis,node links", type=lambda v: [x.strip() for x in v.split(",")],
                   help="how media crosses nodes, comma-separated: Redis (pub/sub), node links (--node-link)")
    p.add_argument("--same-node", action="store_true", help="also run the cluster with both parties on one node")
    p.add_argument("--postgresql", default=common.DEFAULT_POSTGRESQL,
                   help="the PostgreSQL server the cluster's scratch database is made on")
    p.add_argument("--max-wait", type=float, default=180.0, help="seconds to wait for a quiet machine")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--profile", action="store_true",
                   help="record node 1 (the calls' owner) with py-spy during the run across nodes")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 calls, 4 s per run")
    args = p.parse_args(argv)
    args.stalls = False
    if args.quick:
        args.calls, args.duration, args.max_wait = 20, 4.0, 0.0
    return args


if __name__ == "__main__":
    sys.exit(main(parse()))
