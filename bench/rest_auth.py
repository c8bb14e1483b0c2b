"""
REST benchmark: cheap authenticated reads against a bare Klein route, in one run.

Two servers run side by side on loopback:

1. ``bench/rest_baseline.py``: a bare Klein app with one route answering a
   small JSON envelope (no auth, storage, metrics or access log) -- what the
   machine and Twisted allow at this moment;
2. the real daemon (``twistd wecompany``) with ``--users`` accounts made
   before it starts (one shared argon2id hash) and ``--meetings`` meetings
   created through ``POST /api/v1/meetings``.

``wrk`` (``--connections`` 50 keep-alive connections, ``--threads`` 2,
``--duration`` 10 s each, after an unmeasured ``--warmup`` of 2 s) runs
against, in this order: the baseline, ``GET /health``,
``GET /api/v1/users/profile``, ``GET /api/v1/meetings?page=1&page_size=10``;
``--rounds`` (3) times, then the baseline once more. Every request
carries ``Authorization: Bearer <token>``, each request on a connection
another user's (a Lua script cycles through every user's token), so the
daemon authenticates many different users, as it would in production; the
baseline and ``/health`` ignore the header.

Printed per target: req/s, latency p50/p99/max (wrk's), errors (non-2xx and
socket errors), the server's CPU (whole process and its reactor thread),
wrk's CPU, the CPU the hypervisor stole and what other processes used, the
ratio to the baseline (the mean of the baseline runs just before and after)
and requests per server CPU-second against the baseline's (the figure that
does not move with the machine's load). Target (the REST performance
issue): **authenticated reads at least 50 % of the bare route**, judged on
the median ratio over the rounds.

    python bench/rest_auth.py              # 3 rounds of 4 targets x (2 + 10) s  (~3.5 min)
    python bench/rest_auth.py --rounds 1   # one round                           (~1.2 min)
    python bench/rest_auth.py --quick      # smoke test: 200 users, 2 s runs     (< 30 s)
    python bench/rest_auth.py --profile profile   # py-spy the daemon during one target

Needs ``wrk`` (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import fmt, table, verdict  # noqa: E402

DAEMON_ARGS = ("--auth-rate", "100000", "--auth-burst", "100000", "--login-failures-per-address", "100000")
BASELINE_PATH = "/api/v1/ping"
ROUTES = {
    "health": "/health",
    "profile": "/api/v1/users/profile",
    "meetings": "/api/v1/meetings?page=1&page_size=10",
}
AUTHENTICATED = ("profile", "meetings")
TARGET_RATIO = 0.50

# Requests are formatted once per thread (wrk's CPU per request stays low: it
# shares the cores with the servers); each thread starts at another token.
WRK_SCRIPT = r"""
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path, token_file = args[1], args[2]
  requests = {}
  for token in io.lines(token_file) do
    requests[#requests + 1] = wrk.format("GET", path, {["Authorization"] = "Bearer " .. token})
  end
  n = #requests
  i = (id * 7919) % n
end

function request()
  i = i % n + 1
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d status=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def children_cpu_seconds() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run_wrk(args, port: int, path: str, script: str, token_file: str, duration: float) -> dict:
    """One wrk run -> its figures (latencies in seconds)."""
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{max(1, round(duration))}s",
           "--timeout", "10s", "-s", script, f"http://127.0.0.1:{port}{path}", "--", path, token_file]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"^WRKRESULT (.*)$", out.stdout, re.M)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    f = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    return {"requests": f["requests"], "rate": f["requests"] / (f["duration_us"] / 1e6),
            "p50": f["p50_us"] / 1e6, "p99": f["p99_us"] / 1e6, "max": f["max_us"] / 1e6,
            "status_errors": f["status"], "socket_errors": f["connect"] + f["read"] + f["write"] + f["timeout"]}


def measure(args, name: str, pid: int, port: int, path: str, script: str, token_file: str,
            profile_path: str | None = None) -> dict:
    print(f"{name}: {path} ...", flush=True)
    if args.warmup > 0:
        run_wrk(args, port, path, script, token_file, args.warmup)
    cpu = common.CpuMeter(pid)
    reactor0 = common.task_cpu_seconds(pid, pid)
    wrk0 = children_cpu_seconds()
    cpu.start()
    profile = common.Profile(pid, args.duration - 1, profile_path) if profile_path else None
    result = run_wrk(args, port, path, script, token_file, args.duration)
    cpu.stop()
    wrk_s = children_cpu_seconds() - wrk0
    result.update(name=name, path=path, cpu=cpu, wrk_pct=100 * wrk_s / cpu.wall,
                  reactor_pct=100 * (common.task_cpu_seconds(pid, pid) - reactor0) / cpu.wall,
                  noise=cpu.noise(wrk_s + (cpu.client_pct / 100) * cpu.wall))
    if profile is not None:
        profile.finish()
        result["profile"] = profile.summary()
    return result


async def create_meetings(port: int, tokens: list[str], count: int) -> None:
    conns = await asyncio.gather(*(common.http_connect(port) for _ in range(10)))

    async def create(c, i):
        status, env = await common.api(c, "POST", "/api/v1/meetings", tokens[i % len(tokens)],
                                       {"title": f"bench meeting {i}", "max_participants": 50})
        if status != 201:
            raise RuntimeError(f"creating a meeting: {status} {env}")

    for i in range(0, count, 10):
        await asyncio.gather(*(create(conns[j], i + j) for j in range(min(10, count - i))))
    for c in conns:
        c.close()


def ms(x: float) -> str:
    return fmt(x * 1000, 2)


def main(args) -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)")
        return 2
    common.raise_nofile_limit()
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    ws = common.Workspace("rest-auth", keep=args.keep)
    daemon = base = None
    results = []
    try:
        data_dir = ws.sub("data")
        t = time.perf_counter()
        names = [f"auth{i:05d}" for i in range(args.users)]
        secret, ids = common.prepare_accounts(data_dir, names)
        tokens_by_name = common.mint_tokens(secret, ids)
        tokens = [tokens_by_name[n] for n in names]
        print(f"prepared {len(ids)} accounts in {time.perf_counter() - t:.1f} s")
        token_file = os.path.join(ws.path, "tokens.txt")
        with open(token_file, "w") as f:
            f.write("\n".join(tokens) + "\n")
        script = os.path.join(ws.path, "bearer.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)

        base = common.Baseline("rest_baseline.py")
        daemon = common.Daemon(data_dir, args=DAEMON_ARGS)
        daemon.start()
        print(f"baseline pid {base.pid} on :{base.port}; daemon pid {daemon.pid}, HTTP on :{daemon.http_port}")
        common.arun(create_meetings(daemon.http_port, tokens, args.meetings))
        print(f"created {args.meetings} meetings through POST /api/v1/meetings")
        time.sleep(0.5 if args.quick else 2.0)

        def profile_path(name):
            return os.path.join(ws.path, f"profile-{name}.txt") if args.profile == name else None

        for round_ in range(args.rounds):
            tag = f" #{round_ + 1}" if args.rounds > 1 else ""
            results.append(measure(args, "baseline" + tag, base.pid, base.port, BASELINE_PATH, script, token_file))
            for name, path in ROUTES.items():
                results.append(measure(args, name + tag, daemon.pid, daemon.http_port, path, script, token_file,
                                       profile_path(name) if round_ == 0 else None))
                results[-1]["route"] = name
        results.append(measure(args, "baseline again", base.pid, base.port, BASELINE_PATH, script, token_file))
        rss = daemon.rss_kib()
    finally:
        if base is not None:
            base.stop()
        status = daemon.stop() if daemon is not None else None
        log = daemon.log_text() if daemon is not None else ""
        ws.close()

    # Each route is compared with the mean of the two baseline runs around it
    # (the same round's and the next's), and judged on the median over rounds.
    bases = [r for r in results if r["name"].startswith("baseline")]
    base_at = 0
    for r in results:
        if r["name"].startswith("baseline"):
            base_at += 1
            r["bare"] = r["rate"]
        else:
            r["bare"] = (bases[base_at - 1]["rate"] + bases[base_at]["rate"]) / 2
        # Requests per CPU-second of the server, against the bare route's: what
        # the daemon costs, whatever else the machine was doing meanwhile.
        r["per_cpu"] = r["requests"] / max(1e-9, r["cpu"].server_s)
    bare_per_cpu = sorted(b["per_cpu"] for b in bases)[len(bases) // 2]
    print()
    rows = [("target", "req/s", "vs bare", "p50 ms", "p99 ms", "max ms", "errors", "server CPU", "reactor thr",
             "req/CPU-s vs bare", "wrk CPU", "noise")]
    for r in results:
        rows.append((r["name"], f"{r['rate']:,.0f}", f"{100 * r['rate'] / r['bare']:.0f} %", ms(r["p50"]),
                     ms(r["p99"]), ms(r["max"]), f"{r['status_errors'] + r['socket_errors']}",
                     f"{r['cpu'].server_pct:.0f} %", f"{r['reactor_pct']:.0f} %",
                     f"{r['per_cpu']:,.0f} = {100 * r['per_cpu'] / bare_per_cpu:.0f} %", f"{r['wrk_pct']:.0f} %",
                     r["noise"]))
    print(table(rows, title=f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, Bearer tokens of "
                            f"{args.users} users, {args.meetings} meetings, {args.rounds} round(s); bare = the mean "
                            f"of the baseline runs before and after each route's round"))
    print()
    rows = [("figure", "value", "target", "verdict")]
    for name in AUTHENTICATED:
        runs = [r for r in results if r.get("route") == name]
        ratios = sorted(r["rate"] / r["bare"] for r in runs)
        ratio = ratios[(len(ratios) - 1) // 2]  # the lower middle: an even count is not rounded up
        shown = ", ".join(f"{r['rate']:,.0f} / {r['bare']:,.0f}" for r in runs)
        rows.append((f"GET {ROUTES[name]} vs bare Klein route", f"{shown} = {100 * ratio:.0f} %"
                     + (" (median)" if len(runs) > 1 else ""), f">= {100 * TARGET_RATIO:.0f} %",
                     verdict(ratio >= TARGET_RATIO)))
    rates = [b["rate"] for b in bases]
    spread = (max(rates) - min(rates)) / (sum(rates) / len(rates))
    rows.append(("baseline runs (noise check)", " / ".join(f"{b['rate']:,.0f}" for b in bases)
                 + f" ({100 * spread:.0f} % apart)", "(reported)", ""))
    errs = sum(r["status_errors"] + r["socket_errors"] for r in results)
    rows.append(("errors (non-2xx, socket errors)", f"{errs}", "0", verdict(errs == 0)))
    rows.append(("daemon RSS at the end", f"{rss / 1024:.1f} MiB", "", ""))
    rows.append(("tracebacks in the daemon's log", f"{log.count('Traceback')}", "0", verdict("Traceback" not in log)))
    rows.append(("daemon exit status after SIGTERM", f"{status}", "0", verdict(status == 0)))
    print(table(rows, title="Target (REST performance issue): cheap authenticated reads >= 50 % of a bare Klein route"))
    for r in results:
        if "profile" in r:
            print()
            print(f"py-spy profile of the daemon during {r['name']}:")
            print(r["profile"])
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1000, help="accounts, each with its own token")
    p.add_argument("--meetings", type=int, default=100)
    p.add_argument("--connections", type=int, default=50, help="wrk's keep-alive connections")
    p.add_argument("--threads", type=int, default=2, help="wrk's threads")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per target")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds of wrk before each target")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of baseline + routes (judged on the median ratio; more rounds, less noise)")
    p.add_argument("--quick", action="store_true", help="smoke test: 200 users, 20 meetings, 2 s runs")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir and log")
    p.add_argument("--profile", choices=sorted(ROUTES), help="py-spy the daemon during this target (needs py-spy)")
    p.add_argument("--max-wait", type=float, default=180.0,
                   help="seconds to wait for the (shared) machine to be quiet before measuring")
    args = p.parse_args(argv)
    if args.quick:
        args.max_wait = 0.0
        args.users, args.meetings, args.duration, args.warmup = 200, 20, 2.0, 1.0
    return args


if __name__ == "__main__":
    sys.exit(main(parse()))
