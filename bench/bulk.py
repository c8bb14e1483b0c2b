"""
Bulk relay benchmark: one call pushing media as fast as it can.

One sender pushes ``--size`` (16 KiB) MEDIA_DATA packets to one receiver
for ``--duration`` (10) s, through

1. a baseline: ``bench/forwarder.py``, a minimal Twisted
   ``Int32StringReceiver`` that forwards each frame to its paired
   connection, started as its own process, and
2. the real daemon, in an accepted call,

with the same client, packet size and sender policy, one after the other on
the same machine. The figure is MB/s *delivered to the receiver*
(1 MB = 10^6 bytes of media payload), and the target is WeCompany >= 60 % of
the baseline.

The sender must not overrun the relay: the daemon drops media for a
receiver whose connection cannot keep up (by design), while the baseline
would buffer without bound. So the sender keeps at most ``--window``
packets in flight (sent but not yet seen by the receiver; a packet the
server dropped stops counting once a later one arrives, or after a 100 ms
stall). The default runs a sweep of windows; the target is judged on
``--judge-window``. Drops are reported for each run; a run without a window
(only TCP back-pressure) is shown for the daemon alone, to show its
dropping behaviour.

    python bench/bulk.py            # full: 16 KiB packets, 10 s per run
    python bench/bulk.py --quick    # smoke test: 2 s per run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import codec, table, verdict  # noqa: E402

TARGET_RATIO = 0.60
WARMUP = 1.0


async def push(sender: common.MediaClient, receiver: common.MediaClient, duration: float, window: int,
               server_pid: int, rss_kib) -> dict:
    """Send as fast as the window allows for ``duration`` s; figures over all but the first second."""
    receiver.progress = asyncio.Event()
    start = time.monotonic()
    measure_at, end = start + WARMUP, start + duration
    stalls = 0
    base = 0  # packets up to here are written off (dropped by the relay)
    measured = None
    rss_max = rss_kib()
    last_rss = start
    batch = max(1, min(window or 64, 64))
    while True:
        now = time.monotonic()
        if measured is None and now >= measure_at:
            cpu = common.CpuMeter(server_pid)
            cpu.start()
            measured = (now, receiver.received_bytes, receiver.received, sender.seq)
        if now >= end:
            break
        if now - last_rss >= 0.5:
            rss_max, last_rss = max(rss_max, rss_kib()), now
        if window:
            room = max(receiver.max_seq, base) + window - sender.seq
        else:
            room = batch
        if room > 0:
            for _ in range(min(room, batch)):
                sender.transport.write(sender.frame())
            await sender.drain()
            await asyncio.sleep(0)  # let the receiver read
        else:
            receiver.progress.clear()
            try:
                await asyncio.wait_for(receiver.progress.wait(), 0.1)
            except asyncio.TimeoutError:
                stalls += 1
                base = sender.seq
    now = time.monotonic()
    cpu.stop()
    t0, b0, r0, s0 = measured
    wall = now - t0
    figures = {
        "mb_s": (receiver.received_bytes - b0) / wall / 1e6,
        "pkts_s": (receiver.received - r0) / wall,
        "sent_s": (sender.seq - s0) / wall,
        "server_cpu": cpu.server_pct,
        "client_cpu": cpu.client_pct,
        "noise": cpu.noise(cpu.client_pct / 100 * cpu.wall),
        "stalls": stalls,
    }
    # Let what is in flight arrive (bounded), then count drops.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and receiver.max_seq < sender.seq:
        receiver.progress.clear()
        try:
            await asyncio.wait_for(receiver.progress.wait(), 0.2)
        except asyncio.TimeoutError:
            break
    figures["sent"] = sender.seq
    figures["received"] = receiver.received
    figures["dropped"] = sender.seq - receiver.received
    figures["rss_max"] = max(rss_max, rss_kib())
    return figures


async def run_baseline(args, window: int) -> dict:
    fwd = common.Forwarder()
    try:
        sender = await common.connect(fwd.port, lambda: common.MediaClient(args.size, 1, with_call_id=False))
        receiver = await common.connect(fwd.port, lambda: common.MediaClient(args.size, 2, with_call_id=False))
        await asyncio.sleep(0.2)  # paired
        rss0 = fwd.rss_kib()
        figures = await push(sender, receiver, args.duration, window, fwd.pid, fwd.rss_kib)
        figures["rss0"] = rss0
        sender.close()
        receiver.close()
        await asyncio.sleep(0.2)
    finally:
        fwd.stop()
    return figures


async def run_daemon(args, window: int, daemon: common.Daemon, tokens: list[str], profile_path=None) -> dict:
    clients, _, failures = await common.connect_and_login(
        daemon.port, tokens, factory=lambda: common.MediaClient(args.size))
    if failures:
        raise RuntimeError(f"login failed: {failures}")
    sender, receiver = clients
    call_id = await common.place_call(sender, receiver)
    rss0 = daemon.rss_kib()
    profile = common.Profile(daemon.pid, args.duration - WARMUP, profile_path) if profile_path else None
    figures = await push(sender, receiver, args.duration, window, daemon.pid, daemon.rss_kib)
    figures["rss0"] = rss0
    if profile is not None:
        profile.finish()
        figures["profile"] = profile.summary()
    # End the call so the server logs its own relayed/dropped counts for it.
    ended = asyncio.ensure_future(receiver.expect(codec.MsgType.CALL_END, 10))
    await asyncio.sleep(0)
    sender.send(codec.u8(codec.MsgType.CALL_END) + codec.qstr(call_id))
    try:
        await ended
    except (asyncio.TimeoutError, ConnectionError):
        pass
    await asyncio.sleep(0.3)
    m = re.search(rf"call {re.escape(call_id)} finished: \w+, (\d+) packets relayed, (\d+) dropped",
                  daemon.log_text())
    figures["server_counts"] = (int(m.group(1)), int(m.group(2))) if m else None
    figures["errors"] = len(sender.errors) + len(receiver.errors)
    sender.close()
    receiver.close()
    await asyncio.sleep(0.3)
    return figures


async def main(args) -> int:
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    ws = common.Workspace("bulk", keep=args.keep)
    daemon = None
    rows = []
    results = {}
    try:
        data_dir = ws.sub("data")
        windows = args.windows
        names = [f"bulk{i:03d}" for i in range(2 * (len(windows) + 1))]
        secret, ids = common.prepare_accounts(data_dir, names)
        tokens = common.mint_tokens(secret, ids)
        daemon = common.Daemon(data_dir, preamble=common.experiment_preamble(args.experiment))
        daemon.start()
        print(f"daemon pid {daemon.pid}{common.experiment_note(args.experiment)}; {args.size}-byte packets, {args.duration:g} s per run "
              f"(first {WARMUP:g} s not counted)")
        pair = iter(range(0, len(names), 2))
        for window in windows:
            i = next(pair)
            print(f"window {window} packets: baseline ...", flush=True)
            base = await run_baseline(args, window)
            print(f"window {window} packets: wecompany ...", flush=True)
            profile = os.path.join(ws.path, "profile.txt") if args.profile and window == args.judge_window else None
            wc = await run_daemon(args, window, daemon, [tokens[names[i]], tokens[names[i + 1]]], profile)
            results[window] = (base, wc)
        if args.unwindowed:
            i = next(pair)
            print("no window: wecompany ...", flush=True)
            wc = await run_daemon(args, 0, daemon, [tokens[names[i]], tokens[names[i + 1]]])
            results[0] = (None, wc)
    finally:
        status = daemon.stop() if daemon is not None else None
        log = daemon.log_text() if daemon is not None else ""
        ws.close()

    for window, (base, wc) in results.items():
        label = f"{window} x {args.size // 1024} KiB" if window else "none (TCP only)"
        for name, f in (("baseline forwarder", base), ("WeCompany daemon", wc)):
            if f is None:
                rows.append((label, name, "not run: it would buffer without bound", "", "", "", "", "", "", ""))
                continue
            counts = f.get("server_counts")
            server = f" (server: {counts[0]:,} relayed / {counts[1]:,} dropped)" if counts else ""
            ratio = f"{100 * wc['mb_s'] / base['mb_s']:.0f} %" if base and f is wc else ""
            rows.append((label, name, f"{f['mb_s']:,.1f}", ratio, f"{f['sent']:,} / {f['received']:,}",
                         f"{f['dropped']:,}{server}", f"{f['stalls']}",
                         f"{f['server_cpu']:.0f} % / {f['client_cpu']:.0f} %", f["noise"],
                         f"{f['rss0'] / 1024:.0f} -> {f['rss_max'] / 1024:.0f}"))
    print()
    print(table([("window", "relay", "delivered MB/s", "vs baseline", "packets sent / received", "dropped",
                  "stalls", "CPU relay / client", "machine noise", "relay RSS MiB")] + rows,
                title=f"Bulk relay: one call, {args.size}-byte packets, {args.duration:g} s per run"))
    judged = results.get(args.judge_window)
    print()
    if judged and judged[0]:
        base, wc = judged
        ratio = wc["mb_s"] / base["mb_s"]
        print(f"target: WeCompany delivered >= {TARGET_RATIO:.0%} of the baseline (window {args.judge_window}): "
              f"{wc['mb_s']:,.1f} / {base['mb_s']:,.1f} MB/s = {ratio:.0%}  {verdict(ratio >= TARGET_RATIO)}")
    print(f"ERROR frames: {sum(r[1].get('errors', 0) for r in results.values())}; tracebacks in server log: "
          f"{log.count('Traceback')}; daemon exit status after SIGTERM: {status} {verdict(status == 0)}")
    print("MB/s = media payload bytes delivered to the receiver per second / 10^6; CPU in % of one core, "
          "measured over the counted part of each run")
    if judged and judged[1].get("profile"):
        print()
        print(f"py-spy profile of the daemon during the window-{args.judge_window} run:")
        print(judged[1]["profile"])
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=16384, help="media payload bytes per packet")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--windows", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16, 64],
                   help="comma-separated packets-in-flight limits to run (default 4,16,64)")
    p.add_argument("--judge-window", type=int, default=16, help="window the 60 %% target is judged on")
    p.add_argument("--no-unwindowed", dest="unwindowed", action="store_false",
                   help="skip the daemon run without a window")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 s per run, windows 16 only")
    common.add_experiment_option(p)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--profile", action="store_true", help="py-spy the daemon in the judged run (needs py-spy)")
    p.add_argument("--max-wait", type=float, default=180.0,
                   help="seconds to wait for the (shared) machine to be quiet before measuring")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.windows, args.max_wait = 2.5, [16], 0.0
    if args.judge_window not in args.windows:
        args.judge_window = args.windows[0]
    return args


if __name__ == "__main__":
    a = parse()
    sys.exit(common.run(main(a), hard_timeout=(a.duration + 30) * 2 * (len(a.windows) + 1) + 300))
