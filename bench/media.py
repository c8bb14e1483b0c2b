"""
Call media benchmark: many active calls relaying media at a steady rate.

``--calls`` (default 100) calls between 2 x calls logged-in clients; each
party sends ``--rate`` (50) packets/s of ``--size`` (1,000) bytes for
``--duration`` (30) s, i.e. calls x 2 x rate packets/s relayed (10,000/s by
default). Every payload carries its send time (``perf_counter_ns``) and a
sequence number. Senders are paced per tick: each 20 ms period is cut into
10 slots and a tenth of the senders send in each slot (real clients are not
synchronised).

The clients run in ``--procs`` forked client processes (default 2: one
Python process cannot both send and receive 10,000 packets/s and stay
punctual); the orchestrating parent only samples the server's CPU and RSS.

The same load runs first through a baseline, ``bench/forwarder.py`` (a
minimal Twisted ``Int32StringReceiver`` that pairs two connections and
forwards frames unchanged), then through the daemon: on a small machine the
clients' own share of the latency is large, and the baseline shows it.

Reported, for both: relay latency p50/p99/max (target for the daemon: p99
under 10 ms), packets sent/received and loss (target 0), relay CPU%, client
CPU and pacing lateness.

    python bench/media.py             # full: 100 calls, 50 pkt/s each way, 30 s (x 2)
    python bench/media.py --quick     # smoke test: 20 calls, 4 s (x 2)
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import queue
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import fmt, percentile, table, verdict  # noqa: E402

TARGET_P99_MS = 10.0
WARMUP = 1.0  # seconds at the start not counted in the latency figures


def client_worker(wid, port, mode, pairs, cfg, ready_q, start_value, result_q):
    """A client process: connect, set up its calls, send and receive media, report."""
    common.raise_nofile_limit()
    try:
        result = common.arun(asyncio.wait_for(_client_worker(wid, port, mode, pairs, cfg, ready_q, start_value),
                                              cfg["duration"] + 300))
    except BaseException as e:  # report, so the parent does not wait forever
        result = {"wid": wid, "error": f"{type(e).__name__}: {e}"}
    result_q.put(result)


async def _setup_daemon_calls(port, token_pairs, size):
    """
    Log in both parties of each pair and place their calls. A party is a
    token (it connects to ``port``) or ``(token, port)`` (the nodes of a
    cluster: ``bench/cluster_media.py``).
    """
    parties = [party if isinstance(party, tuple) else (party, port) for pair in token_pairs for party in pair]
    clients = [None] * len(parties)
    for node_port in sorted({p for _, p in parties}):
        mine = [i for i, (_, p) in enumerate(parties) if p == node_port]
        logged_in, _, failures = await common.connect_and_login(
            node_port, [parties[i][0] for i in mine], concurrency=50, factory=lambda: common.MediaClient(size=size))
        if failures:
            raise RuntimeError(f"{len(failures)} logins failed: {failures[:3]}")
        for i, client in zip(mine, logged_in):
            clients[i] = client
    if len({p for _, p in parties}) > 1:
        await asyncio.sleep(1.0)  # every node has heard of every session (a few ms, normally)
    await asyncio.gather(*(common.place_call(clients[2 * i], clients[2 * i + 1]) for i in range(len(token_pairs))))
    return clients


async def _setup_forwarder_pairs(port, keys, size):
    clients = []
    for key in keys:
        for _ in range(2):
            c = await common.connect(port, lambda: common.MediaClient(size=size, with_call_id=False))
            c.send(key)
            clients.append(c)
    await asyncio.sleep(0.5)  # let the forwarder pair them
    return clients


async def _client_worker(wid, port, mode, pairs, cfg, ready_q, start_value):
    if mode == "daemon":
        clients = await _setup_daemon_calls(port, pairs, cfg["size"])
    else:
        clients = await _setup_forwarder_pairs(port, pairs, cfg["size"])
    for i, c in enumerate(clients):
        c.index = wid * 100000 + i
        c.keep_times = cfg["keep_times"]
    ready_q.put(wid)
    start_at = await common.wait_for_start(start_value)
    measure_from = int((start_at + WARMUP) * 1e9)
    for c in clients:
        c.measure_from_ns = measure_from
    cpu0 = common.own_cpu_seconds()
    lag = common.LoopLag(0.01)
    lag.start()
    lateness = await common.pace(clients, cfg["rate"], cfg["duration"], start_at, groups=10)
    await lag.stop()
    cpu = common.own_cpu_seconds() - cpu0
    # Packets still in flight (bounded wait).
    deadline = time.monotonic() + 3.0
    expected = sum(c.seq for c in clients)
    while time.monotonic() < deadline and sum(c.received for c in clients) < expected:
        await asyncio.sleep(0.05)
    lat, at = array.array("q"), array.array("q")
    for c in clients:
        lat.extend(c.lat_ns)
        at.extend(c.recv_at_ns)
    result = {
        "at": at.tobytes(),
        "wid": wid,
        "sent": expected,
        "received": sum(c.received for c in clients),
        "reordered": sum(c.reordered for c in clients),
        "lat": lat.tobytes(),
        "lateness_ms": [x * 1000 for x in lateness],
        "loop_lag_ms": lag.lags_ms,
        "cpu_s": cpu,
        "errors": sum(len(c.errors) for c in clients),
        "error_samples": [c.errors[0].fields for c in clients if c.errors][:3],
        "unexpected": sum(len(c.unexpected) for c in clients),
        "disconnected": sum(1 for c in clients if c.closed.done()),
    }
    for c in clients:
        c.close()
    await asyncio.sleep(0.2)
    return result


def measure(args, relay, mode, pairs, profile_path=None) -> dict:
    """Run the load through ``relay`` (the daemon or the forwarder); return its figures."""
    ctx = common.mp_context()
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    start_value = ctx.Value("d", 0.0)
    cfg = {"size": args.size, "rate": args.rate, "duration": args.duration, "keep_times": bool(args.stalls)}
    procs = [common.worker_process(client_worker, w, relay.port, mode, pairs[w::args.procs], cfg,
                                   ready_q, start_value, result_q) for w in range(args.procs)]
    results = []
    profile = None
    try:
        ready = 0
        deadline = time.monotonic() + 120
        while ready < args.procs and time.monotonic() < deadline:
            try:
                ready_q.get(timeout=1.0)
                ready += 1
            except queue.Empty:
                if not all(p.is_alive() for p in procs):
                    break
        if ready < args.procs:
            errors = []
            while not result_q.empty():
                errors.append(result_q.get_nowait().get("error"))
            raise RuntimeError(f"client processes failed to set up their calls: {errors}")
        rss_before = relay.rss_kib()
        start_at = time.monotonic() + 1.0
        start_value.value = start_at
        time.sleep(max(0.0, start_at + WARMUP - time.monotonic()))
        cpu = common.CpuMeter(*getattr(relay, "pids", (relay.pid,)))
        cpu.start()
        if profile_path:
            profile = common.Profile(relay.pid, args.duration - WARMUP - 1, profile_path)
        rss = []
        end = start_at + args.duration
        while time.monotonic() < end:  # bounded by the run's duration
            rss.append(relay.rss_kib())
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        cpu.stop()
        rss_after = relay.rss_kib()
        for _ in procs:
            try:
                results.append(result_q.get(timeout=args.duration + 120))
            except queue.Empty:
                break
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    lat, at = common.worker_arrays(results, args.procs, "client process", "lat", "at")
    client_cpu = sum(r["cpu_s"] for r in results) / args.duration * 100
    f = {
        "lat_ms": common.summarize_ms(lat),
        "samples": len(lat),
        "sent": sum(r["sent"] for r in results),
        "received": sum(r["received"] for r in results),
        "reordered": sum(r["reordered"] for r in results),
        "lateness": [x for r in results for x in r["lateness_ms"]],
        "loop_lag": [x for r in results for x in r["loop_lag_ms"]],
        "client_cpu": client_cpu,
        "relay_cpu": cpu.server_pct,
        "per_pid_cpu": [100.0 * x / cpu.wall for x in cpu.per_pid_s],
        "noise": cpu.noise(client_cpu / 100 * cpu.wall),
        "rss": (rss_before, rss_after, max(rss)),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [s for r in results for s in r["error_samples"]][:3],
        "unexpected": sum(r["unexpected"] for r in results),
        "disconnected": sum(r["disconnected"] for r in results),
    }
    if profile is not None:
        profile.finish()
        f["profile"] = profile.summary()
    if args.stalls:
        f["stalls"] = stall_report(lat, at)
    return f


def stall_report(lat, at, slot_ms: float = 10.0, slow_ms: float = 10.0) -> str:
    """
    Are the slow packets (latency > ``slow_ms``) spread over time, or bunched
    in moments when the whole machine stalled? Counts ``slot_ms`` windows (by
    receive time) holding slow packets, and what share of all packets in those
    windows was slow: near 100 % means every connection was late at once.
    """
    if not len(at):
        return "(no samples)"
    t0 = min(at)
    per_slot: dict[int, list[int]] = {}
    for x, t in zip(lat, at):
        s = per_slot.setdefault(int((t - t0) / (slot_ms * 1e6)), [0, 0])
        s[0] += 1
        s[1] += x > slow_ms * 1e6
    slow_slots = [s for s in per_slot.values() if s[1]]
    slow = sum(s[1] for s in slow_slots)
    in_slow_slots = sum(s[0] for s in slow_slots)
    edges = [1, 2, 5, 10, 15, 20, 25, 30, 50]
    counts = [0] * (len(edges) + 1)
    for x in lat:
        ms = x / 1e6
        counts[next((i for i, e in enumerate(edges) if ms < e), len(edges))] += 1
    labels = [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]
    hist = ", ".join(f"{lab} ms: {100 * c / len(lat):.2f} %" for lab, c in zip(labels, counts))
    return (f"latency histogram: {hist}\n    {slow:,} packets over {slow_ms:g} ms, in {len(slow_slots)} of {len(per_slot)} {slot_ms:g}-ms windows "
            f"({100 * len(slow_slots) / len(per_slot):.1f} % of the time); in those windows {100 * slow / max(1, in_slow_slots):.0f} % "
            f"of all packets were over {slow_ms:g} ms")


def main(args) -> int:
    common.raise_nofile_limit()
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    ws = common.Workspace("media", keep=args.keep)
    daemon = None
    base = None
    try:
        if args.baseline:
            print(f"baseline forwarder: {args.calls} pairs, {args.duration:g} s ...", flush=True)
            fwd = common.Forwarder(keyed=True)
            try:
                base = measure(args, fwd, "forwarder", [b"pair-%d" % i for i in range(args.calls)])
            finally:
                fwd.stop()
        data_dir = ws.sub("data")
        names = [f"media{i:04d}" for i in range(2 * args.calls)]
        secret, ids = common.prepare_accounts(data_dir, names)
        tokens = common.mint_tokens(secret, ids)
        daemon = common.Daemon(data_dir, preamble=common.experiment_preamble(args.experiment))
        daemon.start()
        print(f"daemon pid {daemon.pid}{common.experiment_note(args.experiment)}: {args.calls} calls, "
              f"{args.duration:g} s ...", flush=True)
        pairs = [(tokens[names[2 * i]], tokens[names[2 * i + 1]]) for i in range(args.calls)]
        wc = measure(args, daemon, "daemon", pairs,
                     os.path.join(ws.path, "profile.txt") if args.profile else None)
    finally:
        status = daemon.stop() if daemon is not None else None
        log = daemon.log_text() if daemon is not None else ""
        ws.close()

    def ms(x):
        return fmt(x, 3)

    def col(f, fn):
        return fn(f) if f is not None else "not run"

    lost = wc["sent"] - wc["received"]
    p99 = wc["lat_ms"][1]
    rows = [
        ("figure", "baseline forwarder", "WeCompany daemon", "target", "verdict"),
        ("packets sent / received", col(base, lambda f: f"{f['sent']:,} / {f['received']:,}"),
         f"{wc['sent']:,} / {wc['received']:,}", "", ""),
        ("lost", col(base, lambda f: f"{f['sent'] - f['received']:,}"),
         f"{lost:,} ({100 * lost / max(1, wc['sent']):.3f} %)", "0", verdict(lost == 0)),
        ("reordered", col(base, lambda f: f"{f['reordered']}"), f"{wc['reordered']}", "0", ""),
        ("relay latency p50", col(base, lambda f: f"{ms(f['lat_ms'][0])} ms"), f"{ms(wc['lat_ms'][0])} ms", "", ""),
        ("relay latency p99", col(base, lambda f: f"{ms(f['lat_ms'][1])} ms"), f"{ms(p99)} ms",
         f"< {TARGET_P99_MS:g} ms", verdict(p99 < TARGET_P99_MS)),
        ("relay latency p99.9 / max", col(base, lambda f: f"{ms(f['lat_ms'][2])} / {ms(f['lat_ms'][3])} ms"),
         f"{ms(wc['lat_ms'][2])} / {ms(wc['lat_ms'][3])} ms", "", ""),
        ("latency samples (after 1 s warm-up)", col(base, lambda f: f"{f['samples']:,}"), f"{wc['samples']:,}",
         "", ""),
        ("relay CPU (% of one core)", col(base, lambda f: f"{f['relay_cpu']:.1f} %"), f"{wc['relay_cpu']:.1f} %",
         "", ""),
        ("relay CPU per relayed packet", col(base, lambda f: f"{f['relay_cpu'] * 1e4 / (2 * args.calls * args.rate):.0f} us"),
         f"{wc['relay_cpu'] * 1e4 / (2 * args.calls * args.rate):.0f} us", "", ""),
        ("relay RSS start / end (max)", col(base, lambda f: f"{f['rss'][0] / 1024:.1f} / {f['rss'][1] / 1024:.1f} MiB"),
         f"{wc['rss'][0] / 1024:.1f} / {wc['rss'][1] / 1024:.1f} MiB ({wc['rss'][2] / 1024:.1f})", "", ""),
        ("client CPU (all client processes)", col(base, lambda f: f"{f['client_cpu']:.1f} %"),
         f"{wc['client_cpu']:.1f} %", "", ""),
        ("machine noise", col(base, lambda f: f["noise"]), wc["noise"], "", ""),
        ("client send-slot lateness p99 / max", col(base, lambda f: f"{fmt(percentile(f['lateness'], 99))} / "
                                                              f"{fmt(max(f['lateness']))} ms"),
         f"{fmt(percentile(wc['lateness'], 99))} / {fmt(max(wc['lateness']))} ms", "", ""),
        ("client loop lag p99 / max", col(base, lambda f: f"{fmt(percentile(f['loop_lag'], 99))} / "
                                                    f"{fmt(max(f['loop_lag']))} ms"),
         f"{fmt(percentile(wc['loop_lag'], 99))} / {fmt(max(wc['loop_lag']))} ms", "", ""),
        ("ERROR frames / unexpected / disconnected", "", f"{wc['errors']} / {wc['unexpected']} / {wc['disconnected']}",
         "0", verdict(not (wc["errors"] or wc["unexpected"] or wc["disconnected"]))),
        ("tracebacks in server log", "", f"{log.count('Traceback')}", "0", verdict("Traceback" not in log)),
        ("daemon exit status after SIGTERM", "", f"{status}", "0", verdict(status == 0)),
    ]
    print()
    print(table(rows, title=f"Call media: {args.calls} calls x 2 directions x {args.rate:g} pkt/s of {args.size} B "
                            f"= {2 * args.calls * args.rate:,.0f} pkt/s, {args.duration:g} s, "
                            f"{args.procs} client processes"))
    if wc["errors"]:
        print("sample ERROR frames:", wc["error_samples"])
    print("latency = one way, from the send time in the payload to the receiving client reading it; it includes "
          "both client processes' scheduling, which the baseline column shows")
    for name, f in (("baseline forwarder", base), ("WeCompany daemon", wc)):
        if f is not None and f.get("stalls"):
            print(f"{name}: {f['stalls']}")
    if wc.get("profile"):
        print()
        print("py-spy profile of the daemon during the run:")
        print(wc["profile"])
    return 0


def add_load_options(p) -> None:
    """The call load's options (also bench/cluster_media.py's)."""
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--rate", type=float, default=50.0, help="packets/s per party")
    p.add_argument("--size", type=int, default=1000, help="media payload bytes")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    p.add_argument("--procs", type=int, default=2, help="client processes")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(p)
    p.add_argument("--stalls", action="store_true",
                   help="also tell whether slow packets are bunched in time (machine stalls) or spread")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the forwarder run")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 calls, 4 s per run")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--profile", action="store_true", help="py-spy the daemon during the run (needs py-spy)")
    common.add_experiment_option(p)
    p.add_argument("--max-wait", type=float, default=180.0,
                   help="seconds to wait for the (shared) machine to be quiet before measuring")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.duration, args.max_wait = 20, 4.0, 0.0
    if args.size < common.MEDIA_HEADER.size:
        p.error(f"--size must be at least {common.MEDIA_HEADER.size}")
    return args


if __name__ == "__main__":
    sys.exit(main(parse()))
