"""
Tests for wecompany.sfu.engine: the daemon side of the SFU worker protocol.

All but the last test run the engine on a fake process reactor: spawnProcess
records the protocol and connects it to a :class:`FakeProcess` the test writes
worker output into and reads the engine's requests from. Time is a
MemoryReactorClock. The last test spawns tests/sfu/fake_worker.py for real.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.application.service import IService
from twisted.internet import defer, error as ierror
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wecompany.domain.interfaces import IMediaEngine, IMediaEngineListener
from wecompany.domain.sfu import ForwardedStream
from wecompany.errors import InternalError, InvalidInput, PeerNotFound, Unavailable
from wecompany.sfu.engine import LineBuffer, LineTooLong, WorkerEngine, WorkerEngineService, map_error

CONFIG = dict(host_addresses=["127.0.0.1"], public_address="203.0.113.5", udp_ports=(40000, 40100),
              ice_servers=[{"urls": ["stun:127.0.0.1:3478"]}], max_peers=50)


class FakeProcess:
    """The transport a worker's protocol gets: stdin is ``written``, signals are recorded."""

    def __init__(self, protocol, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.written = bytearray()
        self.signals: list[str] = []
        self.producer = None
        self.ended = False
        self._read = 0

    # IProcessTransport, the part the engine uses
    def write(self, data: bytes) -> None:
        self.written += data

    def writeSequence(self, seq) -> None:
        for data in seq:
            self.write(data)

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ierror.ProcessExitedAlready()
        self.signals.append(name)

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def closeStdin(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    # test side
    def requests(self) -> list[dict]:
        """The requests written since the last call."""
        data = bytes(self.written[self._read:])
        assert data == b"" or data.endswith(b"\n"), data
        self._read = len(self.written)
        return [json.loads(line) for line in data.split(b"\n") if line]

    def send(self, message: dict) -> None:
        self.feed(json.dumps(message).encode() + b"\n")

    def feed(self, data: bytes) -> None:
        self.protocol.childDataReceived(1, data)

    def reply(self, request: dict, result=None) -> None:
        self.send({"id": request["id"], "result": {} if result is None else result})

    def fail(self, request: dict, kind: str, message: str = "nope") -> None:
        self.send({"id": request["id"], "error": {"kind": kind, "message": message}})

    def come_up(self) -> None:
        """Say ready and answer configure: the worker becomes usable."""
        (configure,) = self.requests()
        assert configure["op"] == "configure", configure
        self.send({"event": "ready", "pid": self.pid, "aiortc": "1.16.0"})
        self.reply(configure)

    def exit(self, code: int | None = 0, signal: int | None = None) -> None:
        self.ended = True
        if code == 0 and signal is None:
            reason = ierror.ProcessDone(0)
        else:
            reason = ierror.ProcessTerminated(code, signal)
        self.protocol.processEnded(Failure(reason))


class FakeProcessReactor(MemoryReactorClock):
    """MemoryReactorClock with an IReactorProcess that records each spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple] = []
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None, uid=None, gid=None,
                     usePTY=False, childFDs=None):
        self.spawned.append((executable, list(args), env))
        process = FakeProcess(protocol, 1000 + len(self.processes))
        self.processes.append(process)
        protocol.makeConnection(process)
        return process


@implementer(IMediaEngineListener)
class RecordingListener:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def candidate(self, peer_id, candidate):
        self.calls.append(("candidate", peer_id, candidate))

    def gathering_complete(self, peer_id):
        self.calls.append(("gathering_complete", peer_id))

    def connection_state(self, peer_id, state):
        self.calls.append(("connection_state", peer_id, state))

    def track_added(self, peer_id, track_id, kind):
        self.calls.append(("track_added", peer_id, track_id, kind))

    def track_ended(self, peer_id, track_id):
        self.calls.append(("track_ended", peer_id, track_id))

    def recording_failed(self, recording_id, reason):
        self.calls.append(("recording_failed", recording_id, reason))

    def engine_lost(self, rooms):
        self.calls.append(("engine_lost", rooms))


class EngineTestBase(SynchronousTestCase):
    workers = 1

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.listener = RecordingListener()
        self.engine = self.make_engine()

    def make_engine(self, **kw) -> WorkerEngine:
        options = dict(command=["/usr/bin/python3", "-m", "wecompany.sfu.worker"], env={"A": "1"},
                       workers=self.workers, request_timeout=10.0, ready_timeout=30.0,
                       restart_backoff=(1.0, 8.0), stable_after=60.0, **CONFIG)
        options.update(kw)
        return WorkerEngine(self.reactor, **options)

    def start(self, up: bool = True) -> list[FakeProcess]:
        self.engine.start(self.listener)
        if up:
            for process in self.reactor.processes:
                process.come_up()
        return list(self.reactor.processes)

    def open_peer(self, process: FakeProcess, room: str, peer_id: str) -> None:
        d = self.engine.open_peer(room, peer_id, "offer")
        (request,) = process.requests()
        self.assertEqual(request["op"], "open_peer")
        process.reply(request, {"answer_sdp": "answer-" + peer_id})
        self.assertEqual(self.successResultOf(d), "answer-" + peer_id)


class StartTests(EngineTestBase):
    workers = 2

    def test_interface(self) -> None:
        verifyObject(IMediaEngine, self.engine)

    def test_spawns_and_configures_each_worker(self) -> None:
        self.engine.start(self.listener)
        self.assertEqual(len(self.reactor.spawned), 2)
        executable, args, env = self.reactor.spawned[0]
        self.assertEqual((executable, args, env),
                         ("/usr/bin/python3", ["/usr/bin/python3", "-m", "wecompany.sfu.worker"], {"A": "1"}))
        for process in self.reactor.processes:
            (configure,) = process.requests()
            self.assertEqual(configure["op"], "configure")
            self.assertEqual(configure["args"], {
                "host_addresses": ["127.0.0.1"], "public_address": "203.0.113.5",
                "udp_ports": [40000, 40100], "ice_servers": [{"urls": ["stun:127.0.0.1:3478"]}],
                "max_peers": 50})
            self.assertIs(process.producer, process.protocol)

    def test_lazy_workers_start_with_the_first_room(self) -> None:
        engine = self.make_engine(lazy=True)
        engine.start(self.listener)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.successResultOf(engine.stats())["workers"], 0)
        d = engine.open_peer("r1", "a", "offer")
        self.assertEqual(len(self.reactor.spawned), 2)  # all of them, the room on one
        for process in self.reactor.processes:
            process.come_up()
        [(process, request)] = [(p, r) for p in self.reactor.processes for r in p.requests()]
        self.assertEqual(request["op"], "open_peer")
        process.reply(request, {"answer_sdp": "answer"})
        self.assertEqual(self.successResultOf(d), "answer")
        engine.open_peer("r2", "b", "offer")
        self.assertEqual(len(self.reactor.spawned), 2)  # started once

    def test_default_command_and_count(self) -> None:
        engine = WorkerEngine(self.reactor)
        engine.start(self.listener)
        self.assertGreaterEqual(len(self.reactor.spawned), 1)
        executable, args, env = self.reactor.spawned[0]
        self.assertEqual(args, [sys.executable, "-P", "-m", "wecompany.sfu.worker"])
        self.assertEqual(env, dict(os.environ))

    def test_usable_needs_ready_and_configure(self) -> None:
        (p1, _) = self.start(up=False)
        d = self.engine.stats()
        self.assertEqual(self.successResultOf(d)["workers"], 0)
        (configure,) = p1.requests()
        p1.reply(configure)
        self.assertEqual(self.successResultOf(self.engine.stats())["workers"], 0)
        p1.send({"event": "ready", "pid": 1, "aiortc": "1.16.0"})
        d = self.engine.stats()
        (stats,) = p1.requests()
        p1.reply(stats, {"peers": 0})
        self.assertEqual(self.successResultOf(d)["workers"], 1)


class LineBufferTests(SynchronousTestCase):
    def test_split_and_joined(self) -> None:
        buf = LineBuffer(100)
        data = b'{"a":1}\n{"b":2}\n{"c"'
        out = []
        for i in range(len(data)):
            out += buf.feed(data[i:i + 1])
        self.assertEqual(out, [b'{"a":1}', b'{"b":2}'])
        self.assertEqual(buf.feed(b":3}\n\n"), [b'{"c":3}', b""])
        self.assertEqual(buf.pending, b"")

    def test_line_at_limit_passes(self) -> None:
        buf = LineBuffer(10)
        self.assertEqual(buf.feed(b"x" * 10 + b"\n"), [b"x" * 10])

    def test_long_line_in_pieces(self) -> None:
        buf = LineBuffer(10)
        buf.feed(b"x" * 6)
        self.assertRaises(LineTooLong, buf.feed, b"x" * 5)

    def test_long_line_with_newline(self) -> None:
        buf = LineBuffer(10)
        self.assertRaises(LineTooLong, buf.feed, b"ok\n" + b"x" * 11 + b"\n")


class FramingTests(EngineTestBase):
    def test_reply_split_byte_by_byte(self) -> None:
        (p,) = self.start()
        d = self.engine.open_peer("room", "peer1", "offer")
        (request,) = p.requests()
        line = json.dumps({"id": request["id"], "result": {"answer_sdp": "sdp\r\nwith é"}}).encode() + b"\n"
        for i in range(len(line) - 1):
            p.feed(line[i:i + 1])
        self.assertNoResult(d)
        p.feed(line[-1:])
        self.assertEqual(self.successResultOf(d), "sdp\r\nwith é")

    def test_many_messages_in_one_chunk(self) -> None:
        (p,) = self.start()
        d = self.engine.open_peer("room", "peer1", "offer")
        (request,) = p.requests()
        chunk = b"".join(json.dumps(m).encode() + b"\n" for m in [
            {"event": "gathering_complete", "peer_id": "peer1"},
            {"event": "connection_state", "peer_id": "peer1", "state": "connecting"},
            {"id": request["id"], "result": {"answer_sdp": "a"}},
        ])
        p.feed(chunk)
        self.assertEqual(self.successResultOf(d), "a")
        self.assertEqual(self.listener.calls, [("gathering_complete", "peer1"),
                                               ("connection_state", "peer1", "connecting")])

    def test_long_line_kills_worker(self) -> None:
        engine = self.make_engine(max_line=1000)
        self.engine = engine
        (p,) = self.start()
        self.open_peer(p, "room", "peer1")
        d = engine.request_keyframe("peer1")
        p.feed(b'{"event":"x","pad":"' + b"y" * 600)
        self.assertEqual(p.signals, [])
        p.feed(b"y" * 600)
        self.assertEqual(p.signals, ["KILL"])
        self.failureResultOf(d, Unavailable)
        self.assertEqual(self.listener.calls, [("engine_lost", ["room"])])
        # Nothing more is read from a worker given up on.
        p.feed(b'"}\n{"event":"gathering_complete","peer_id":"peer1"}\n')
        self.assertEqual(len(self.listener.calls), 1)

    def test_non_json_line_is_ignored(self) -> None:
        (p,) = self.start()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        p.feed(b"hello from a stray print\n[1,2]\n")
        self.assertEqual(p.signals, [])
        self.assertEqual(len([e for e in events if "not a protocol message" in e["log_format"]]), 2)
        self.open_peer(p, "room", "peer1")

    def test_deeply_nested_json_is_not_a_crash(self) -> None:
        (p,) = self.start()
        p.feed(b"[" * 100_000 + b"\n")
        self.assertEqual(p.signals, [])
        self.open_peer(p, "room", "peer1")

    def test_stdout_junk_logged_rate_limited(self) -> None:
        (p,) = self.start()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        p.feed(b"junk\n" * 1000)
        self.assertEqual(len([e for e in events if "not a protocol message" in e["log_format"]]), 200)

    def test_request_lines_are_one_json_object_each(self) -> None:
        (p,) = self.start()
        self.engine.open_peer("room", "peer1", "v=0\r\na=x\n")
        raw = bytes(p.written)
        self.assertEqual(raw.count(b"\n"), 2)  # configure, open_peer
        self.assertEqual(json.loads(raw.split(b"\n")[1])["args"]["offer_sdp"], "v=0\r\na=x\n")

    def test_oversized_request_refused(self) -> None:
        self.engine = self.make_engine(max_line=1000)
        (p,) = self.start()
        d = self.engine.open_peer("room", "peer1", "x" * 2000)
        self.failureResultOf(d, InvalidInput)
        self.assertEqual(p.requests(), [])
        self.failureResultOf(self.engine.add_candidate("peer1", None), PeerNotFound)


class RequestTests(EngineTestBase):
    def test_replies_matched_out_of_order(self) -> None:
        (p,) = self.start()
        self.open_peer(p, "room", "a")
        self.open_peer(p, "room", "b")
        da = self.engine.renegotiate("a", [ForwardedStream("b", "t1", "video", "web_b")])
        db = self.engine.renegotiate("b", [])
        ra, rb = p.requests()
        self.assertEqual(ra["args"], {"peer_id": "a", "streams": [
            {"publisher_peer_id": "b", "track_id": "t1", "kind": "video", "stream_id": "web_b"}]})
        self.assertNotEqual(ra["id"], rb["id"])
        p.reply(rb, {"offer_sdp": "offer-b"})
        self.assertNoResult(da)
        self.assertEqual(self.successResultOf(db), "offer-b")
        p.reply(ra, {"offer_sdp": "offer-a"})
        self.assertEqual(self.successResultOf(da), "offer-a")

    def test_each_op_and_its_args(self) -> None:
        (p,) = self.start()
        self.open_peer(p, "room", "a")
        cand = {"candidate": "candidate:1", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"}
        calls = [
            (self.engine.add_candidate("a", cand), "add_candidate", {"peer_id": "a", "candidate": cand}, {}, None),
            (self.engine.add_candidate("a", None), "add_candidate", {"peer_id": "a", "candidate": None}, {}, None),
            (self.engine.apply_answer("a", "ans"), "apply_answer", {"peer_id": "a", "answer_sdp": "ans"}, {}, None),
            (self.engine.request_keyframe("a"), "request_keyframe", {"peer_id": "a"}, {}, None),
            (self.engine.start_recording("room", "r1", "/tmp/r1.mkv"), "start_recording",
             {"room": "room", "recording_id": "r1", "path": "/tmp/r1.mkv"}, {}, None),
        ]
        requests = p.requests()
        for (d, op, args, result, expected), request in zip(calls, requests):
            self.assertEqual((request["op"], request["args"]), (op, args))
            p.reply(request, result)
            self.assertEqual(self.successResultOf(d), expected)
        d = self.engine.stop_recording("r1")
        (request,) = p.requests()
        self.assertEqual((request["op"], request["args"]), ("stop_recording", {"recording_id": "r1"}))
        # Finishing may merge late tracks into the file: more than a request's 10 s.
        self.reactor.advance(60)
        self.assertNoResult(d)
        summary = {"duration": 10.0, "size": 1234, "tracks": [{"peer_id": "a", "track_id": "t", "kind": "audio"}]}
        p.reply(request, summary)
        self.assertEqual(self.successResultOf(d), summary)
        self.failureResultOf(self.engine.stop_recording("r1"), InvalidInput)
        d = self.engine.close_peer("a")
        (request,) = p.requests()
        self.assertEqual((request["op"], request["args"]), ("close_peer", {"peer_id": "a"}))
        p.reply(request)
        self.assertIsNone(self.successResultOf(d))

    def test_close_peer_the_worker_no_longer_has_is_fine(self) -> None:
        (p,) = self.start()
        self.open_peer(p, "room", "a")
        d = self.engine.close_peer("a")
        p.fail(p.requests()[0], "peer_not_found")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.engine._rooms, {})

    def test_start_twice_refused(self) -> None:
        self.start()
        self.assertRaises(RuntimeError, self.engine.start, self.listener)

    def test_timeout_fails_unavailable_and_late_reply_ignored(self) -> None:
        (p,) = self.start()
        self.open_peer(p, "room", "a")
        d = self.engine.apply_answer("a", "ans")
        (request,) = p.requests()
        self.reactor.advance(9.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.failureResultOf(d, Unavailable)
        p.reply(request)  # late: ignored, the worker is kept
        self.assertEqual(p.signals, [])
        d = self.engine.request_keyframe("a")
        p.reply(p.requests()[0])
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_open_peer_timeout_forgets_and_closes_peer(self) -> None:
        (p,) = self.start()
        d = self.engine.open_peer("room", "a", "offer")
        p.requests()
        self.reactor.advance(10)
        self.failureResultOf(d, Unavailable)
        (close,) = p.requests()
        self.assertEqual((close["op"], close["args"]), ("close_peer", {"peer_id": "a"}))
        self.failureResultOf(self.engine.request_keyframe("a"), PeerNotFound)

    def test_cancel_drops_pending(self) -> None:
        (p,) = self.start()
        self.open_peer(p, "room", "a")
        d = self.engine.request_keyframe("a")
        (request,) = p.requests()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        p.reply(request)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_error_kinds_mapped(self) -> None:
        (p,) = self.start()
        self.open_peer(p, "room", "a")
        for kind, error in [("peer_not_found", PeerNotFound), ("invalid", InvalidInput),
                            ("busy", Unavailable), ("internal", InternalError), ("weird", InternalError)]:
            d = self.engine.apply_answer("a", "ans")
            p.fail(p.requests()[0], kind, "secret detail")
            f = self.failureResultOf(d, error)
            if kind == "peer_not_found":
                self.assertEqual(f.value.peer_id, "a")
                self.assertIn("peer not found: a", f.value.message)
            if kind == "invalid":
                self.assertEqual(f.value.message, "secret detail")
            if kind in ("internal", "weird"):
                self.assertNotIn("secret", f.value.message)

    def test_map_error(self) -> None:
        self.assertEqual(map_error("peer_not_found", "x", "p").peer_id, "p")
        self.assertIsInstance(map_error("busy", None, None), Unavailable)

    def test_malformed_result_is_internal(self) -> None:
        (p,) = self.start()
        d = self.engine.open_peer("room", "a", "offer")
        p.reply(p.requests()[0], {"answer": "wrong field"})
        self.failureResultOf(d, InternalError)
        self.failureResultOf(self.engine.request_keyframe("a"), PeerNotFound)
        (close,) = p.requests()
        self.assertEqual((close["op"], close["args"]), ("close_peer", {"peer_id": "a"}))


class EventTests(EngineTestBase):
    def test_events_to_listener(self) -> None:
        (p,) = self.start()
        self.open_peer(p, "room", "a")
        d = self.engine.start_recording("room", "r1", "/tmp/x")
        p.reply(p.requests()[0])
        self.successResultOf(d)
        cand = {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
        for message in [
            {"event": "candidate", "peer_id": "a", "candidate": cand},
            {"event": "gathering_complete", "peer_id": "a"},
            {"event": "connection_state", "peer_id": "a", "state": "connected"},
            {"event": "track_added", "peer_id": "a", "track_id": "t1", "kind": "video"},
            {"event": "track_ended", "peer_id": "a", "track_id": "t1"},
            {"event": "recording_failed", "recording_id": "r1", "reason": "disk full"},
        ]:
            p.send(message)
        self.assertEqual(self.listener.calls, [
            ("candidate", "a", cand), ("gathering_complete", "a"), ("connection_state", "a", "connected"),
            ("track_added", "a", "t1", "video"), ("track_ended", "a", "t1"),
            ("recording_failed", "r1", "disk full")])
        # A failed recording is forgotten.
        self.failureResultOf(self.engine.stop_recording("r1"), InvalidInput)

    def test_stale_malformed_and_unknown_events_dropped(self) -> None:
        (p,) = self.start()
        p.send({"event": "gathering_complete", "peer_id": "nobody"})
        p.send({"event": "track_added", "peer_id": "nobody"})
        p.send({"event": "recording_failed", "recording_id": "r9", "reason": "x"})
        p.send({"event": "no_such_event"})
        p.send({"neither": "id nor event"})
        self.assertEqual(self.listener.calls, [])
        self.assertEqual(p.signals, [])

    def test_listener_error_logged_not_fatal(self) -> None:
        (p,) = self.start()
        self.open_peer(p, "room", "a")

        def boom(peer_id):
            raise RuntimeError("listener bug")

        self.listener.gathering_complete = boom
        p.send({"event": "gathering_complete", "peer_id": "a"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        p.send({"event": "connection_state", "peer_id": "a", "state": "connected"})
        self.assertEqual(self.listener.calls, [("connection_state", "a", "connected")])

    def test_stderr_logged_rate_limited(self) -> None:
        (p,) = self.start()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        chunk = b"".join(b"line %d\n" % i for i in range(1000))
        p.protocol.childDataReceived(2, chunk[:7])
        p.protocol.childDataReceived(2, chunk[7:])
        lines = [e for e in events if e["log_format"] == "SFU worker {pid}: {line}"]
        self.assertEqual(len(lines), 200)  # the burst
        self.assertEqual(lines[0]["line"], "line 0")
        self.reactor.advance(1)  # 20 lines a second after it
        p.protocol.childDataReceived(2, b"later\n" * 30)
        lines = [e for e in events if e["log_format"] == "SFU worker {pid}: {line}"]
        self.assertEqual(len(lines), 220)
        (summary,) = [e for e in events if "not logged" in e["log_format"]]
        self.assertEqual(summary["count"], 800)

    def test_stderr_without_newline_bounded(self) -> None:
        (p,) = self.start()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        p.protocol.childDataReceived(2, b"z" * 100_000)
        lines = [e for e in events if e["log_format"] == "SFU worker {pid}: {line}"]
        self.assertEqual(len(lines), 1)
        self.assertEqual(len(lines[0]["line"]), 4096)
        self.assertEqual(len(p.protocol._stderr), 0)


class PlacementTests(EngineTestBase):
    workers = 2

    def test_rooms_on_fewest_peers_and_stay_together(self) -> None:
        p1, p2 = self.start()
        self.open_peer(p1, "r1", "a")
        self.open_peer(p2, "r2", "b")
        self.open_peer(p1, "r1", "c")  # same room, same worker, though it has more peers
        self.open_peer(p2, "r3", "d")  # r3: p2 has 1 peer, p1 has 2
        self.open_peer(p2, "r3", "e")
        self.open_peer(p1, "r4", "f")  # p1 2, p2 3

    def test_placement_counts_peers_being_opened(self) -> None:
        p1, p2 = self.start()
        d1 = self.engine.open_peer("r1", "a", "o")
        d2 = self.engine.open_peer("r2", "b", "o")
        self.assertEqual([r["op"] for r in p1.requests()], ["open_peer"])
        self.assertEqual([r["op"] for r in p2.requests()], ["open_peer"])
        self.assertNoResult(d1)
        self.assertNoResult(d2)

    def test_room_forgotten_when_last_peer_closes(self) -> None:
        p1, p2 = self.start()
        self.open_peer(p1, "r1", "a")
        self.open_peer(p1, "r1", "b")
        self.open_peer(p2, "r2", "c")
        self.open_peer(p2, "r3", "d")
        for peer in ("a", "b"):
            d = self.engine.close_peer(peer)
            p1.reply(p1.requests()[0])
            self.successResultOf(d)
        # r1 is gone: it is placed afresh, on the emptier worker.
        self.open_peer(p1, "r2x", "e")
        self.assertEqual(self.engine._rooms.keys(), {"r2", "r3", "r2x"})

    def test_recording_keeps_its_room(self) -> None:
        p1, p2 = self.start()
        self.open_peer(p1, "r1", "a")
        d = self.engine.start_recording("r1", "rec", "/tmp/x")
        p1.reply(p1.requests()[0])
        self.successResultOf(d)
        d = self.engine.close_peer("a")
        p1.reply(p1.requests()[0])
        self.open_peer(p1, "r2", "b")  # a tie: the first worker
        self.open_peer(p1, "r1", "c")  # r1 still lives on p1, for its recording

    def test_unknown_peers_fail_without_round_trip(self) -> None:
        p1, p2 = self.start()
        for d in [self.engine.add_candidate("x", None), self.engine.renegotiate("x", []),
                  self.engine.apply_answer("x", "a"), self.engine.request_keyframe("x")]:
            f = self.failureResultOf(d, PeerNotFound)
            self.assertEqual(f.value.peer_id, "x")
        self.assertIsNone(self.successResultOf(self.engine.close_peer("x")))
        self.assertEqual(p1.requests() + p2.requests(), [])

    def test_duplicate_peer_refused(self) -> None:
        p1, _ = self.start()
        self.open_peer(p1, "r1", "a")
        self.failureResultOf(self.engine.open_peer("r2", "a", "o"), InvalidInput)

    def test_failed_open_forgets_peer(self) -> None:
        p1, _ = self.start()
        d = self.engine.open_peer("r1", "a", "o")
        p1.fail(p1.requests()[0], "invalid", "bad sdp")
        self.failureResultOf(d, InvalidInput)
        self.failureResultOf(self.engine.request_keyframe("a"), PeerNotFound)
        self.assertEqual(self.engine._rooms, {})
        self.assertEqual(p1.requests(), [])  # refused: nothing to close
        d = self.engine.open_peer("r1", "a", "o")
        p1.fail(p1.requests()[0], "internal", "crashed half way")
        self.failureResultOf(d, InternalError)
        self.assertEqual([r["op"] for r in p1.requests()], ["close_peer"])


class SupervisionTests(EngineTestBase):
    workers = 2

    def test_death_fails_pending_reports_lost_and_restarts(self) -> None:
        p1, p2 = self.start()
        self.open_peer(p1, "r1", "a")
        self.open_peer(p2, "r2", "b")
        self.open_peer(p1, "r3", "c")
        d = self.engine.renegotiate("a", [])
        d2 = self.engine.start_recording("r1", "rec", "/tmp/x")
        p1.requests()
        p1.exit(code=None, signal=11)
        self.failureResultOf(d, Unavailable)
        self.failureResultOf(d2, Unavailable)
        self.assertEqual(self.listener.calls, [("engine_lost", ["r1", "r3"])])
        self.failureResultOf(self.engine.request_keyframe("a"), PeerNotFound)
        self.failureResultOf(self.engine.request_keyframe("c"), PeerNotFound)
        self.assertEqual(p1.signals, [])  # it was gone already
        # The other worker goes on.
        dk = self.engine.request_keyframe("b")
        p2.reply(p2.requests()[0])
        self.successResultOf(dk)
        # New rooms go to the worker that is up.
        self.open_peer(p2, "r4", "e")
        # Restart after the back-off.
        self.reactor.advance(0.99)
        self.assertEqual(len(self.reactor.processes), 2)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.processes), 3)
        p3 = self.reactor.processes[2]
        p3.come_up()
        d = self.engine.stats()
        for p in (p2, p3):
            p.reply(p.requests()[0], {"peers": 1, "packets": 5})
        stats = self.successResultOf(d)
        self.assertEqual((stats["workers"], stats["restarts"], stats["peers"], stats["packets"]), (2, 1, 2, 10))

    def test_recordings_on_a_dead_worker_fail(self) -> None:
        p1, _ = self.start()
        self.open_peer(p1, "r1", "a")
        d = self.engine.start_recording("r1", "rec", "/tmp/x")
        p1.reply(p1.requests()[0])
        self.successResultOf(d)
        p1.exit(code=1)
        self.assertEqual(self.listener.calls, [("recording_failed", "rec", "media worker gone"),
                                               ("engine_lost", ["r1"])])
        self.failureResultOf(self.engine.stop_recording("rec"), InvalidInput)

    def test_events_of_old_incarnation_ignored(self) -> None:
        p1, _ = self.start()
        self.open_peer(p1, "r1", "a")
        p1.feed(b'{"id": 99999, "result": {}}\n')  # unknown id: ignored
        p1.exit(code=1)
        self.listener.calls.clear()
        p1.send({"event": "gathering_complete", "peer_id": "a"})
        self.assertEqual(self.listener.calls, [])

    def test_backoff_grows_capped_and_resets_after_stable_run(self) -> None:
        self.engine = self.make_engine(workers=1)
        (p,) = self.start()
        delays = []
        for _ in range(5):
            before = self.reactor.seconds()
            self.reactor.processes[-1].exit(code=1)
            count = len(self.reactor.processes)
            while len(self.reactor.processes) == count:
                self.reactor.advance(0.5)
            delays.append(self.reactor.seconds() - before)
            self.reactor.processes[-1].come_up()
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 8.0])
        self.reactor.advance(60)  # a stable run
        self.reactor.processes[-1].exit(code=1)
        self.assertEqual([c.getTime() - self.reactor.seconds() for c in self.reactor.getDelayedCalls()], [1.0])

    def test_not_ready_in_time_is_killed_and_restarted(self) -> None:
        self.engine = self.make_engine(workers=1)
        (p,) = self.start(up=False)
        p.requests()
        p.send({"event": "ready", "pid": 1, "aiortc": "x"})  # but configure never answered
        self.reactor.advance(29.9)
        self.assertEqual(p.signals, [])
        self.reactor.advance(0.1)
        self.assertIn("KILL", p.signals)
        p.exit(code=None, signal=9)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_configure_error_restarts(self) -> None:
        self.engine = self.make_engine(workers=1)
        (p,) = self.start(up=False)
        (configure,) = p.requests()
        p.fail(configure, "invalid", "bad udp range")
        self.assertEqual(p.signals, ["KILL"])

    def test_requests_wait_for_a_starting_worker(self) -> None:
        self.engine = self.make_engine(workers=1)
        (p,) = self.start(up=False)
        d = self.engine.open_peer("r1", "a", "o")
        dc = self.engine.add_candidate("a", None)
        self.assertEqual([r["op"] for r in p.requests()], ["configure"])
        self.reactor.advance(5)
        p.send({"event": "ready", "pid": 1, "aiortc": "x"})
        p.reply({"id": 1})
        opened, candidate = p.requests()
        self.assertEqual((opened["op"], candidate["op"]), ("open_peer", "add_candidate"))
        p.reply(opened, {"answer_sdp": "ans"})
        p.reply(candidate)
        self.assertEqual(self.successResultOf(d), "ans")
        self.successResultOf(dc)

    def test_death_while_starting_fails_waiting_requests(self) -> None:
        self.engine = self.make_engine(workers=1)
        (p,) = self.start(up=False)
        d = self.engine.open_peer("r1", "a", "o")
        p.exit(code=1)
        self.failureResultOf(d, Unavailable)
        self.assertEqual(self.listener.calls, [("engine_lost", ["r1"])])
        self.reactor.advance(1)
        self.reactor.processes[-1].come_up()
        self.assertEqual(self.reactor.processes[-1].requests(), [])  # nothing sent for the lost peer
        self.failureResultOf(self.engine.request_keyframe("a"), PeerNotFound)

    def test_ready_twice_is_harmless(self) -> None:
        (p1, _) = self.start()
        self.reactor.advance(30)
        p1.send({"event": "ready", "pid": 1, "aiortc": "x"})
        self.assertEqual(self.engine._slots[0].usable_since, 0)  # the stable-run clock is not reset
        self.open_peer(p1, "r1", "a")

    def test_wait_for_starting_worker_bounded(self) -> None:
        self.engine = self.make_engine(workers=1, start_wait=3.0)
        (p,) = self.start(up=False)
        d = self.engine.open_peer("r1", "a", "o")
        self.reactor.advance(3)
        self.failureResultOf(d, Unavailable)
        self.failureResultOf(self.engine.request_keyframe("a"), PeerNotFound)
        p.come_up()
        self.assertEqual(p.requests(), [])

    def test_close_while_opening_is_sent_after_open(self) -> None:
        self.engine = self.make_engine(workers=1)
        (p,) = self.start(up=False)
        d = self.engine.open_peer("r1", "a", "o")
        dc = self.engine.close_peer("a")
        p.come_up()
        opened, closed = p.requests()
        self.assertEqual((opened["op"], closed["op"]), ("open_peer", "close_peer"))
        p.reply(opened, {"answer_sdp": "x"})
        p.reply(closed)
        self.successResultOf(d)
        self.successResultOf(dc)
        self.assertEqual(self.engine._rooms, {})

    def test_stdin_backlog_kills_worker(self) -> None:
        self.engine = self.make_engine(workers=1, stdin_limit=1000)
        (p,) = self.start()
        self.open_peer(p, "r1", "a")
        p.protocol.pauseProducing()  # the pipe to the worker is full
        ds = [self.engine.apply_answer("a", "x" * 250) for _ in range(3)]
        self.assertEqual(p.signals, [])
        for d in ds:
            self.assertNoResult(d)
        d = self.engine.apply_answer("a", "x" * 300)
        self.assertEqual(p.signals, ["KILL"])
        for d in ds + [d]:
            self.failureResultOf(d, Unavailable)
        self.assertEqual(self.listener.calls, [("engine_lost", ["r1"])])

    def test_stdin_drained_resets_backlog(self) -> None:
        self.engine = self.make_engine(workers=1, stdin_limit=1000)
        (p,) = self.start()
        self.open_peer(p, "r1", "a")
        for _ in range(5):
            p.protocol.pauseProducing()
            self.engine.apply_answer("a", "x" * 300)
            self.engine.apply_answer("a", "x" * 300)
            p.protocol.resumeProducing()
        self.assertEqual(p.signals, [])

    def test_spawn_failure_retried(self) -> None:
        calls = []

        def broken(*a, **kw):
            calls.append(a)
            raise OSError("no such file")

        self.reactor.spawnProcess = broken
        self.engine = self.make_engine(workers=1)
        self.engine.start(self.listener)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.reactor.advance(1.0)
        self.assertEqual(len(calls), 2)
        self.flushLoggedErrors(OSError)
        d = self.engine.open_peer("r", "a", "o")
        self.reactor.advance(10)
        self.failureResultOf(d, Unavailable)
        self.flushLoggedErrors(OSError)


class StopTests(EngineTestBase):
    workers = 2

    def test_stop_sends_shutdown_and_waits_for_exits(self) -> None:
        p1, p2 = self.start()
        self.open_peer(p1, "r1", "a")
        d = self.engine.stop()
        for p in (p1, p2):
            (shutdown,) = p.requests()
            self.assertEqual(shutdown["op"], "shutdown")
        self.failureResultOf(self.engine.open_peer("r2", "b", "o"), Unavailable)
        p1.reply({"id": 3})
        p1.exit(0)
        self.assertNoResult(d)
        p2.exit(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.listener.calls, [])  # no engine_lost: we asked
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 2)  # no restart
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.successResultOf(self.engine.stop()))

    def test_a_worker_still_starting_is_sent_sigterm_at_once(self) -> None:
        # It holds nothing to finish, and would read shutdown only once aiortc is imported.
        p1, p2 = self.start(up=False)
        p2.come_up()
        d = self.engine.stop()
        self.assertEqual((p1.signals, p2.signals), (["TERM"], []))
        p1.exit(code=None, signal=15)
        p2.exit(0)
        self.successResultOf(d)

    def test_stop_terms_then_kills(self) -> None:
        p1, p2 = self.start()
        d = self.engine.stop()
        p2.exit(0)
        self.reactor.advance(9.9)
        self.assertEqual(p1.signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(p1.signals, ["TERM"])
        self.reactor.advance(5)
        self.assertEqual(p1.signals, ["TERM", "KILL"])
        self.assertNoResult(d)
        p1.exit(code=None, signal=9)
        self.successResultOf(d)

    def test_stop_during_backoff_and_before_start(self) -> None:
        engine = self.make_engine()
        self.successResultOf(engine.stop())
        p1, p2 = self.start()
        p1.exit(1)
        d = self.engine.stop()
        p2.exit(0)
        self.successResultOf(d)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_stop_fails_waiting_requests(self) -> None:
        p1, p2 = self.start(up=False)
        d = self.engine.open_peer("r", "a", "o")
        self.engine.stop()
        self.failureResultOf(d, Unavailable)

    def test_service(self) -> None:
        svc = WorkerEngineService(self.engine, self.listener)
        verifyObject(IService, svc)
        svc.startService()
        self.assertEqual(len(self.reactor.processes), 2)
        d = svc.stopService()
        self.assertNoResult(d)
        for p in self.reactor.processes:
            p.exit(0)
        self.successResultOf(d)


class RealProcessTests(TestCase):
    """One test with a real child process: the pipes and the framing, for real."""

    timeout = 60

    async def test_fake_worker_through_real_reactor(self) -> None:
        from twisted.internet import reactor

        script = os.path.join(os.path.dirname(__file__), "fake_worker.py")
        listener = RecordingListener()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        engine = WorkerEngine(reactor, command=[sys.executable, script], workers=1,
                              request_timeout=20.0, ready_timeout=20.0)
        engine.start(listener)
        self.addCleanup(engine.stop)
        # ~500 KB each way: more than a pipe holds, so the stdin producer is paused and resumed for real.
        answer = await engine.open_peer("room", "peer1", "v=0\r\n" + "a=x\r\n" * 100_000)
        self.assertEqual(len(answer), len("v=0\r\na=x-pad:\r\n") + 300_000)
        # Events written before the reply arrived before it.
        self.assertEqual([c[0] for c in listener.calls], ["candidate", "gathering_complete"])
        self.assertEqual(listener.calls[0][2]["sdpMLineIndex"], 0)
        with self.assertRaises(InvalidInput):
            await engine.start_recording("room", "rec", "/nonexistent")
        stats = await engine.stats()
        self.assertEqual((stats["peers"], stats["packets"], stats["workers"]), (1, 7, 1))
        await engine.close_peer("peer1")
        await engine.stop()
        self.assertEqual(listener.calls[2:], [])
        # Its stderr reached the log, and its exit on shutdown scheduled no restart.
        self.assertIn("fake worker starting", [e.get("line") for e in events])
        self.assertEqual([e for e in events if "restart in" in e["log_format"]], [])
