"""
Signaling benchmark: many WebSocket clients chatting in rooms, then a join storm.

Setup, through the REST API of the running daemon (the real path; nothing
is inserted behind its back): ``--rooms`` (200) meetings of ``--room-size``
(10) users each are created with ``POST /api/v1/meetings`` (the first user of
a room is its host, ``max_participants`` = the room size) and every user,
host included, joins with ``POST /api/v1/meetings/:id/join`` -- the
signaling handshake is refused to users who have not. The accounts are made
before the daemon starts (one shared argon2id hash) and the clients use
access tokens minted with the daemon's secret. The daemon runs with its
defaults (signaling rate limit 50 msg/s, burst 100, per-connection send
buffer cap, ping every 30 s).

Chat load: every user opens ``/ws/signaling?meeting_id=&user_id=&peer_id=&token=``,
sends ``{"type":"join"}`` and waits for its ``room-info`` (connections are
opened at most ``--concurrency`` at a time). Then, for ``--duration`` (30) s,
every client sends one ``chat`` per second (staggered evenly over the second
across all clients) whose content carries its send time (``perf_counter_ns``,
CLOCK_MONOTONIC, comparable across processes), sender and sequence number.
The daemon stores each message in SQLite (``synchronous=FULL``) and then sends
it to the whole room, the sender included: 2,000 stored messages/s and
20,000 deliveries/s by default. The clients run in ``--procs`` (2) forked
processes, whole rooms per process. Fan-out latency is send -> each
recipient's receipt; the first second is not counted.

``--interval`` (1 s) sets the time between one client's messages, to find
the rate the daemon can sustain (e.g. ``--interval 10``: 200 messages/s).

After the chat the clients close (RFC 6455 closing handshake, all at once)
and the script checks that the daemon forgot them: no live room, no live
signaling session or online user (``/metrics``), no participant record left
``joined`` (read from the database after the stop). It then waits (at most
``--settle-max``, 300 s) for the daemon's CPU to settle: a daemon that fell
behind is still working through its backlog, and the time is reported.

Join storm: ``--storm`` (500) further users, in fresh meetings of the same
size (joined through REST during the setup), open their connections and
join, their starts spread evenly over ``--storm-window`` (5) s (0: all at
once), after the chat clients have gone and the daemon has settled.
Reported: time from the first connect to the last ``room-info``, per-client
connect -> ``room-info`` latency, failures (target: none) and whether every
client's latest ``room-info`` lists the full room.

The WebSocket client is this script's own (RFC 6455 handshake, masked client
frames, ping -> pong, close; fragmentation is handled), to keep the
clients' CPU per message low: they share the machine's 2 cores with the
daemon (a general client library was not measured against it).

Reported: delivered messages/s against the expected count, fan-out latency
p50/p99/p99.9/max (target p99 < 50 ms), stored messages (counted in the
database after the daemon stopped), server RSS per connection, server CPU
(process and reactor thread), client CPU and send lateness, errors
(handshake refusals, ``error`` messages, disconnections, undelivered
messages, tracebacks in the log), and the fan-out latency per second of the
run (is the tail spread out or bunched in a few seconds?). ``--gc-log``
instruments the daemon at start (``gc.callbacks``, not a product change) and
prints its garbage-collector pauses during the chat; ``--profile`` records it
with py-spy.

    python bench/signaling.py            # full: 2,000 clients, 30 s; storm of 500   (~2.5 min)
    python bench/signaling.py --quick    # smoke test: 200 clients, 5 s; storm of 100
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import hashlib
import json
import os
import queue
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import fmt, percentile, table, verdict  # noqa: E402

try:
    from websockets.speedups import apply_mask  # C, optional
except ImportError:  # pragma: no cover
    def apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")

TARGET_P99_MS = 50.0
WARMUP = 1.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHAT_PREFIX = b'{"type":"chat"'
CONTENT_KEY = b'"content":"b '
CHAT_FMT = b'{"type":"chat","payload":{"content":"b %d %d %d hello from the signaling benchmark"}}'
JOIN = b'{"type":"join"}'


class Refused(Exception):
    """The WebSocket handshake was answered with another status than 101."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status


class Stats:
    """What one client process records about chat deliveries (shared by its clients)."""

    def __init__(self) -> None:
        self.lat_ns = array.array("q")
        self.sent_ns = array.array("q")  # the send time of each latency sample
        self.measure_from_ns = 1 << 62  # set when the run starts
        self.until_ns = 1 << 62
        self.deliveries = 0
        self.per_second: dict[int, int] = {}
        self.t0_ns = 0


class WsClient(asyncio.Protocol):
    """One signaling connection: a lean RFC 6455 client (text frames, masked, ping -> pong)."""

    def __init__(self, host: str, path: str, index: int, stats: Stats) -> None:
        loop = asyncio.get_running_loop()
        self.host = host
        self.path = path
        self.index = index
        self.stats = stats
        self.transport = None
        self._buf = bytearray()
        self._frag = None
        self.key = base64.b64encode(os.urandom(16))
        self.upgraded = False
        self.opened = loop.create_future()
        self.room_info = loop.create_future()  # monotonic time of the first room-info
        self.closed = loop.create_future()
        self.close_code = None
        self._close_sent = False
        self.participants = 0  # participant_count of the latest room-info
        self.room_infos = 0
        self.errors: list = []
        self.unexpected: list = []
        self.other = 0  # user-joined, user-left, pong
        self.seq = 0
        self.chats = 0
        self.echoes = 0
        self.pings = 0

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                        % (self.path.encode(), self.host.encode(), self.key))

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        for fut in (self.opened, self.room_info):
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            if status != 101:
                self.opened.set_exception(Refused(status, bytes(buf[end + 4:end + 204]).decode(errors="replace")))
                self.transport.close()
                return
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
            if headers.get("sec-websocket-accept") != accept:
                self.opened.set_exception(RuntimeError("bad Sec-WebSocket-Accept"))
                self.transport.close()
                return
            del buf[:end + 4]
            self.upgraded = True
            self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self._buf
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            mask = None
            if b1 & 0x80:  # servers must not mask; tolerated
                if n - pos < head + 4:
                    break
                mask = bytes(buf[pos + head:pos + head + 4])
                head += 4
            if n - pos < head + length:
                break
            payload = bytes(buf[pos + head:pos + head + length])
            if mask is not None:
                payload = apply_mask(payload, mask)
            pos += head + length
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode == 0:  # continuation
                if self._frag is not None:
                    self._frag += payload
                    if fin:
                        data, self._frag = bytes(self._frag), None
                        self._message(data)
            elif opcode in (1, 2):
                if fin:
                    self._message(payload)
                else:
                    self._frag = bytearray(payload)
            elif opcode == 9:
                self.pings += 1
                self.send_frame(0xA, payload)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self._close_sent:
                    self.send_frame(0x8, payload[:2])
                    self._close_sent = True
                self.transport.close()
                break
        if pos:
            del buf[:pos]

    def _message(self, data: bytes) -> None:
        if data.startswith(CHAT_PREFIX):
            i = data.find(CONTENT_KEY)
            if i >= 0:
                now = time.perf_counter_ns()
                parts = data[i + 11:data.find(b'"', i + 11)].split(b" ", 4)
                sent_ns = int(parts[1])
                st = self.stats
                st.deliveries += 1
                sec = (now - st.t0_ns) // 1_000_000_000
                st.per_second[sec] = st.per_second.get(sec, 0) + 1
                if st.measure_from_ns <= sent_ns < st.until_ns:
                    st.lat_ns.append(now - sent_ns)
                    st.sent_ns.append(sent_ns - st.t0_ns)
                self.chats += 1
                if int(parts[2]) == self.index:
                    self.echoes += 1
                return
        try:
            msg = json.loads(data)
            kind = msg["type"]
        except (ValueError, KeyError, TypeError):
            self.unexpected.append(data[:120])
            return
        if kind == "room-info":
            self.room_infos += 1
            self.participants = msg["payload"]["participant_count"]
            if not self.room_info.done():
                self.room_info.set_result(time.monotonic())
        elif kind == "error":
            self.errors.append(msg.get("payload"))
        elif kind in ("user-joined", "user-left", "pong"):
            self.other += 1
        else:
            self.unexpected.append(data[:120])

    # sending
    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        self.transport.write(header + mask + apply_mask(payload, mask))

    def send_chat(self) -> None:
        self.seq += 1
        self.send_frame(1, CHAT_FMT % (time.perf_counter_ns(), self.index, self.seq))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.upgraded and not self._close_sent:
                self._close_sent = True
                self.send_frame(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()

    async def aclose(self, timeout: float = 3.0) -> None:
        """The closing handshake as RFC 6455 has it: send close, let the server answer and drop TCP (bounded)."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.upgraded and not self._close_sent:
            self._close_sent = True
            self.send_frame(0x8, (1000).to_bytes(2, "big"))
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            except asyncio.TimeoutError:
                pass
        self.transport.close()


async def open_client(port: int, spec: dict, stats: Stats, timeout: float = 60.0, factory=None) -> WsClient:
    """
    Connect, upgrade, send join and wait for room-info; the client or an
    exception. A spec with a ``port`` goes there (a cluster's nodes), others to ``port``.
    """
    c = await open_socket(port, spec, stats, timeout, factory)
    try:
        c.send_frame(1, JOIN)
        await asyncio.wait_for(c.room_info, timeout)
    except BaseException:
        c.close()
        raise
    return c


async def open_socket(port: int, spec: dict, stats: Stats, timeout: float = 60.0, factory=None) -> WsClient:
    """Connect and upgrade (no join yet): the client (``factory``, a :class:`WsClient` subclass) or an exception."""
    port = spec.get("port", port)
    path = (f"/ws/signaling?meeting_id={spec['meeting_id']}&user_id={spec['user_id']}"
            f"&peer_id={spec['peer_id']}&token={spec['token']}")
    loop = asyncio.get_running_loop()
    make = factory or WsClient
    _, c = await asyncio.wait_for(loop.create_connection(
        lambda: make(f"127.0.0.1:{port}", path, spec["index"], stats), "127.0.0.1", port), timeout)
    try:
        await asyncio.wait_for(c.opened, timeout)
    except BaseException:
        c.close()
        raise
    return c


def failure_key(e: BaseException) -> str:
    if isinstance(e, Refused):
        return f"HTTP {e.status}"
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return type(e).__name__


# -- the chat clients (forked processes) --------------------------------------------------------

def chat_worker(wid, port, specs, total_clients, cfg, ready_q, start_value, result_q):
    asyncio.events._set_running_loop(None)  # forked from the parent's running loop
    common.raise_nofile_limit()
    try:
        result = common.arun(asyncio.wait_for(
            _chat_worker(wid, port, specs, total_clients, cfg, ready_q, start_value), cfg["duration"] + 600))
    except BaseException as e:  # report, so the parent does not wait forever
        result = {"wid": wid, "error": f"{type(e).__name__}: {e}"}
    result_q.put(result)


async def _chat_worker(wid, port, specs, total_clients, cfg, ready_q, start_value):
    stats = Stats()
    sem = asyncio.Semaphore(cfg["concurrency"])
    failures: dict[str, int] = {}
    samples: list[str] = []
    setup_lat: list[float] = []

    async def one(spec):
        async with sem:
            t = time.monotonic()
            try:
                c = await open_client(port, spec, stats)
            except Exception as e:
                key = failure_key(e)
                failures[key] = failures.get(key, 0) + 1
                if len(samples) < 3:
                    samples.append(f"user {spec['user_id']}: {e}")
                return None
            setup_lat.append(c.room_info.result() - t)
            c.meeting_id = spec["meeting_id"]
            return c

    t0 = time.monotonic()
    clients = [c for c in await asyncio.gather(*(one(s) for s in specs)) if c is not None]
    setup_s = time.monotonic() - t0
    ready_q.put(wid)
    start_at = await common.wait_for_start(start_value)
    # perf_counter_ns and monotonic are the same clock (CLOCK_MONOTONIC) on Linux.
    stats.t0_ns = int(start_at * 1e9)
    stats.measure_from_ns = int((start_at + WARMUP) * 1e9)
    stats.until_ns = int((start_at + cfg["duration"]) * 1e9)
    deliveries0 = stats.deliveries
    for c in clients:
        c.chats = c.echoes = 0
    cpu0 = common.own_cpu_seconds()
    lag = common.LoopLag(0.05)
    lag.start()

    # One scheduler: client with global index g sends at start + (g/N + k) * interval (k = 0, 1, ...).
    interval = cfg["interval"]
    order = sorted(clients, key=lambda c: c.index)
    offsets = [c.index / total_clients * interval for c in order]
    rounds = int(cfg["duration"] / interval)
    total = rounds * len(order)
    lateness: list[float] = []
    k = 0
    hard_end = start_at + cfg["duration"] + 30
    while k < total and time.monotonic() < hard_end:
        r, j = divmod(k, len(order))
        due = start_at + r * interval + offsets[j]
        now = time.monotonic()
        if due > now + 0.0005:
            await asyncio.sleep(due - now)
            continue
        lateness.append(now - due)
        c = order[j]
        if not c.closed.done():
            c.send_chat()
        k += 1
    cpu_send = common.own_cpu_seconds() - cpu0
    delivered_in_run = stats.deliveries - deliveries0
    # Deliveries still on their way (bounded wait).
    room_size: dict[int, int] = {}
    for c in clients:
        room_size[c.meeting_id] = room_size.get(c.meeting_id, 0) + 1
    expected = sum(c.seq * room_size[c.meeting_id] for c in clients)
    deadline = time.monotonic() + cfg["drain"]
    while time.monotonic() < deadline and stats.deliveries - deliveries0 < expected:
        await asyncio.sleep(0.05)
    await lag.stop()
    cpu = common.own_cpu_seconds() - cpu0
    result = {
        "wid": wid,
        "connected": len(clients),
        "setup_s": setup_s,
        "setup_lat": setup_lat,
        "failures": failures,
        "samples": samples,
        "sent": sum(c.seq for c in clients),
        "echoes": sum(c.echoes for c in clients),
        "expected": expected,
        "delivered": stats.deliveries - deliveries0,
        "delivered_in_run": delivered_in_run,
        "per_second": stats.per_second,
        "lat": stats.lat_ns.tobytes(),
        "lat_sent": stats.sent_ns.tobytes(),
        "lateness_ms": [x * 1000 for x in lateness],
        "loop_lag_ms": lag.lags_ms,
        "cpu_s": cpu,
        "cpu_send_s": cpu_send,
        "errors": sum(len(c.errors) for c in clients),
        "error_samples": [c.errors[0] for c in clients if c.errors][:3],
        "unexpected": sum(len(c.unexpected) for c in clients),
        "unexpected_samples": [c.unexpected[0] for c in clients if c.unexpected][:3],
        "disconnected": sum(1 for c in clients if c.closed.done()),
        "close_codes": sorted({c.close_code for c in clients if c.close_code is not None}),
        "pings": sum(c.pings for c in clients),
    }
    await asyncio.gather(*(c.aclose() for c in clients))
    return result


# -- the join storm (a forked process) -----------------------------------------------------------

def storm_worker(port, specs, window, ready_q, start_value, result_q):
    asyncio.events._set_running_loop(None)
    common.raise_nofile_limit()
    try:
        result = common.arun(asyncio.wait_for(_storm_worker(port, specs, window, ready_q, start_value),
                                              window + 300))
    except BaseException as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    result_q.put(result)


async def _storm_worker(port, specs, window, ready_q, start_value):
    stats = Stats()
    failures: dict[str, int] = {}
    samples: list[str] = []
    lat: list[float] = []
    done_at: list[float] = []
    clients: list[WsClient] = []
    ready_q.put(0)
    start_at = await common.wait_for_start(start_value)
    cpu0 = common.own_cpu_seconds()

    async def one(i, spec):
        await asyncio.sleep(max(0.0, start_at + i * window / len(specs) - time.monotonic()))
        t = time.monotonic()
        try:
            c = await open_client(port, spec, stats, timeout=30.0)
        except Exception as e:
            key = failure_key(e)
            failures[key] = failures.get(key, 0) + 1
            if len(samples) < 3:
                samples.append(f"user {spec['user_id']}: {e}")
            return
        lat.append(c.room_info.result() - t)
        done_at.append(c.room_info.result())
        clients.append(c)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(specs)))
    last = max(done_at, default=float("nan")) - start_at
    cpu = common.own_cpu_seconds() - cpu0
    # Every member's latest room-info should now list the whole room (bounded wait for the last ones).
    sizes: dict[int, int] = {}
    for s in specs:
        sizes[s["meeting_id"]] = sizes.get(s["meeting_id"], 0) + 1
    want = {s["index"]: sizes[s["meeting_id"]] for s in specs}
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(c.participants != want[c.index] for c in clients):
        await asyncio.sleep(0.1)
    incomplete = sum(1 for c in clients if c.participants != want[c.index])
    result = {"n": len(specs), "ok": len(clients), "failures": failures, "samples": samples, "lat": lat,
              "last_s": last, "incomplete": incomplete, "cpu_s": cpu,
              "errors": sum(len(c.errors) for c in clients),
              "error_samples": [c.errors[0] for c in clients if c.errors][:3],
              "unexpected": sum(len(c.unexpected) for c in clients),
              "disconnected": sum(1 for c in clients if c.closed.done())}
    await asyncio.gather(*(c.aclose() for c in clients))
    return result


# -- setup through REST ----------------------------------------------------------------------

async def rest_setup(port: int, rooms: list[list[str]], ids: dict, tokens: dict, concurrency: int = 20):
    """Create one meeting per room (first user hosts) and join every member through REST; meeting ids."""
    conns = await asyncio.gather(*(common.http_connect(port) for _ in range(concurrency)))
    free = list(conns)
    meeting_ids: list[int] = [0] * len(rooms)

    async def call(method, path, token, body=None):
        conn = free.pop()
        try:
            return await common.api(conn, method, path, token, body, timeout=60)
        finally:
            free.append(conn)

    sem = asyncio.Semaphore(concurrency)

    async def room(i: int, members: list[str]) -> None:
        async with sem:
            status, env = await call("POST", "/api/v1/meetings", tokens[members[0]],
                                     {"title": f"signaling bench {i}", "max_participants": len(members)})
            if status != 201:
                raise RuntimeError(f"creating meeting {i}: {status} {env}")
            meeting_ids[i] = env["data"]["meeting"]["id"]
        for name in members:
            async with sem:
                status, env = await call("POST", f"/api/v1/meetings/{meeting_ids[i]}/join", tokens[name])
                if status != 200:
                    raise RuntimeError(f"{name} joining meeting {meeting_ids[i]}: {status} {env}")

    await asyncio.gather(*(room(i, m) for i, m in enumerate(rooms)))
    for c in conns:
        c.close()
    return meeting_ids


def specs_for(rooms, meeting_ids, ids, tokens, first_index=0):
    out = []
    for members, mid in zip(rooms, meeting_ids):
        for name in members:
            out.append({"meeting_id": mid, "user_id": ids[name], "peer_id": f"peer-{name}", "token": tokens[name],
                        "index": first_index + len(out)})
    return out


async def wait_server_idle(daemon, max_wait: float, threshold_pct: float = 10.0) -> float:
    """Wait (at most ``max_wait`` s) until the daemon uses less than ``threshold_pct`` % CPU over 1 s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        c0 = daemon.cpu_seconds()
        await asyncio.sleep(1.0)
        if 100 * (daemon.cpu_seconds() - c0) < threshold_pct:
            break
    return time.monotonic() - t0


GC_PREAMBLE = '''
import gc as _gc, time as _time
_gc_log = open({path!r}, "a", buffering=1)
_gc_t0 = [0.0]
def _gc_cb(phase, info):
    if phase == "start":
        _gc_t0[0] = _time.monotonic()
    else:
        _d = _time.monotonic() - _gc_t0[0]
        if _d >= 0.002 or info["generation"] == 2:
            _gc_log.write(f"{{_gc_t0[0]:.4f}} {{info['generation']}} {{_d * 1000:.2f}} {{info['collected']}}\\n")
_gc.callbacks.append(_gc_cb)
'''


def gc_report(path: str, start: float, end: float) -> str:
    """The daemon's garbage-collector pauses (>= 2 ms, and every full collection) between ``start`` and ``end``."""
    try:
        with open(path) as f:
            rows = [line.split() for line in f]
    except FileNotFoundError:
        return "(no GC log)"
    pauses = [(float(t) - start, int(g), float(ms)) for t, g, ms, _ in rows if start <= float(t) <= end]
    by_gen = {g: [ms for _, gg, ms in pauses if gg == g] for g in (0, 1, 2)}
    parts = [f"gen{g}: {len(v)} x, max {max(v, default=0):.0f} ms, total {sum(v):.0f} ms" for g, v in by_gen.items()]
    long = [f"{t:.1f} s: gen{g} {ms:.0f} ms" for t, g, ms in pauses if ms >= 20]
    return "; ".join(parts) + (f"\n    pauses >= 20 ms (seconds after the chat start): {', '.join(long[:20])}"
                               if long else "")


def timeline(lat, sent, top: int = 5) -> str:
    """Latency per second of sending: is the tail spread over the run or bunched in a few seconds?"""
    by_sec: dict[int, list[int]] = {}
    for x, t in zip(lat, sent):
        by_sec.setdefault(t // 1_000_000_000, []).append(x)
    if not by_sec:
        return "(no samples)"
    p99s = {s: percentile(v, 99) / 1e6 for s, v in by_sec.items()}
    over = sorted(s for s, v in p99s.items() if v >= TARGET_P99_MS)
    worst = sorted(p99s, key=lambda s: -p99s[s])[:top]
    return (f"{len(over)} of {len(by_sec)} seconds have p99 >= {TARGET_P99_MS:g} ms; worst seconds (s: p99 ms): "
            + ", ".join(f"{s}: {p99s[s]:,.0f}" for s in sorted(worst)))


def fs_of(path: str) -> str:
    """The file system type holding ``path`` (fsync costs differ: tmpfs vs a disk)."""
    best, kind = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], f"{parts[2]} ({parts[0]})"
    return kind


def collect(result_q, n, timeout):
    results = []
    for _ in range(n):
        try:
            results.append(result_q.get(timeout=timeout))
        except queue.Empty:
            break
    return results


async def wait_ready(ready_q, procs, n, timeout):
    loop = asyncio.get_running_loop()
    ready = 0
    deadline = time.monotonic() + timeout
    while ready < n and time.monotonic() < deadline:
        try:
            await loop.run_in_executor(None, lambda: ready_q.get(timeout=1.0))
            ready += 1
        except queue.Empty:
            if not all(p.is_alive() for p in procs):
                break
    return ready == n


async def chat_phase(ctx, port: int, pid: int, chat_specs, chat_rooms, args, profile_path=None, more_pids=()):
    """
    The chat load against the server on ``port`` (process ``pid``): connect and
    join every client, chat for ``args.duration`` s, collect. -> the figures.
    For a cluster, the specs name their node's ``port`` and ``more_pids`` are
    the other nodes (and Redis): the server's CPU and RSS are their sums
    (``cpu.per_pid_s`` has each), the reactor thread's is ``pid``'s.
    """
    pids = (pid, *more_pids)

    def server_rss() -> int:
        return sum(common.rss_kib(p) for p in pids)

    n_chat = len(chat_specs)
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    start_value = ctx.Value("d", 0.0)
    cfg = {"duration": args.duration, "concurrency": max(1, args.concurrency // args.procs),
           "drain": args.drain, "interval": args.interval}
    by_proc = [[] for _ in range(args.procs)]
    for r in range(len(chat_rooms)):  # whole rooms per process
        by_proc[r % args.procs].extend(chat_specs[r * args.room_size:(r + 1) * args.room_size])
    print(f"chat: {n_chat} clients in {len(chat_rooms)} rooms connect and join "
          f"({args.procs} client processes) ...", flush=True)
    t_conn = time.monotonic()
    procs = [common.worker_process(chat_worker, w, port, by_proc[w], n_chat, cfg, ready_q, start_value, result_q)
             for w in range(args.procs)]
    profile = None
    try:
        if not await wait_ready(ready_q, procs, args.procs, 300):
            raise RuntimeError("chat client processes did not get ready")
        connect_s = time.monotonic() - t_conn
        await asyncio.sleep(2.0)  # the last room-info refreshes
        rss_all = server_rss()
        start_at = time.monotonic() + 0.5
        start_value.value = start_at
        print(f"all connected in {connect_s:.1f} s; every client chats every {args.interval:g} s for "
              f"{args.duration:g} s ...", flush=True)
        await asyncio.sleep(max(0.0, start_at + WARMUP - time.monotonic()))
        cpu = common.CpuMeter(pid, *more_pids)
        cpu.start()
        reactor0 = common.task_cpu_seconds(pid, pid)
        if profile_path is not None:
            profile = common.Profile(pid, args.duration - WARMUP - 1, profile_path)
        rss_samples = []
        end = start_at + args.duration
        while time.monotonic() < end:
            rss_samples.append(server_rss())
            await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
        cpu.stop()
        reactor_pct = 100 * (common.task_cpu_seconds(pid, pid) - reactor0) / cpu.wall
        rss_end = server_rss()
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(None, collect, result_q, args.procs, args.drain + 120)
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    profile_text = None
    if profile is not None:
        profile.finish()
        profile_text = profile.summary()
    lat, lat_sent = common.worker_arrays(results, args.procs, "chat client process", "lat", "lat_sent")
    per_second: dict[int, int] = {}
    for r in results:
        for sec, n in r["per_second"].items():
            per_second[sec] = per_second.get(sec, 0) + n
    client_s = sum(r["cpu_s"] for r in results)
    return {
        "connected": sum(r["connected"] for r in results), "connect_s": connect_s,
        "setup_lat": [x for r in results for x in r["setup_lat"]],
        "failures": {k: sum(r["failures"].get(k, 0) for r in results) for r in results for k in r["failures"]},
        "samples": [x for r in results for x in r["samples"]][:3],
        "sent": sum(r["sent"] for r in results), "echoes": sum(r["echoes"] for r in results),
        "expected": sum(r["expected"] for r in results), "delivered": sum(r["delivered"] for r in results),
        "delivered_in_run": sum(r["delivered_in_run"] for r in results),
        "per_second": [per_second.get(sec, 0) for sec in range(1, int(args.duration))],
        "lat": lat, "timeline": timeline(lat, lat_sent), "lateness": [x for r in results for x in r["lateness_ms"]],
        "loop_lag": [x for r in results for x in r["loop_lag_ms"]],
        "client_cpu": 100 * sum(r["cpu_send_s"] for r in results) / args.duration,
        "errors": sum(r["errors"] for r in results),
        "error_samples": [x for r in results for x in r["error_samples"]][:3],
        "unexpected": sum(r["unexpected"] for r in results),
        "unexpected_samples": [x for r in results for x in r["unexpected_samples"]][:3],
        "disconnected": sum(r["disconnected"] for r in results),
        "close_codes": sorted({c for r in results for c in r["close_codes"]}),
        "pings": sum(r["pings"] for r in results),
        "cpu": cpu, "reactor_pct": reactor_pct, "noise": cpu.noise(client_s * cpu.wall / (args.duration + 1)),
        "rss": (rss_all, rss_end, max(rss_samples, default=rss_end)),
        "start_at": start_at, "profile_text": profile_text,
    }


async def main(args) -> int:
    limit = common.raise_nofile_limit()
    if limit < args.rooms * args.room_size + args.storm + 200:
        print(f"RLIMIT_NOFILE is {limit}: too low")
        return 2
    print(common.describe_code())
    common.wait_for_quiet(args.max_wait)
    ws = common.Workspace("signaling", keep=args.keep)
    daemon = None
    chat = storm = baseline = None
    profile_text = None
    data_dir, chat_mids = None, []
    try:
        data_dir = ws.sub("data")
        n_chat = args.rooms * args.room_size
        chat_names = [f"sig{i:05d}" for i in range(n_chat)]
        storm_names = [f"storm{i:05d}" for i in range(args.storm)]
        t = time.perf_counter()
        secret, ids = common.prepare_accounts(data_dir, chat_names + storm_names)
        tokens = common.mint_tokens(secret, ids)
        print(f"prepared {len(ids)} accounts (one shared argon2id hash) in {time.perf_counter() - t:.1f} s; "
              f"data dir on {fs_of(data_dir)}")
        gc_path = os.path.join(ws.path, "gc.log")
        daemon = common.Daemon(data_dir, preamble=GC_PREAMBLE.format(path=gc_path) if args.gc_log else "")
        daemon.start()
        print(f"daemon pid {daemon.pid}, HTTP on 127.0.0.1:{daemon.http_port} (default options); "
              f"RLIMIT_NOFILE {limit}")

        chat_rooms = [chat_names[i:i + args.room_size] for i in range(0, n_chat, args.room_size)]
        storm_rooms = [storm_names[i:i + args.room_size] for i in range(0, args.storm, args.room_size)]
        t = time.perf_counter()
        chat_mids = await rest_setup(daemon.http_port, chat_rooms, ids, tokens)
        storm_mids = await rest_setup(daemon.http_port, storm_rooms, ids, tokens)
        print(f"REST setup: {len(chat_rooms) + len(storm_rooms)} meetings created and {n_chat + args.storm} "
              f"joins (POST /api/v1/meetings/:id/join) in {time.perf_counter() - t:.1f} s")
        chat_specs = specs_for(chat_rooms, chat_mids, ids, tokens)
        storm_specs = specs_for(storm_rooms, storm_mids, ids, tokens, first_index=n_chat)
        await asyncio.sleep(2.0)

        # -- chat load: the baseline first, then the daemon ----------------------------------
        ctx = common.mp_context()
        if args.baseline:
            base = common.Baseline("ws_broadcast.py")
            try:
                print(f"baseline (bench/ws_broadcast.py, pid {base.pid}): the same chat load ...", flush=True)
                baseline = await chat_phase(ctx, base.port, base.pid, chat_specs, chat_rooms, args)
            finally:
                base.stop()
            await asyncio.sleep(2.0)
        rss_before = daemon.rss_kib()
        chat = await chat_phase(ctx, daemon.http_port, daemon.pid, chat_specs, chat_rooms, args,
                                profile_path=os.path.join(ws.path, "profile.txt") if args.profile else None)
        profile_text = chat.pop("profile_text")
        chat["rss"] = (rss_before, *chat["rss"])
        chat["gc"] = gc_report(gc_path, chat["start_at"], chat["start_at"] + args.duration) if args.gc_log else None
        print("chat done; waiting for the daemon to settle before the join storm ...", flush=True)
        await asyncio.sleep(3.0)
        # A daemon that fell behind is still working through its backlog (bounded wait).
        chat["settle_s"] = 3.0 + await wait_server_idle(daemon, args.settle_max)
        rss_after = daemon.rss_kib()
        # Everyone has gone: the daemon should have no live room left.
        conn = await common.http_connect(daemon.http_port)
        status_code, env = await common.api(conn, "GET", "/api/v1/stats/rooms", tokens[chat_names[0]])
        _, metrics = await conn.request("GET", "/metrics")
        conn.close()
        gauges = dict(line.split()[:2] for line in metrics.decode(errors="replace").splitlines()
                      if line.startswith(("wecompany_sessions ", "wecompany_online_users ")))
        chat["sessions_left"] = (gauges.get("wecompany_sessions", "?"), gauges.get("wecompany_online_users", "?"))
        if status_code == 200:
            left_rooms = env["data"]["rooms"]
            chat["rooms_left"] = (len(left_rooms), sum(r["participant_count"] for r in left_rooms))
        else:
            chat["rooms_left"] = (f"HTTP {status_code}", "?")

        # -- join storm ---------------------------------------------------------------------
        if storm_specs:
            ready_q, result_q = ctx.Queue(), ctx.Queue()
            start_value = ctx.Value("d", 0.0)
            proc = common.worker_process(storm_worker, daemon.http_port, storm_specs, args.storm_window, ready_q,
                                         start_value, result_q)
            try:
                if not await wait_ready(ready_q, [proc], 1, 60):
                    raise RuntimeError("storm client process did not get ready")
                print(f"join storm: {len(storm_specs)} clients connect and join over {args.storm_window:g} s ...",
                      flush=True)
                start_value.value = time.monotonic() + 0.5
                storm_cpu = common.CpuMeter(daemon.pid)
                storm_cpu.start()
                results = await asyncio.get_running_loop().run_in_executor(None, collect, result_q, 1,
                                                                         args.storm_window + 200)
                storm_cpu.stop()
                proc.join(10)
            finally:
                if proc.is_alive():
                    proc.kill()
            if not results or "error" in results[0]:
                raise RuntimeError(f"storm client process failed: {results[0]['error'] if results else 'no result'}")
            storm = results[0]
            storm["server_cpu"] = storm_cpu.server_pct
    finally:
        status = daemon.stop() if daemon is not None else None
        log = daemon.log_text() if daemon is not None else ""
        stored = still_joined = None
        if daemon is not None and chat_mids:
            try:
                db = sqlite3.connect(os.path.join(data_dir, "wecompany.sqlite3"))
                chat_ids = set(chat_mids)
                stored = sum(n for mid, n in db.execute(
                    "SELECT meeting_id, COUNT(*) FROM meeting_messages GROUP BY meeting_id") if mid in chat_ids)
                # The socket closing marks the participant "left" (REST record follows the socket).
                still_joined = sum(n for mid, n in db.execute(
                    "SELECT meeting_id, COUNT(*) FROM participants WHERE status = 'joined' GROUP BY meeting_id")
                    if mid in chat_ids)
                db.close()
            except Exception as e:  # a benchmark reports, it does not crash
                print(f"(could not count stored messages: {e})")
        ws.close()

    if chat is None:
        return 1
    n = chat["connected"]
    d = args.duration
    p50, p99, p999, mx = common.summarize_ms(chat["lat"])
    rss_before, rss_all, rss_end, rss_max = chat["rss"]
    per_conn = (rss_all - rss_before) / max(1, n)
    ps = chat["per_second"]
    fails = sum(chat["failures"].values())
    undelivered = chat["expected"] - chat["delivered"]
    if baseline is not None:
        b50, b99, b999, bmx = common.summarize_ms(baseline["lat"])
        print()
        print(table([
            ("figure", "value"),
            ("clients connected and joined", f"{baseline['connected']} / {n_chat}"),
            ("deliveries / expected", f"{baseline['delivered']:,} / {baseline['expected']:,}"),
            ("fan-out latency p50 / p99", f"{fmt(b50)} / {fmt(b99)} ms"),
            ("fan-out latency p99.9 / max", f"{fmt(b999)} / {fmt(bmx)} ms"),
            ("server CPU (process)", f"{baseline['cpu'].server_pct:.0f} %"),
            ("server CPU per chat message",
             f"{baseline['cpu'].server_pct / 100 * d / max(1, baseline['sent']) * 1e6:.0f} us"),
            ("client CPU (both processes, while sending)", f"{baseline['client_cpu']:.0f} %"),
            ("machine noise during the chat", baseline["noise"]),
        ], title="Baseline in the same run: bench/ws_broadcast.py (Autobahn broadcast, no auth, no storage, "
                 "no limits) under the same chat load"))
        print(f"baseline fan-out latency over time: {baseline['timeline']}")
    print()
    print(table([
        ("figure", "value", "target", "verdict"),
        ("clients connected and joined", f"{n} / {n_chat} in {chat['connect_s']:.1f} s", f"{n_chat}",
         verdict(n == n_chat)),
        ("  connect -> room-info p50 / p99 / max", f"{fmt(percentile(chat['setup_lat'], 50) * 1000, 1)} / "
         f"{fmt(percentile(chat['setup_lat'], 99) * 1000, 1)} / "
         f"{fmt(max(chat['setup_lat'], default=float('nan')) * 1000, 1)} ms "
         f"({args.concurrency} in flight)", "", ""),
        ("chat messages sent", f"{chat['sent']:,} ({chat['sent'] / d:,.0f}/s)", f"{n_chat / args.interval:,.0f}/s",
         ""),
        ("stored in SQLite (counted after the stop)", f"{stored if stored is None else f'{stored:,}'}"
         f" ({(stored or 0) / d:,.0f}/s)", "= sent", verdict(stored == chat["sent"])),
        ("echoes back to the sender", f"{chat['echoes']:,}", "= sent", verdict(chat["echoes"] == chat["sent"])),
        ("deliveries (all recipients) / expected", f"{chat['delivered']:,} / {chat['expected']:,}", "all",
         verdict(undelivered == 0)),
        ("delivered messages/s (during the run)", f"{chat['delivered_in_run'] / d:,.0f}/s",
         f"{n_chat * args.room_size / args.interval:,.0f}/s", ""),
        ("  per second min / median / max", f"{min(ps, default=0):,} / {sorted(ps)[len(ps) // 2] if ps else 0:,} / "
         f"{max(ps, default=0):,}", "", ""),
        ("fan-out latency p50 / p99", f"{fmt(p50)} / {fmt(p99)} ms", f"p99 < {TARGET_P99_MS:g} ms",
         verdict(p99 < TARGET_P99_MS)),
        ("fan-out latency p99.9 / max", f"{fmt(p999)} / {fmt(mx)} ms ({len(chat['lat']):,} samples)", "", ""),
        ("  p99 against the baseline's in this run", f"{fmt(p99)} / {fmt(b99)} ms" if baseline else "(no baseline)",
         "", ""),
        ("server RSS before connecting / all joined", f"{rss_before / 1024:.1f} / {rss_all / 1024:.1f} MiB", "", ""),
        ("server RSS per connection", f"{per_conn:.1f} KiB", "(reported)", ""),
        ("server RSS end of chat (max) / after close", f"{rss_end / 1024:.1f} ({rss_max / 1024:.1f}) / "
         f"{rss_after / 1024:.1f} MiB", "", ""),
        ("daemon busy after the chat (backlog; >= 4 s)", f"{chat['settle_s']:.1f} s", "", ""),
        ("server CPU (process / reactor thread)", f"{chat['cpu'].server_pct:.0f} % / {chat['reactor_pct']:.0f} %",
         "", ""),
        # CPU time is not inflated by steal: the steadiest figure on a shared machine.
        ("server CPU per chat message (all its deliveries)",
         f"{chat['cpu'].server_pct / 100 * d / max(1, chat['sent']) * 1e6:.0f} us (reactor thread "
         f"{chat['reactor_pct'] / 100 * d / max(1, chat['sent']) * 1e6:.0f} us)", "", ""),
        ("client CPU (both processes, while sending)", f"{chat['client_cpu']:.0f} %", "", ""),
        ("client send lateness p99 / max", f"{fmt(percentile(chat['lateness'], 99))} / "
         f"{fmt(max(chat['lateness'], default=float('nan')))} ms", "", ""),
        ("client loop lag p99 / max", f"{fmt(percentile(chat['loop_lag'], 99))} / "
         f"{fmt(max(chat['loop_lag'], default=float('nan')))} ms", "", ""),
        ("machine noise during the chat", chat["noise"], "", ""),
        ("errors: handshake/join failures", f"{fails} {chat['failures'] or ''}", "0", verdict(not fails)),
        ("errors: error messages / unexpected", f"{chat['errors']} / {chat['unexpected']}", "0",
         verdict(not chat["errors"] and not chat["unexpected"])),
        ("errors: disconnected during the run", f"{chat['disconnected']} {chat['close_codes'] or ''}", "0",
         verdict(not chat["disconnected"])),
        ("server pings answered", f"{chat['pings']}", "", ""),
        ("live rooms / members after all clients closed", f"{chat['rooms_left'][0]} / {chat['rooms_left'][1]}",
         "0 / 0", verdict(chat["rooms_left"] == (0, 0))),
        ("live sessions / online users after all closed", f"{chat['sessions_left'][0]} / {chat['sessions_left'][1]}",
         "0 / 0", verdict(tuple(float(x) if x != "?" else -1 for x in chat["sessions_left"]) == (0, 0))),
        ("participant records still 'joined' after close", f"{still_joined}", "0", verdict(still_joined == 0)),
    ], title=f"Signaling chat: {n_chat} WebSocket clients in {args.rooms} rooms of {args.room_size}, "
             f"a chat every {args.interval:g} s each for {d:g} s"))
    if storm is not None:
        sf = sum(storm["failures"].values())
        print()
        print(table([
            ("figure", "value", "target", "verdict"),
            ("clients joined", f"{storm['ok']} / {storm['n']}", f"{storm['n']}", verdict(storm["ok"] == storm["n"])),
            ("failures", f"{sf} {storm['failures'] or ''}", "0", verdict(not sf)),
            ("time to the last room-info", f"{fmt(storm['last_s'])} s (starts spread over {args.storm_window:g} s)",
             "(reported)", ""),
            ("connect -> room-info p50 / p99 / max", f"{fmt(percentile(storm['lat'], 50) * 1000, 1)} / "
             f"{fmt(percentile(storm['lat'], 99) * 1000, 1)} / "
             f"{fmt(max(storm['lat'], default=float('nan')) * 1000, 1)} ms", "", ""),
            ("latest room-info lists the full room", f"{storm['ok'] - storm['incomplete']} / {storm['ok']}", "all",
             verdict(storm["incomplete"] == 0)),
            ("error messages / unexpected / disconnected", f"{storm['errors']} / {storm['unexpected']} / "
             f"{storm['disconnected']}", "0", verdict(not (storm["errors"] or storm["unexpected"]
                                                          or storm["disconnected"]))),
            ("server CPU during the storm", f"{storm['server_cpu']:.0f} %", "", ""),
        ], title=f"Join storm: {storm['n']} clients in fresh rooms of {args.room_size}, "
                 f"starts spread over {args.storm_window:g} s"))
    print()
    print(table([
        ("figure", "value", "target", "verdict"),
        ("errors: tracebacks in server log", f"{log.count('Traceback')}", "0", verdict("Traceback" not in log)),
        ("daemon exit status after SIGTERM", f"{status}", "0", verdict(status == 0)),
    ]))
    for label, items in (("first handshake failures", chat["samples"]), ("first error messages", chat["error_samples"]),
                         ("first unexpected messages", chat["unexpected_samples"]),
                         ("storm: first failures", storm["samples"] if storm else []),
                         ("storm: first error messages", storm["error_samples"] if storm else [])):
        if items:
            print(f"{label}: {items}")
    print(f"fan-out latency over time: {chat['timeline']}")
    if chat["gc"]:
        print(f"daemon GC pauses during the chat [--gc-log instrumentation]: {chat['gc']}")
    if profile_text:
        print()
        print("py-spy profile of the daemon during the chat load:")
        print(profile_text)
    return 0


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=200)
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of chat (one message per client per second)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between one client's chat messages")
    p.add_argument("--procs", type=int, default=2, help="client processes for the chat load")
    p.add_argument("--concurrency", type=int, default=100, help="connections being opened at a time (all processes)")
    p.add_argument("--drain", type=float, default=15.0, help="at most this many seconds to wait for late deliveries")
    p.add_argument("--settle-max", type=float, default=300.0,
                   help="at most this many seconds to wait, after the chat, for the daemon to finish its backlog")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the baseline (bench/ws_broadcast.py under the same chat load first)")
    p.add_argument("--storm", type=int, default=500, help="clients in the join storm (0: none)")
    p.add_argument("--storm-window", type=float, default=5.0, help="seconds over which the storm's clients start")
    p.add_argument("--quick", action="store_true", help="smoke test: 200 clients, 5 s; storm of 100 over 2 s")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir and log")
    p.add_argument("--profile", action="store_true", help="py-spy the daemon during the chat load (needs py-spy)")
    p.add_argument("--gc-log", action="store_true",
                   help="instrument the daemon (gc.callbacks, set up at start) to log its garbage-collector pauses")
    p.add_argument("--max-wait", type=float, default=180.0,
                   help="seconds to wait for the (shared) machine to be quiet before measuring")
    args = p.parse_args(argv)
    if args.quick:
        args.max_wait = 0.0
        args.rooms, args.duration, args.storm, args.storm_window, args.drain = 20, 5.0, 100, 2.0, 5.0
    if args.storm % args.room_size:
        p.error("--storm must be a multiple of --room-size")
    return args


if __name__ == "__main__":
    a = parse()
    sys.exit(common.run(main(a), hard_timeout=a.duration + a.drain + a.settle_max + 900))
