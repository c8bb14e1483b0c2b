"""
Connections benchmark: many logged-in TCP clients sending heartbeats.

N clients (default 5,000) connect to the real daemon over loopback, log in
with AUTH_TOKEN, and are held for a while (default 60 s). Each sends a
HEARTBEAT every ``--interval`` seconds (default 5 s, six times more often
than the protocol's 30 s, so there are enough round trips to measure),
staggered evenly over the interval; the server echoes it.

Reported: server RSS before connecting, after everyone is logged in and at
the end; RSS per connection = (RSS_all - RSS_before) / N (target: under
30 KiB); heartbeat round-trip p50/p99/max; connect+login time; errors.

    python bench/connections.py            # full: 5,000 clients, 60 s
    python bench/connections.py --quick    # smoke test: 200 clients, 8 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import codec, fmt, percentile, table, verdict  # noqa: E402

HEARTBEAT = codec.HEARTBEAT_BODY
HEARTBEAT_FRAME = common.U32.pack(1) + HEARTBEAT
TARGET_KIB_PER_CONN = 30.0


class HeartbeatClient(common.FrameClient):
    """Times its heartbeats; one outstanding at a time (the echo is an empty body)."""

    def __init__(self) -> None:
        super().__init__()
        self.hb_sent_at: float | None = None
        self.rtts: list[float] = []
        self.hb_sent = 0
        self.hb_overlapped = 0  # due again while the previous one was unanswered

    def control(self, body: bytes) -> None:
        if body == HEARTBEAT and self.hb_sent_at is not None:
            self.rtts.append(time.perf_counter() - self.hb_sent_at)
            self.hb_sent_at = None
            return
        super().control(body)

    def heartbeat(self) -> None:
        if self.hb_sent_at is not None:
            self.hb_overlapped += 1
            return
        self.hb_sent += 1
        self.hb_sent_at = time.perf_counter()
        self.transport.write(HEARTBEAT_FRAME)


async def hold(clients: list[HeartbeatClient], seconds: float, interval: float) -> None:
    """One scheduler for all clients: client i beats at start + i*interval/N + k*interval."""
    n = len(clients)
    start = time.monotonic() + 0.1
    end = start + seconds
    k = 0  # global index of the next beat: client k % n, round k // n
    total = int(seconds / interval * n)
    while k < total:
        now = time.monotonic()
        if now >= end:
            break
        due_at = start + (k // n) * interval + (k % n) * interval / n
        if due_at > now:
            await asyncio.sleep(max(0.001, due_at - now))
            continue
        # Send everything due (within 1 ms) in one go.
        while k < total and start + (k // n) * interval + (k % n) * interval / n <= now + 0.001:
            c = clients[k % n]
            if not c.closed.done():
                c.heartbeat()
            k += 1
    # Let the last echoes arrive (bounded).
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(c.hb_sent_at is not None and not c.closed.done() for c in clients):
        await asyncio.sleep(0.05)


async def main(args) -> int:
    limit = common.raise_nofile_limit()
    if limit < args.clients + 100:
        print(f"RLIMIT_NOFILE is {limit}: too low for {args.clients} clients")
        return 2
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    ws = common.Workspace("connections", keep=args.keep)
    daemon = None
    profile_text = login_profile_text = None
    try:
        data_dir = ws.sub("data")
        t = time.perf_counter()
        names = [f"bench{i:05d}" for i in range(args.clients)]
        secret, ids = common.prepare_accounts(data_dir, names)
        tokens = common.mint_tokens(secret, ids)
        print(f"prepared {len(ids)} accounts (one shared argon2id hash) in {time.perf_counter() - t:.1f} s")

        daemon = common.Daemon(data_dir, preamble=common.experiment_preamble(args.experiment),
                               port_options=f":backlog={args.backlog}" if args.backlog else "")
        daemon.start()
        print(f"daemon pid {daemon.pid}{common.experiment_note(args.experiment)} on 127.0.0.1:{daemon.port}"
              f"{f' (backlog={args.backlog})' if args.backlog else ''}; RLIMIT_NOFILE {limit}")
        await asyncio.sleep(2.0)  # let start-up garbage settle
        rss_before = daemon.rss_kib()
        sampler = common.Sampler(daemon.pid, 1.0)
        sampler.start()

        overflows0 = common.listen_overflows()
        login_profile = common.Profile(daemon.pid, 120, os.path.join(ws.path, "login-profile.txt")) \
            if args.profile else None
        t0 = time.perf_counter()
        clients, login_lat, failures = await common.connect_and_login(
            daemon.port, [tokens[n] for n in names], concurrency=args.concurrency,
            factory=HeartbeatClient)
        login_wall = time.perf_counter() - t0
        overflows = common.listen_overflows() - overflows0
        if login_profile is not None:
            login_profile.finish(early=True)
            login_profile_text = login_profile.summary()
        clients = [c for c in clients if c is not None]
        n = len(clients)
        print(f"{n} clients logged in in {login_wall:.1f} s ({len(failures)} failures)")
        await asyncio.sleep(2.0)
        rss_all = daemon.rss_kib()

        lag = common.LoopLag()
        lag.start()
        cpu = common.CpuMeter(daemon.pid)
        cpu.start()
        profile = common.Profile(daemon.pid, min(30.0, args.hold - 1), os.path.join(ws.path, "profile.txt")) \
            if args.profile else None
        print(f"holding {n} connections for {args.hold:g} s, a heartbeat from each every {args.interval:g} s ...")
        await hold(clients, args.hold, args.interval)
        cpu.stop()
        if profile is not None:
            profile.finish()
            profile_text = profile.summary()
        await lag.stop()
        rss_end = daemon.rss_kib()
        await sampler.stop()
        rss_max = max(s[1] for s in sampler.samples)

        disconnected = sum(1 for c in clients if c.closed.done())
        rtts_ms = [r * 1000 for c in clients for r in c.rtts]
        sent = sum(c.hb_sent for c in clients)
        unanswered = sum(1 for c in clients if c.hb_sent_at is not None)
        overlapped = sum(c.hb_overlapped for c in clients)
        error_frames = sum(len(c.errors) for c in clients)
        unexpected = sum(len(c.unexpected) for c in clients)
        for c in clients:
            c.close()
        await asyncio.sleep(0.5)
    finally:
        status = daemon.stop() if daemon is not None else None
        log = daemon.log_text() if daemon is not None else ""
        ws.close()

    per_conn = (rss_all - rss_before) / max(1, n)
    per_conn_end = (rss_end - rss_before) / max(1, n)
    p99 = percentile(rtts_ms, 99)
    print()
    print(table([
        ("figure", "value", "target", "verdict"),
        ("clients logged in", f"{n} / {args.clients}", f"{args.clients}", verdict(n == args.clients)),
        ("connect+login wall time", f"{login_wall:.2f} s ({n / login_wall:,.0f}/s, {args.concurrency} in flight)", "", ""),
        ("connect+login latency p50/p99/max", f"{fmt(percentile(login_lat, 50) * 1000, 1)} / "
         f"{fmt(percentile(login_lat, 99) * 1000, 1)} / {fmt(max(login_lat, default=float('nan')) * 1000, 1)} ms", "", ""),
        ("logins slower than 1 s (SYN retransmit)", f"{sum(1 for x in login_lat if x >= 1.0)}", "", ""),
        ("kernel ListenOverflows while connecting", f"{overflows}", "", ""),
        ("server RSS before connecting", f"{rss_before / 1024:.1f} MiB", "", ""),
        ("server RSS all logged in", f"{rss_all / 1024:.1f} MiB", "", ""),
        ("server RSS at end (max seen)", f"{rss_end / 1024:.1f} MiB ({rss_max / 1024:.1f} MiB)", "", ""),
        ("RSS per connection (all logged in)", f"{per_conn:.1f} KiB", f"< {TARGET_KIB_PER_CONN:g} KiB",
         verdict(per_conn < TARGET_KIB_PER_CONN)),
        ("RSS per connection (at end)", f"{per_conn_end:.1f} KiB", f"< {TARGET_KIB_PER_CONN:g} KiB",
         verdict(per_conn_end < TARGET_KIB_PER_CONN)),
        ("heartbeats sent / echoed", f"{sent:,} / {len(rtts_ms):,}", "all", verdict(len(rtts_ms) == sent)),
        ("heartbeat RTT p50 / p99 / max", f"{fmt(percentile(rtts_ms, 50))} / {fmt(p99)} / "
         f"{fmt(max(rtts_ms, default=float('nan')))} ms", "(reported)", ""),
        ("heartbeat rate", f"{sent / args.hold:,.0f}/s", "", ""),
        ("server CPU during hold", f"{cpu.server_pct:.1f} %", "", ""),
        ("client CPU during hold", f"{cpu.client_pct:.1f} %", "", ""),
        ("machine noise during hold", cpu.noise(cpu.client_pct / 100 * cpu.wall), "", ""),
        ("client loop lag p99 / max", f"{fmt(percentile(lag.lags_ms, 99))} / {fmt(max(lag.lags_ms, default=float('nan')))} ms", "", ""),
        ("errors: login failures", f"{len(failures)}", "0", verdict(not failures)),
        ("errors: ERROR frames / unexpected frames", f"{error_frames} / {unexpected}", "0", verdict(not error_frames and not unexpected)),
        ("errors: disconnected during hold", f"{disconnected}", "0", verdict(not disconnected)),
        ("errors: unanswered at end / overlapped beats", f"{unanswered} / {overlapped}", "0", verdict(not unanswered)),
        ("errors: tracebacks in server log", f"{log.count('Traceback')}", "0", verdict("Traceback" not in log)),
        ("daemon exit status after SIGTERM", f"{status}", "0", verdict(status == 0)),
    ], title=f"Connections: {args.clients} clients, hold {args.hold:g} s, heartbeat every {args.interval:g} s per client"))
    if failures:
        print("first login failures:", failures[:5])
    if login_profile_text:
        print()
        print("py-spy profile of the daemon while the clients connect and log in:")
        print(login_profile_text)
    if profile_text:
        print()
        print("py-spy profile of the daemon while holding the connections:")
        print(profile_text)
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--hold", type=float, default=60.0, help="seconds to hold the connections")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between one client's heartbeats")
    p.add_argument("--concurrency", type=int, default=100, help="connect+login attempts in flight")
    p.add_argument("--backlog", type=int, default=0,
                   help="listen backlog for the daemon's --port endpoint (tcp:...:backlog=N); "
                        "default: the daemon's (Twisted's 50)")
    p.add_argument("--quick", action="store_true", help="smoke test: 200 clients, 8 s, 2 s interval")
    common.add_experiment_option(p)
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir and log")
    p.add_argument("--profile", action="store_true", help="py-spy the daemon while holding (needs py-spy)")
    p.add_argument("--max-wait", type=float, default=180.0,
                   help="seconds to wait for the (shared) machine to be quiet before measuring")
    args = p.parse_args(argv)
    if args.quick:
        args.max_wait = 0.0
        args.clients, args.hold, args.interval = 200, 8.0, 2.0
    return args


if __name__ == "__main__":
    a = parse()
    sys.exit(common.run(main(a), hard_timeout=a.hold + 600))
