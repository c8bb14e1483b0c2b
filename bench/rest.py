"""
REST benchmark: cheap authenticated routes, quiet and while logins hash.

``--users`` accounts (one shared argon2id hash of the bench password, made
before the daemon starts) and ``--meetings`` meetings (created through
``POST /api/v1/meetings`` once it runs). The daemon is started with
``--auth-rate 100000 --auth-burst 100000 --login-failures-per-address 100000``:
auth requests, and password checks under way or failed, are limited per
client address, and every client here is 127.0.0.1.

``--concurrency`` (50) keep-alive connections, each a closed loop (next request
when the answer arrives, like ``wrk``), run ``GET /api/v1/meetings?page=1&page_size=10``
and ``GET /api/v1/users/profile`` (each request with another user's token)
for ``--duration`` (20) s per phase, after a 1 s warm-up that is not counted:

A   quiet: meetings only, profile only, then both alternated ("mixed", the reference)
B   mixed, while another client process sends ``--login-rate`` (20) real
    ``POST /api/v1/auth/login`` per second (open loop: one every 1/rate s
    whatever happens to the earlier ones), each a real argon2id verification
    in the daemon's hashing thread pool. Target: the cheap routes' p99 at most
    2x the quiet (A mixed) p99.
C   the same at ``--low-login-rate`` (4) logins/s (0: skipped), a rate the
    machine's CPU can sustain, to tell "hashing blocks the reactor" from
    "hashing takes the CPU".
A'  mixed, quiet again (is the machine the same as before?)

After a login phase the script waits (bounded) for the logins still queued in
the daemon to finish and for its CPU to settle before the next phase.

Reported per phase: requests/s, latency p50/p99/max, errors (non-2xx,
timeouts, disconnections), server CPU (whole process and its reactor thread),
client CPU, machine noise; per login phase: logins sent / succeeded / failed
/ unfinished, the rate they completed at, latency p50/p99/max.

    python bench/rest.py            # full: 6 phases x 20 s          (~3 min)
    python bench/rest.py --quick    # smoke test: 2 s phases, mixed only (< 30 s)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import fmt, percentile, table, verdict  # noqa: E402

WARMUP = 1.0
ROUTES = {
    "meetings": "/api/v1/meetings?page=1&page_size=10",
    "profile": "/api/v1/users/profile",
}
DAEMON_ARGS = ("--auth-rate", "100000", "--auth-burst", "100000", "--login-failures-per-address", "100000")


# -- the login client (a process of its own) ---------------------------------------------------

def login_worker(port, usernames, rate, duration, drain, start_value, result_q):
    asyncio.events._set_running_loop(None)  # forked from the parent's running loop
    common.raise_nofile_limit()
    try:
        result = common.arun(asyncio.wait_for(
            _login_worker(port, usernames, rate, duration, drain, start_value), duration + drain + 120))
    except BaseException as e:  # report, so the parent does not wait forever
        result = {"error": f"{type(e).__name__}: {e}"}
    result_q.put(result)


async def _login_worker(port, usernames, rate, duration, drain, start_value):
    free: list[common.HttpConnection] = []
    lat: list[float] = []
    done_at: list[float] = []
    statuses: dict[str, int] = {}
    samples: list[str] = []
    start_at = await common.wait_for_start(start_value)
    measure_from = start_at + WARMUP
    end = measure_from + duration
    cpu0 = common.own_cpu_seconds()

    async def one(k: int) -> None:
        conn = free.pop() if free else None
        try:
            if conn is None or conn.closed.done():
                conn = await common.http_connect(port)
            t0 = time.monotonic()
            status, env = await common.api(conn, "POST", "/api/v1/auth/login", body={
                "username": usernames[k % len(usernames)], "password": common.PASSWORD},
                timeout=duration + drain + 60)
            t1 = time.monotonic()
            ok = status == 200 and bool((env.get("data") or {}).get("token"))
            key = "ok" if ok else f"HTTP {status}"
            if not ok and len(samples) < 3:
                samples.append(f"{status} {str(env)[:160]}")
            lat.append(t1 - t0)
            done_at.append(t1)
            free.append(conn)
        except asyncio.CancelledError:
            key = "unfinished"
            if conn is not None:
                conn.close()
        except Exception as e:
            key = type(e).__name__
            if len(samples) < 3:
                samples.append(f"{type(e).__name__}: {e}")
            if conn is not None:
                conn.close()
        statuses[key] = statuses.get(key, 0) + 1

    # Logins start with the warm-up of the cheap load and go on to its end (open loop).
    tasks = []
    total = int(round((end - start_at) * rate))
    for k in range(total):
        due = start_at + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() >= end:
            break
        tasks.append(asyncio.ensure_future(one(k)))
    sent = len(tasks)
    # Logins still queued in the daemon's hash pool (bounded wait).
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, end + drain - time.monotonic()))
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for c in free:
        c.close()
    in_window = sum(1 for t in done_at if measure_from <= t < end)
    return {"sent": sent, "statuses": statuses, "lat": lat, "done_in_window": in_window,
            "last_done": max(done_at, default=end) - end, "samples": samples,
            "cpu_s": common.own_cpu_seconds() - cpu0}


# -- the cheap-route load (this process) ---------------------------------------------------------

async def cheap_load(port, tokens, routes, concurrency, measure_from, end):
    """Closed-loop workers from now to ``end``; records requests started at or after ``measure_from``."""
    records: dict[str, list[float]] = {r: [] for r in routes}
    errors: dict[str, int] = {}
    samples: list[str] = []
    conns = await asyncio.gather(*(common.http_connect(port) for _ in range(concurrency)))

    def error(key: str, text: str) -> None:
        errors[key] = errors.get(key, 0) + 1
        if len(samples) < 3:
            samples.append(text)

    async def worker(i: int) -> None:
        conn = conns[i]
        k = 0
        reconnects = 0
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                break
            route = routes[(i + k) % len(routes)]
            token = tokens[(i + k * concurrency) % len(tokens)]
            k += 1
            try:
                status, body = await conn.request("GET", ROUTES[route], token, timeout=max(1.0, end - t0 + 10))
            except Exception as e:
                if t0 >= measure_from:
                    error(type(e).__name__, f"{route}: {type(e).__name__}: {e}")
                conn.close()
                reconnects += 1
                if reconnects > 10 or time.monotonic() >= end:
                    break
                try:
                    conn = conns[i] = await common.http_connect(port)
                except Exception as e2:
                    error(type(e2).__name__, f"reconnect: {e2}")
                    break
                continue
            t1 = time.monotonic()
            if t0 < measure_from:
                continue
            if 200 <= status < 300 and body.startswith(b'{"code":2'):
                records[route].append(t1 - t0)
            else:
                error(f"HTTP {status}", f"{route}: {status} {body[:160]!r}")

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for c in conns:
        c.close()
    return records, errors, samples


async def wait_server_idle(daemon, max_wait: float, threshold_pct: float = 15.0) -> float:
    """Wait (at most ``max_wait`` s) until the daemon uses less than ``threshold_pct`` % CPU over 1 s."""
    t_end = time.monotonic() + max_wait
    waited = time.monotonic()
    while time.monotonic() < t_end:
        c0 = daemon.cpu_seconds()
        await asyncio.sleep(1.0)
        if 100 * (daemon.cpu_seconds() - c0) < threshold_pct:
            break
    return time.monotonic() - waited


async def run_phase(args, daemon, tokens, usernames, name, routes, login_rate, profile_path=None):
    print(f"phase {name}: {'+'.join(routes)}, {args.concurrency} clients, {args.duration:g} s"
          + (f", logins at {login_rate:g}/s" if login_rate else "") + " ...", flush=True)
    login_proc = result_q = None
    loop_start = time.monotonic() + 0.5
    if login_rate:
        ctx = common.mp_context()
        result_q = ctx.Queue()
        start_value = ctx.Value("d", 0.0)
        login_proc = common.worker_process(login_worker, daemon.http_port, usernames, login_rate,
                                           args.duration, args.drain, start_value, result_q)
        await asyncio.sleep(0.5)  # the child is up before it is told to start
        loop_start = time.monotonic() + 0.5
        start_value.value = loop_start
    measure_from = loop_start + WARMUP
    end = measure_from + args.duration
    await asyncio.sleep(max(0.0, loop_start - time.monotonic()))
    load = asyncio.ensure_future(cheap_load(daemon.http_port, tokens, routes, args.concurrency, measure_from, end))
    await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
    cpu = common.CpuMeter(daemon.pid)
    cpu.start()
    reactor0 = common.task_cpu_seconds(daemon.pid, daemon.pid)
    lag = common.LoopLag()
    lag.start()
    profile = common.Profile(daemon.pid, args.duration - 1, profile_path) if profile_path else None
    records, errors, samples = await load
    cpu.stop()
    reactor_pct = 100 * (common.task_cpu_seconds(daemon.pid, daemon.pid) - reactor0) / cpu.wall
    await lag.stop()
    logins = None
    if login_proc is not None:
        try:
            logins = await asyncio.get_running_loop().run_in_executor(
                None, lambda: result_q.get(timeout=args.drain + 120))
        except queue.Empty:
            logins = {"error": "no result from the login process"}
        login_proc.join(10)
        if login_proc.is_alive():
            login_proc.kill()
    profile_text = None
    if profile is not None:
        profile.finish()
        profile_text = profile.summary()
    settle = await wait_server_idle(daemon, args.drain) if login_rate else 0.0
    lat = [x for r in routes for x in records[r]]
    client_s = cpu.client_pct / 100 * cpu.wall + (logins or {}).get("cpu_s", 0.0) * cpu.wall / (args.duration + args.drain)
    return {"name": name, "routes": routes, "records": records, "lat": lat, "errors": errors, "samples": samples,
            "cpu": cpu, "reactor_pct": reactor_pct, "lag": lag.lags_ms, "logins": logins, "login_rate": login_rate,
            "settle": settle, "noise": cpu.noise(client_s), "profile": profile_text}


def ms(x: float) -> str:
    return fmt(x * 1000, 1)


async def main(args) -> int:
    common.raise_nofile_limit()
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    ws = common.Workspace("rest", keep=args.keep)
    daemon = None
    phases = []
    try:
        data_dir = ws.sub("data")
        t = time.perf_counter()
        names = [f"rest{i:05d}" for i in range(args.users)]
        secret, ids = common.prepare_accounts(data_dir, names)
        tokens_by_name = common.mint_tokens(secret, ids)
        tokens = [tokens_by_name[n] for n in names]
        print(f"prepared {len(ids)} accounts (one shared argon2id hash, the daemon's parameters) "
              f"in {time.perf_counter() - t:.1f} s")
        daemon = common.Daemon(data_dir, args=DAEMON_ARGS)
        daemon.start()
        print(f"daemon pid {daemon.pid}, HTTP on 127.0.0.1:{daemon.http_port}, started with {' '.join(DAEMON_ARGS)}")

        # Meetings through the API (hosts are the first users).
        conns = await asyncio.gather(*(common.http_connect(daemon.http_port) for _ in range(10)))

        async def create(c, i):
            status, env = await common.api(c, "POST", "/api/v1/meetings", tokens[i % len(tokens)],
                                           {"title": f"bench meeting {i}", "max_participants": 50})
            if status != 201:
                raise RuntimeError(f"creating a meeting: {status} {env}")

        for i in range(0, args.meetings, 10):
            await asyncio.gather(*(create(conns[j], i + j) for j in range(min(10, args.meetings - i))))
        for c in conns:
            c.close()
        print(f"created {args.meetings} meetings through POST /api/v1/meetings")
        await asyncio.sleep(0.5 if args.quick else 2.0)
        rss0 = daemon.rss_kib()

        usernames = names[-max(1, len(names) // 2):]  # logins use other users than the first tokens
        plan = [] if args.quick else [("A meetings", ["meetings"], 0), ("A profile", ["profile"], 0)]
        plan += [("A mixed", ["meetings", "profile"], 0),
                ("B mixed+logins", ["meetings", "profile"], args.login_rate)]
        if args.low_login_rate:
            plan.append(("C mixed+logins", ["meetings", "profile"], args.low_login_rate))
        plan.append(("A' mixed again", ["meetings", "profile"], 0))
        for name, routes, rate in plan:
            profiled = name == "A mixed" or rate == args.login_rate
            prof = os.path.join(ws.path, f"profile-{len(phases)}.txt") if args.profile and profiled else None
            phases.append(await run_phase(args, daemon, tokens, usernames, name, routes, rate, prof))
            await asyncio.sleep(0.2 if args.quick else 1.0)
        rss1 = daemon.rss_kib()
    finally:
        status = daemon.stop() if daemon is not None else None
        log = daemon.log_text() if daemon is not None else ""
        ws.close()

    print()
    rows = [("phase", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "server CPU", "reactor thr",
             "client CPU", "noise")]
    for p in phases:
        n = len(p["lat"])
        rows.append((p["name"], f"{n:,}", f"{n / p['cpu'].wall:,.0f}", ms(percentile(p["lat"], 50)),
                     ms(percentile(p["lat"], 99)), ms(max(p["lat"], default=float("nan"))),
                     f"{sum(p['errors'].values())}", f"{p['cpu'].server_pct:.0f} %", f"{p['reactor_pct']:.0f} %",
                     f"{p['cpu'].client_pct:.0f} %", p["noise"]))
    print(table(rows, title=f"Cheap routes: {args.concurrency} keep-alive clients (closed loop), "
                            f"{args.duration:g} s per phase, {args.users} users, {args.meetings} meetings"))
    print()
    rows = [("phase / route", "requests", "req/s", "p50 ms", "p99 ms", "max ms")]
    for p in phases:
        if len(p["routes"]) < 2:
            continue
        for r in p["routes"]:
            v = p["records"][r]
            rows.append((f"{p['name']} / {r}", f"{len(v):,}", f"{len(v) / p['cpu'].wall:,.0f}",
                         ms(percentile(v, 50)), ms(percentile(v, 99)), ms(max(v, default=float("nan")))))
    print(table(rows, title="Per route in the mixed phases"))
    login_phases = [p for p in phases if p["login_rate"]]
    if login_phases:
        print()
        rows = [("phase", "offered", "sent", "ok", "failed", "unfinished", "completed/s in window", "p50 ms",
                 "p99 ms", "max ms", "done after window", "settle")]
        for p in login_phases:
            lg = p["logins"] or {}
            if "error" in lg:
                rows.append((p["name"], f"{p['login_rate']:g}/s", lg["error"], "", "", "", "", "", "", "", "", ""))
                continue
            st = lg["statuses"]
            failed = sum(v for k, v in st.items() if k not in ("ok", "unfinished"))
            rows.append((p["name"], f"{p['login_rate']:g}/s", f"{lg['sent']}", f"{st.get('ok', 0)}", f"{failed}",
                         f"{st.get('unfinished', 0)}", f"{lg['done_in_window'] / args.duration:.1f}/s",
                         ms(percentile(lg["lat"], 50)), ms(percentile(lg["lat"], 99)),
                         ms(max(lg["lat"], default=float("nan"))), f"{lg['last_done']:+.1f} s",
                         f"{p['settle']:.1f} s"))
        print(table(rows, title="Logins (POST /api/v1/auth/login, real argon2id verification; latency includes "
                                "queueing in the daemon's hash pool)"))
    a = next(p for p in phases if p["name"] == "A mixed")
    b = next((p for p in phases if p["name"].startswith("B")), None)
    a_p99 = percentile(a["lat"], 99)
    print()
    rows = [("figure", "value", "target", "verdict")]
    if b is not None:
        b_p99 = percentile(b["lat"], 99)
        ratio = b_p99 / a_p99 if a_p99 else float("nan")
        rows.append(("cheap routes p99 with logins (B) vs quiet (A)",
                     f"{ms(b_p99)} ms vs {ms(a_p99)} ms = {ratio:.2f}x", "<= 2x", verdict(ratio <= 2.0)))
        for p in login_phases:
            if p is b:
                continue
            r = percentile(p["lat"], 99) / a_p99 if a_p99 else float("nan")
            rows.append((f"  same at {p['login_rate']:g} logins/s ({p['name'][0]})",
                         f"{ms(percentile(p['lat'], 99))} ms = {r:.2f}x", "(reported)", ""))
        lg = b["logins"] or {}
        st = lg.get("statuses", {})
        ok = st.get("ok", 0)
        rows.append((f"logins succeeded in B ({args.login_rate:g}/s offered)", f"{ok} / {lg.get('sent', 0)}",
                     "all", verdict("error" not in lg and ok == lg.get("sent", -1))))
    again = next(p for p in phases if p["name"].startswith("A'"))
    rows.append(("quiet p99 again after the login phases (A')", f"{ms(percentile(again['lat'], 99))} ms", "(noise check)",
                 ""))
    errs = sum(sum(p["errors"].values()) for p in phases)
    rows.append(("errors on the cheap routes (non-2xx, timeouts)", f"{errs}", "0", verdict(errs == 0)))
    rows.append(("server RSS after setup / at end", f"{rss0 / 1024:.1f} / {rss1 / 1024:.1f} MiB", "", ""))
    rows.append(("errors: tracebacks in server log", f"{log.count('Traceback')}", "0", verdict("Traceback" not in log)))
    rows.append(("daemon exit status after SIGTERM", f"{status}", "0", verdict(status == 0)))
    print(table(rows, title="Targets (issue 3)"))
    for p in phases:
        if p["samples"]:
            print(f"{p['name']}: first errors: {p['samples']}")
        if p["logins"] and p["logins"].get("samples"):
            print(f"{p['name']}: first login failures: {p['logins']['samples']}")
        if p["profile"]:
            print()
            print(f"py-spy profile of the daemon during {p['name']}:")
            print(p["profile"])
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--meetings", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=50, help="keep-alive clients of the cheap routes")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase")
    p.add_argument("--login-rate", type=float, default=20.0, help="logins/s in phase B")
    p.add_argument("--low-login-rate", type=float, default=4.0, help="logins/s in phase C (0: no phase C)")
    p.add_argument("--drain", type=float, default=90.0,
                   help="at most this many seconds to wait for queued logins (and the daemon's CPU) after a phase")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 200 users, 2 s phases, no single-route phases")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir and log")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the daemon during phases A mixed and B (needs py-spy)")
    p.add_argument("--max-wait", type=float, default=180.0,
                   help="seconds to wait for the (shared) machine to be quiet before measuring")
    args = p.parse_args(argv)
    if args.quick:
        args.max_wait = 0.0
        args.users, args.meetings, args.duration, args.drain = 200, 20, 2.0, 9.0
    return args


if __name__ == "__main__":
    a = parse()
    sys.exit(common.run(main(a), hard_timeout=8 * (a.duration + a.drain) + 600))
