"""
Slow receiver benchmark: one call party stops reading; nothing else may suffer.

``--calls`` (20) normal calls send ``--rate`` (50) packets/s of ``--size``
(1,000) bytes each way for the whole run, and their relay latency is
recorded. One extra call runs beside them in another client process. After
``--settle`` (15) s, not measured, the run has three phases:

1. ``--before`` (10 s): only the normal calls (and the extra call idle);
2. ``--during`` (30 s): the extra call's receiver stops reading its socket
   entirely (asyncio ``pause_reading``), while its peer sends 1,000-byte
   media at full rate (``--flood-rate`` packets/s; 0 = as fast as TCP lets
   it, the default);
3. ``--after`` (5 s): the flood stops and the slow receiver reads again.

Reported: the server's RSS every second (first / last / max and the growth
during phase 2: must stay flat), the normal calls' latency p50/p99/max and
loss in each phase (p99 during must match before within noise), server
CPU per phase, and what happened to the flood: packets sent, relayed and
dropped by the server (its own per-call counts from its log), and what the
slow receiver got once it read again.

    python bench/slow_receiver.py            # full: 10 + 30 + 5 s
    python bench/slow_receiver.py --quick    # smoke test: 1 + 2 + 5 + 2 s
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import queue
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import codec, fmt, table, verdict  # noqa: E402

RSS_GROWTH_LIMIT_MIB = 10.0  # "flat": growth during the flood below this
P99_NOISE_MS = 2.0  # "unchanged": p99 during within max(2 ms, 1.5 x before)


def phases(cfg, start_at):
    """Ends of the before, during and after phases (the settling time comes first)."""
    a = start_at + cfg["settle"] + cfg["before"]
    b = a + cfg["during"]
    c = b + cfg["after"]
    return a, b, c


def normal_worker(port, token_pairs, cfg, ready_q, start_value, result_q):
    common.raise_nofile_limit()
    try:
        result = common.arun(asyncio.wait_for(_normal(port, token_pairs, cfg, ready_q, start_value),
                                              cfg["total"] + 300))
    except BaseException as e:
        result = {"who": "normal", "error": f"{type(e).__name__}: {e}"}
    result_q.put(result)


async def _normal(port, token_pairs, cfg, ready_q, start_value):
    tokens = [t for pair in token_pairs for t in pair]
    clients, _, failures = await common.connect_and_login(
        port, tokens, factory=lambda: common.MediaClient(cfg["size"], keep_times=True))
    if failures:
        raise RuntimeError(f"logins failed: {failures[:3]}")
    for i, c in enumerate(clients):
        c.index = i
    await asyncio.gather(*(common.place_call(clients[2 * i], clients[2 * i + 1])
                           for i in range(len(token_pairs))))
    ready_q.put("normal")
    start_at = await common.wait_for_start(start_value)
    for c in clients:
        c.measure_from_ns = int((start_at + cfg["settle"]) * 1e9)
    lag = common.LoopLag(0.01)
    lag.start()
    await common.pace(clients, cfg["rate"], cfg["total"], start_at)
    await lag.stop()
    await asyncio.sleep(1.0)
    lat, at = array.array("q"), array.array("q")
    for c in clients:
        lat.extend(c.lat_ns)
        at.extend(c.recv_at_ns)
    # Per phase: packets sent (by send time) are not tracked individually; the
    # receive side's count per phase plus the total loss is enough.
    result = {"who": "normal", "lat": lat.tobytes(), "at": at.tobytes(),
              "sent": sum(c.seq for c in clients), "received": sum(c.received for c in clients),
              "lag_ms": lag.lags_ms, "errors": sum(len(c.errors) for c in clients),
              "disconnected": sum(1 for c in clients if c.closed.done())}
    for c in clients:
        c.close()
    return result


def slow_worker(port, tokens, cfg, ready_q, start_value, result_q):
    common.raise_nofile_limit()
    try:
        result = common.arun(asyncio.wait_for(_slow(port, tokens, cfg, ready_q, start_value), cfg["total"] + 300))
    except BaseException as e:
        result = {"who": "slow", "error": f"{type(e).__name__}: {e}"}
    result_q.put(result)


async def _slow(port, tokens, cfg, ready_q, start_value):
    clients, _, failures = await common.connect_and_login(
        port, tokens, factory=lambda: common.MediaClient(cfg["size"]))
    if failures:
        raise RuntimeError(f"logins failed: {failures}")
    flooder, slow = clients
    call_id = await common.place_call(flooder, slow)
    ready_q.put("slow")
    start_at = await common.wait_for_start(start_value)
    t_a, t_b, t_c = phases(cfg, start_at)
    await asyncio.sleep(max(0.0, t_a - time.monotonic()))
    slow.transport.pause_reading()
    got_before_pause = slow.received
    # Flood: one pre-built batch of frames written again and again (nobody
    # reads their timestamps), so the flood costs this process little CPU;
    # TCP back-pressure (drain) or the configured rate paces it.
    batch = 64
    blob = b"".join(flooder.frame() for _ in range(batch))
    rate = cfg["flood_rate"]
    sent_at_a = flooder.seq
    k = 0
    while True:
        now = time.monotonic()
        if now >= t_b or flooder.closed.done():
            break
        if rate:
            due = t_a + k * batch / rate
            if due > now:
                await asyncio.sleep(min(due - now, t_b - now))
                continue
        flooder.transport.write(blob)
        flooder.seq += batch
        k += 1
        await flooder.drain()
        await asyncio.sleep(0)
    flood_sent = flooder.seq - sent_at_a
    flood_secs = time.monotonic() - t_a
    # Phase 3: read again and see what the kernel buffers and the server had kept.
    slow.transport.resume_reading()
    await asyncio.sleep(max(0.0, t_c - time.monotonic()))
    got_after = slow.received - got_before_pause
    slow_closed = slow.closed.done()
    # End the call so the server logs its relayed / dropped counts for it.
    if not flooder.closed.done():
        flooder.send(codec.u8(codec.MsgType.CALL_END) + codec.qstr(call_id))
    await asyncio.sleep(0.5)
    result = {"who": "slow", "call_id": call_id, "flood_sent": flood_sent, "flood_secs": flood_secs,
              "got_before_pause": got_before_pause, "got_after": got_after, "slow_closed": slow_closed,
              "flooder_closed": flooder.closed.done(),
              "slow_errors": [e.fields for e in slow.errors][:3],
              "flooder_errors": [e.fields for e in flooder.errors][:3]}
    for c in clients:
        c.close()
    return result


def main(args) -> int:
    common.raise_nofile_limit()
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    ws = common.Workspace("slow", keep=args.keep)
    daemon = None
    procs = []
    cfg = {"size": args.size, "rate": args.rate, "before": args.before, "during": args.during,
           "after": args.after, "settle": args.settle,
           "total": args.settle + args.before + args.during + args.after,
           "flood_rate": args.flood_rate}
    results = {}
    profile_text = None
    samples = []  # (monotonic, rss KiB, cpu s)
    try:
        data_dir = ws.sub("data")
        names = [f"slow{i:03d}" for i in range(2 * args.calls + 2)]
        secret, ids = common.prepare_accounts(data_dir, names)
        minted = common.mint_tokens(secret, ids)
        tokens = [minted[n] for n in names]
        daemon = common.Daemon(data_dir, preamble=common.experiment_preamble(args.experiment))
        daemon.start()
        flood = f"{args.flood_rate:g} pkt/s" if args.flood_rate else "as fast as TCP allows"
        print(f"daemon pid {daemon.pid}{common.experiment_note(args.experiment)}; {args.calls} normal calls at {args.rate:g} pkt/s x {args.size} B each way; "
              f"1 call whose receiver stops reading while its peer floods ({flood})")
        ctx = common.mp_context()
        ready_q, result_q = ctx.Queue(), ctx.Queue()
        start_value = ctx.Value("d", 0.0)
        pairs = [(tokens[2 * i], tokens[2 * i + 1]) for i in range(args.calls)]
        procs.append(common.worker_process(normal_worker, daemon.port, pairs, cfg, ready_q, start_value, result_q))
        procs.append(common.worker_process(slow_worker, daemon.port, tokens[-2:], cfg, ready_q, start_value,
                                           result_q))
        ready = 0
        deadline = time.monotonic() + 120
        while ready < 2 and time.monotonic() < deadline:
            try:
                ready_q.get(timeout=1.0)
                ready += 1
            except queue.Empty:
                if not all(p.is_alive() for p in procs):
                    break
        if ready == 2:
            start_at = time.monotonic() + 1.0
            start_value.value = start_at
            t_a, t_b, t_c = phases(cfg, start_at)
            time.sleep(max(0.0, start_at - time.monotonic()))
            machine = common.CpuMeter(daemon.pid)
            machine.start()
            profile = None
            while time.monotonic() < t_c + 0.5:  # bounded by the schedule
                if not daemon.alive():
                    break
                samples.append((time.monotonic(), daemon.rss_kib(), daemon.cpu_seconds()))
                if args.profile and profile is None and time.monotonic() >= t_a + 1.0:
                    profile = common.Profile(daemon.pid, args.during - 2, os.path.join(ws.path, "profile.txt"))
                time.sleep(1.0)
            machine.stop()
        for _ in procs:
            try:
                r = result_q.get(timeout=cfg["total"] + 120)
                results[r["who"]] = r
            except queue.Empty:
                break
        for p in procs:
            p.join(10)
        alive_at_end = daemon.alive()
        if profile is not None:
            profile.finish()
            profile_text = profile.summary()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        status = daemon.stop() if daemon is not None else None
        log = daemon.log_text() if daemon is not None else ""
        ws.close()

    errors = [r["error"] for r in results.values() if "error" in r]
    if errors or len(results) < 2:
        print("worker failures:", errors or "missing results")
        return 1
    normal, slow = results["normal"], results["slow"]
    lat, at = array.array("q"), array.array("q")
    lat.frombytes(normal["lat"])
    at.frombytes(normal["at"])
    bounds = [("before", start_at + args.settle, t_a), ("during (slow + flood)", t_a, t_b), ("after", t_b, t_c + 1.0)]
    phase_rows, p99s = [], {}
    for label, lo, hi in bounds:
        lo_ns, hi_ns = int(lo * 1e9), int(hi * 1e9)
        chunk = [lat[i] for i in range(len(lat)) if lo_ns <= at[i] < hi_ns]
        p50, p99, p999, mx = common.summarize_ms(chunk)
        p99s[label] = p99
        ss = [s for s in samples if lo <= s[0] <= hi]
        cpu = (100 * (ss[-1][2] - ss[0][2]) / (ss[-1][0] - ss[0][0])) if len(ss) >= 2 else float("nan")
        rss = [s[1] / 1024 for s in ss]
        phase_rows.append((label, f"{hi - lo:.0f} s", f"{len(chunk):,}", f"{fmt(p50)} / {fmt(p99)} / {fmt(mx)}",
                           f"{cpu:.0f} %",
                           f"{rss[0]:.1f} / {rss[-1]:.1f} / {max(rss):.1f}" if rss else "n/a"))
    during = [s[1] / 1024 for s in samples if t_a <= s[0] <= t_b]
    growth = (max(during) - during[0]) if during else float("nan")
    all_rss = [s[1] / 1024 for s in samples]
    m = re.search(rf"call {re.escape(slow['call_id'])} finished: \w+, (\d+) packets relayed, (\d+) dropped", log)
    relayed, dropped = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    before_p99, during_p99 = p99s["before"], p99s["during (slow + flood)"]
    latency_ok = during_p99 <= max(before_p99 * 1.5, before_p99 + P99_NOISE_MS)
    lost = normal["sent"] - normal["received"]

    print()
    print(table([("phase", "length", "normal-call packets", "latency p50 / p99 / max ms", "server CPU",
                  "server RSS first / last / max MiB")] + phase_rows,
                title=f"Slow receiver: {args.calls} normal calls + 1 call whose receiver stops reading"))
    print()
    print(table([
        ("figure", "value", "target", "verdict"),
        ("server RSS growth during the flood", f"{growth:+.1f} MiB (whole run {all_rss[0]:.1f} -> "
         f"{all_rss[-1]:.1f}, max {max(all_rss):.1f})", f"< {RSS_GROWTH_LIMIT_MIB:g} MiB (flat)",
         verdict(growth < RSS_GROWTH_LIMIT_MIB)),
        ("normal calls p99 before -> during", f"{fmt(before_p99)} -> {fmt(during_p99)} ms",
         f"<= max(1.5x, +{P99_NOISE_MS:g} ms)", verdict(latency_ok)),
        ("normal calls lost packets", f"{lost:,} of {normal['sent']:,}", "0", verdict(lost == 0)),
        ("flood sent by the peer", f"{slow['flood_sent']:,} packets in {slow['flood_secs']:.1f} s "
         f"({slow['flood_sent'] / slow['flood_secs']:,.0f} pkt/s, "
         f"{slow['flood_sent'] * args.size / slow['flood_secs'] / 1e6:,.1f} MB/s)", "", ""),
        ("server's counts for the slow call", f"{relayed:,} relayed / {dropped:,} dropped" if m else
         "no 'call ... finished' line in the log", "drops, not buffering", verdict(bool(m and dropped))),
        ("slow receiver got while reading again", f"{slow['got_after']:,} packets (what the kernel buffers "
         f"and the server's 64 KiB write buffer held; {slow['got_before_pause']:,} before it paused)", "", ""),
        ("slow receiver / flooder disconnected", f"{slow['slow_closed']} / {slow['flooder_closed']}", "", ""),
        ("ERROR frames to slow receiver / flooder", f"{slow['slow_errors'] or 0} / {slow['flooder_errors'] or 0}",
         "", ""),
        ("normal calls: ERROR frames / disconnected", f"{normal['errors']} / {normal['disconnected']}", "0",
         verdict(not normal['errors'] and not normal['disconnected'])),
        ("normal-call client loop lag p99 / max", f"{fmt(common.percentile(normal['lag_ms'], 99))} / "
         f"{fmt(max(normal['lag_ms'], default=float('nan')))} ms", "", ""),
        ("machine noise during the run", f"steal {machine.steal_pct:.0f} %", "", ""),
        ("server alive at the end / tracebacks in log", f"{alive_at_end} / {log.count('Traceback')}",
         "True / 0", verdict(alive_at_end and "Traceback" not in log)),
        ("daemon exit status after SIGTERM", f"{status}", "0", verdict(status == 0)),
    ]))
    if profile_text:
        print()
        print("py-spy profile of the daemon during the flood:")
        print(profile_text)
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--rate", type=float, default=50.0, help="normal calls: packets/s per party")
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds the normal calls run before anything is measured: TCP's delayed ACKs "
                        "(and so Nagle stalls on the daemon's side) set in only after a while")
    p.add_argument("--before", type=float, default=10.0)
    p.add_argument("--during", type=float, default=30.0)
    p.add_argument("--after", type=float, default=5.0)
    p.add_argument("--flood-rate", type=float, default=0.0,
                   help="the slow call's sender, packets/s (0 = as fast as TCP allows)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 + 2 + 5 + 2 s")
    common.add_experiment_option(p)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--profile", action="store_true", help="py-spy the daemon during the flood (needs py-spy)")
    p.add_argument("--max-wait", type=float, default=180.0,
                   help="seconds to wait for the (shared) machine to be quiet before measuring")
    args = p.parse_args(argv)
    if args.quick:
        args.settle, args.before, args.during, args.after, args.max_wait = 1.0, 2.0, 5.0, 2.0, 0.0
    return args


if __name__ == "__main__":
    sys.exit(main(parse()))
