"""
Media upload and download throughput of the real daemon, against a bare
Twisted static file server on the same machine in the same run.

One client connection at a time moves one file of ``--size`` MiB:

* **upload**: ``POST /api/v1/media/upload`` (multipart, streamed to a
  spool file in the disk pool, hashed, sniffed, probed, moved into the
  storage and recorded) against ``POST /upload`` of ``bench/file_baseline.py``
  (the raw body written to a file on the reactor thread);
* **download**: ``GET /api/v1/media/download/:id`` (read from the storage a
  block at a time in the disk pool, through a push producer) against
  ``twisted.web.static.File``.

The client is the same for both: ``http.client`` over a socket, sending
1 MiB blocks made once and reading 1 MiB at a time (nothing is kept). The
daemon's RSS is sampled every 20 ms during each transfer; steal time (CPU
the hypervisor gave others while this VM wanted it) is reported, as it
bends every figure on a shared machine. Target: the daemon at >= 50 % of
the baseline's throughput both ways.

    python bench/media_transfer.py [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MiB = 1 << 20
BOUNDARY = "benchboundary0123456789"
PASSWORD = "Xq7-Lumen-Otter"


def blocks(size: int):
    """``size`` bytes in 1 MiB blocks, each different (a counter in its first bytes), from one random base."""
    base = bytearray(os.urandom(MiB))
    for index in range(0, (size + MiB - 1) // MiB):
        base[:8] = index.to_bytes(8, "big")
        yield bytes(base[:min(MiB, size - index * MiB)])


class RssWatch:
    """The largest RSS of ``pid`` seen while running (a thread, every ``interval`` seconds)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = common.rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, common.rss_kib(self.pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def call_json(port: int, method: str, path: str, body=None, token=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


def upload(port: int, path: str, size: int, token: str | None, multipart: bool) -> tuple[float, dict]:
    """-> (seconds, the JSON answer)."""
    head = tail = b""
    headers = {}
    if multipart:
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.bin\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    headers["Content-Length"] = str(len(head) + size + len(tail))
    chunks = list(blocks(size))  # made before the clock starts
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    conn.putrequest("POST", path)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(head)
    for chunk in chunks:
        conn.send(chunk)
    conn.send(tail)
    response = conn.getresponse()
    answer = json.loads(response.read())
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 201:
        raise RuntimeError(f"upload to {path} answered {response.status}: {answer}")
    return elapsed, answer


def download(port: int, path: str, size: int, token: str | None) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    response = conn.getresponse()
    received = 0
    buffer = bytearray(MiB)
    while True:
        n = response.readinto(buffer)
        if not n:
            break
        received += n
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200 or received != size:
        raise RuntimeError(f"download of {path} answered {response.status} with {received} of {size} bytes")
    return elapsed


def main(args) -> int:
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    size = args.size * MiB
    ws = common.Workspace("media-transfer", keep=args.keep)
    daemon = base = None
    try:
        files = ws.sub("baseline-files")
        base = common.Baseline("file_baseline.py", files)
        daemon = common.Daemon(ws.sub("data"), args=("--max-upload", f"{args.size + 1}M",
                                                     "--media-quota", f"{args.size * (args.rounds + 2)}M"))
        daemon.start()
        code, reply = call_json(daemon.http_port, "POST", "/api/v1/auth/register",
                                {"username": "bencher", "email": "bencher@example.com", "password": PASSWORD})
        assert code == 200, reply
        token = call_json(daemon.http_port, "POST", "/api/v1/auth/login",
                          {"username": "bencher", "password": PASSWORD})[1]["data"]["token"]
        print(f"baseline pid {base.pid} on :{base.port}; daemon pid {daemon.pid}, HTTP on :{daemon.http_port}; "
              f"{args.size} MiB per transfer, {args.rounds} rounds")
        # Warm-up: code paths loaded, page cache primed, for both.
        upload(base.port, "/upload", 4 * MiB, None, multipart=False)
        warm = upload(daemon.http_port, "/api/v1/media/upload", 4 * MiB, token, multipart=True)[1]["data"]
        call_json(daemon.http_port, "DELETE", f"/api/v1/media/{warm['id']}", token=token)
        rest_kib = daemon.rss_kib()
        steal_before = common.steal_seconds()
        results = {"upload": ([], []), "download": ([], [])}  # (daemon MiB/s, baseline MiB/s)
        peak_kib = rest_kib
        for round_ in range(args.rounds):
            # Alternate who goes first, so neither always meets a warmer or colder machine.
            order = ("daemon", "baseline") if round_ % 2 == 0 else ("baseline", "daemon")
            item = None
            for who in order:
                if who == "daemon":
                    with RssWatch(daemon.pid) as watch:
                        seconds, answer = upload(daemon.http_port, "/api/v1/media/upload", size, token, True)
                    item = answer["data"]
                    peak_kib = max(peak_kib, watch.peak_kib)
                    results["upload"][0].append(args.size / seconds)
                else:
                    seconds, _ = upload(base.port, "/upload", size, None, False)
                    results["upload"][1].append(args.size / seconds)
            baseline_name = sorted(os.listdir(files))[-1]
            for who in order:
                if who == "daemon":
                    with RssWatch(daemon.pid) as watch:
                        seconds = download(daemon.http_port, item["download_url"], size, token)
                    peak_kib = max(peak_kib, watch.peak_kib)
                    results["download"][0].append(args.size / seconds)
                else:
                    seconds = download(base.port, f"/files/{baseline_name}", size, None)
                    results["download"][1].append(args.size / seconds)
            call_json(daemon.http_port, "DELETE", f"/api/v1/media/{item['id']}", token=token)
            os.unlink(os.path.join(files, baseline_name))
            print(f"round {round_ + 1}: upload {results['upload'][0][-1]:.0f} vs {results['upload'][1][-1]:.0f} "
                  f"MiB/s, download {results['download'][0][-1]:.0f} vs {results['download'][1][-1]:.0f} MiB/s "
                  "(daemon vs baseline)")
        steal = common.steal_seconds() - steal_before
        print()
        print(f"{'direction':<10} {'daemon MiB/s':>13} {'baseline MiB/s':>15} {'ratio':>7}   (medians of "
              f"{args.rounds})")
        worst = 1.0
        for direction, (ours, theirs) in results.items():
            ratio = statistics.median(ours) / statistics.median(theirs)
            worst = min(worst, ratio)
            print(f"{direction:<10} {statistics.median(ours):>13.0f} {statistics.median(theirs):>15.0f} "
                  f"{ratio:>6.0%}")
        print(f"daemon RSS: {rest_kib >> 10} MiB at rest, {peak_kib >> 10} MiB at most during the transfers "
              f"(+{(peak_kib - rest_kib) >> 10} MiB); baseline RSS {base.rss_kib() >> 10} MiB after")
        print(f"steal time during the run: {steal:.2f} s")
        print(f"target >= 50 % both ways: {'met' if worst >= 0.5 else 'NOT met'}")
        return 0
    finally:
        if daemon is not None:
            daemon.stop()
        if base is not None:
            base.stop()
        ws.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="MiB per transfer (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="transfers each way per server (default 3)")
    parser.add_argument("--max-wait", type=float, default=120.0,
                        help="seconds to wait for the machine to be quiet first (default 120)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 16 MiB, one round, no wait")
    options = parser.parse_args()
    if options.quick:
        options.size, options.rounds, options.max_wait = 16, 1, 0.0
    sys.exit(main(options))
