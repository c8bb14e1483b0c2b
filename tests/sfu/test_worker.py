"""
The SFU worker: framing and op dispatch (no sockets, no process), and three
real aiortc peers forwarded by a real worker process on loopback
(sfu_clients.py, run as its own process: aiortc is asyncio, trial is Twisted).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from wecompany.sfu import worker
from wecompany.sfu.forwarding import Forwarder

CLIENTS = os.path.join(os.path.dirname(__file__), "sfu_clients.py")
RECORD_CLIENTS = os.path.join(os.path.dirname(__file__), "record_clients.py")


def dispatch(*lines: bytes, forwarder_setup=None) -> list[dict]:
    """Feed ``lines`` to a Dispatcher on a fresh asyncio loop; -> what it wrote."""
    written: list[dict] = []

    async def run() -> None:
        forwarder = Forwarder(written.append)
        if forwarder_setup:
            forwarder_setup(forwarder)
        dispatcher = worker.Dispatcher(forwarder, written.append, lambda: written.append({"shutdown": True}))
        for line in lines:
            dispatcher.handle_line(line)
        await dispatcher.drain()

    asyncio.run(run())
    return written


class FramingTests(unittest.TestCase):
    def test_encode_is_one_line(self) -> None:
        data = worker.encode({"id": 1, "result": {"answer_sdp": "v=0\r\nm=audio\r\n"}})
        self.assertEqual(data.count(b"\n"), 1)
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(json.loads(data)["result"]["answer_sdp"], "v=0\r\nm=audio\r\n")

    def test_malformed_json(self) -> None:
        self.assertEqual(dispatch(b'{"id": 1, "op":'), [
            {"id": None, "error": {"kind": "invalid", "message": dispatch(b'{"id": 1, "op":')[0]["error"]["message"]}}])
        self.assertIn("malformed JSON", dispatch(b"\xff\xfe")[0]["error"]["message"])

    def test_not_an_object_or_no_id(self) -> None:
        self.assertEqual(dispatch(b"[1, 2]")[0]["error"]["kind"], "invalid")
        self.assertEqual(dispatch(b'{"op": "stats"}')[0], {"id": None, "error": {
            "kind": "invalid", "message": "id must be an integer"}})
        self.assertEqual(dispatch(b'{"id": true, "op": "stats"}')[0]["error"]["kind"], "invalid")

    def test_blank_lines_are_ignored(self) -> None:
        self.assertEqual(dispatch(b"", b"   "), [])


class DispatchTests(unittest.TestCase):
    def test_unknown_op(self) -> None:
        self.assertEqual(dispatch(b'{"id": 3, "op": "frobnicate", "args": {}}'), [
            {"id": 3, "error": {"kind": "invalid", "message": "unknown op: 'frobnicate'"}}])

    def test_args_must_be_an_object_with_the_right_names(self) -> None:
        self.assertEqual(dispatch(b'{"id": 4, "op": "stats", "args": []}')[0]["error"]["kind"], "invalid")
        reply = dispatch(b'{"id": 5, "op": "close_peer", "args": {"peer": "x"}}')[0]
        self.assertEqual(reply["id"], 5)
        self.assertEqual(reply["error"]["kind"], "invalid")
        self.assertIn("bad args for close_peer", reply["error"]["message"])

    def test_unknown_peer(self) -> None:
        for op, args in (("renegotiate", {"peer_id": "p1", "streams": []}),
                         ("apply_answer", {"peer_id": "p1", "answer_sdp": "v=0"}),
                         ("add_candidate", {"peer_id": "p1", "candidate": None}),
                         ("request_keyframe", {"peer_id": "p1"})):
            reply = dispatch(json.dumps({"id": 6, "op": op, "args": args}).encode())[0]
            self.assertEqual(reply, {"id": 6, "error": {"kind": "peer_not_found", "message": "peer not found: p1"}}, op)

    def test_a_peer_whose_connection_closed_here_is_not_found(self) -> None:
        """Closed in the worker (it failed or ended) before the daemon heard: gone, not an engine fault."""
        from types import SimpleNamespace

        def closed_peer(forwarder) -> None:
            forwarder.peers["p1"] = SimpleNamespace(pc=SimpleNamespace(signalingState="closed"))

        for op, args in (("renegotiate", {"peer_id": "p1", "streams": []}),
                         ("apply_answer", {"peer_id": "p1", "answer_sdp": "v=0"}),
                         ("request_keyframe", {"peer_id": "p1"})):
            reply = dispatch(json.dumps({"id": 6, "op": op, "args": args}).encode(), forwarder_setup=closed_peer)[0]
            self.assertEqual(reply, {"id": 6, "error": {"kind": "peer_not_found", "message": "peer not found: p1"}}, op)

    def test_close_unknown_peer_is_fine(self) -> None:
        self.assertEqual(dispatch(b'{"id": 7, "op": "close_peer", "args": {"peer_id": "p1"}}'), [
            {"id": 7, "result": {}}])

    def test_open_peer_before_configure(self) -> None:
        reply = dispatch(b'{"id": 8, "op": "open_peer", "args": {"room": "r", "peer_id": "p", "offer_sdp": "v=0"}}')[0]
        self.assertEqual(reply["error"], {"kind": "invalid", "message": "configure first"})

    def test_bad_offer_is_invalid_not_a_crash(self) -> None:
        def configured(forwarder: Forwarder) -> None:
            forwarder.configured = True
        for sdp in ("v=0", "garbage", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF x\r\n"):
            line = json.dumps({"id": 9, "op": "open_peer", "args": {"room": "r", "peer_id": "p", "offer_sdp": sdp}})
            reply = dispatch(line.encode(), forwarder_setup=configured)[0]
            self.assertEqual(reply["id"], 9)
            self.assertEqual(reply["error"]["kind"], "invalid", sdp)

    def test_configure_validates(self) -> None:
        reply = dispatch(b'{"id": 10, "op": "configure", "args": {"host_addresses": "127.0.0.1"}}')[0]
        self.assertEqual(reply["error"]["kind"], "invalid")

    def test_stats_and_shutdown(self) -> None:
        written = dispatch(b'{"id": 11, "op": "stats"}', b'{"id": 12, "op": "shutdown", "args": {}}')
        self.assertIn({"id": 11, "result": {"peers": 0, "connected": 0, "streams_in": 0, "streams_out": 0,
                                            "packets": 0, "bytes": 0}}, written)
        self.assertEqual(written[-2:], [{"id": 12, "result": {}}, {"shutdown": True}])

    def test_recording_ops(self) -> None:
        reply = dispatch(b'{"id": 13, "op": "stop_recording", "args": {"recording_id": "r"}}')[0]
        self.assertEqual(reply, {"id": 13, "error": {"kind": "invalid", "message": "recording not found: r"}})
        line = json.dumps({"id": 14, "op": "start_recording",
                           "args": {"room": "x", "recording_id": "r", "path": "/nonexistent/dir/r.mkv"}})
        reply = dispatch(line.encode())[0]
        self.assertEqual(reply["error"]["kind"], "invalid")
        self.assertIn("cannot write the recording", reply["error"]["message"])

    def test_too_many_in_flight_is_busy(self) -> None:
        written: list[dict] = []

        async def run() -> None:
            dispatcher = worker.Dispatcher(Forwarder(written.append), written.append, lambda: None)
            dispatcher.in_flight = worker.MAX_IN_FLIGHT
            dispatcher.handle_line(b'{"id": 14, "op": "stats"}')

        asyncio.run(run())
        self.assertEqual(written, [{"id": 14, "error": {"kind": "busy", "message": "too many requests in flight"}}])


class FakeWriteTransport:
    def __init__(self) -> None:
        self.buffered = 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered


class OutputTests(unittest.TestCase):
    def test_a_daemon_that_stops_reading_ends_the_worker(self) -> None:
        overflows = []
        transport = FakeWriteTransport()
        output = worker.Output(transport, lambda: overflows.append(True))
        message = {"event": "candidate", "peer_id": "p", "pad": "x" * 65536}
        for _ in range(worker.MAX_OUTPUT_BUFFER // 65536 + 10):
            output.write(message)
        self.assertEqual(overflows, [True])
        self.assertLess(transport.buffered, worker.MAX_OUTPUT_BUFFER + 2 * 65536)


class WorkerProcessTests(unittest.TestCase):
    timeout = 240

    async def test_three_peers_forwarded(self) -> None:
        out, err, status = await getProcessOutputAndValue(sys.executable, [CLIENTS, "5"], env=os.environ)
        report = out.decode() + err.decode()[-4000:]
        self.assertEqual(status, 0, report)
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(result["failures"], [])
        self.assertEqual(result["forwarded_streams"], 12)
        self.assertEqual(len(result["rates_per_second"]), 12)
        for name, rate in result["rates_per_second"].items():
            self.assertGreaterEqual(rate, 24 if name.endswith(":video") else 40, name)
        self.assertEqual((result["malformed"], result["unknown_op"], result["unknown_peer"]),
                         ("invalid", "invalid", "peer_not_found"))
        self.assertTrue(result["after_leave_ok"])
        self.assertEqual(result["exit_code"], 0)
        self.assertEqual(result["stats"]["streams_out"], 12)

    async def test_recordings(self) -> None:
        directory = tempfile.mkdtemp()
        out, err, status = await getProcessOutputAndValue(
            sys.executable, [RECORD_CLIENTS, directory, "10"], env=os.environ)
        report = out.decode() + err.decode()[-4000:]
        self.assertEqual(status, 0, report)
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(result["failures"], [])
        # About 10 s of audio and video of each of the three publishers, at the rates sent.
        decoded = result["decoded"]
        self.assertEqual(len(decoded), 6, report)
        for title, stream in decoded.items():
            self.assertLessEqual(abs(stream["last"] - 10.0), 1.0, title)
            self.assertGreaterEqual(stream["seconds"], 8.5, title)  # video from the first keyframe
            self.assertGreaterEqual(stream["rate"], 24 if title.endswith("video") else 40, title)
        self.assertEqual(result["recording"]["dropped"], 0)
        self.assertEqual(len(result["recording"]["tracks"]), 6)
        self.assertEqual(result["mode"], "0o600")
        # c left half-way: its streams are shorter, the others go on.
        after_leave = result["decoded_after_leave"]
        self.assertLess(after_leave["sfu-c audio"]["last"], 4.5)
        self.assertGreater(after_leave["sfu-a audio"]["last"], 5.5)
        self.assertEqual(result["unwritable"]["kind"], "invalid")
        self.assertEqual(result["exit_code_on_sigterm"], 0)
        self.assertEqual(len(result["decoded_after_sigterm"]), 4)
