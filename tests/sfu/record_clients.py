"""
Recordings through a real SFU worker, with three aiortc publishers on loopback.

Run by tests/sfu/test_worker.py as its own process (like sfu_clients.py,
whose clients and worker driver it uses):

    python record_clients.py DIRECTORY [SECONDS]

Publishers a, b (H.264) and c (VP8), each with a sine tone and 640x360
30 fps video, connect to one room (nobody subscribes: the recording is the
only consumer). It measures the worker's CPU without a recording, then
records SECONDS (default 10) and measures it again with the same streams;
decodes the file with PyAV (duration and frame rate per publisher and kind;
in a thread, so the clients keep sending on time);
records again while c leaves half-way; asks for an unwritable path; and
finally starts a recording and SIGTERMs the worker, then decodes that file.

Prints one JSON object; exits 0 when every check passed, else 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import time

import av
from aiortc import RTCSessionDescription

sys.path.insert(0, os.path.dirname(__file__))
from sfu_clients import FPS, Client, Worker, encode_clip  # noqa: E402


def decode(path: str) -> dict:
    """'peer kind' -> {frames, seconds (first to last frame), rate} for each stream of the file."""
    found: dict = {}
    with av.open(path) as container:
        titles = {s.index: s.metadata.get("title", str(s.index)) for s in container.streams}
        for packet in container.demux():
            for frame in packet.decode():
                entry = found.setdefault(titles[packet.stream.index], {"frames": 0, "first": None, "last": None})
                entry["frames"] += 1
                t = float(frame.time)
                entry["first"] = t if entry["first"] is None else min(entry["first"], t)
                entry["last"] = t if entry["last"] is None else max(entry["last"], t)
    for entry in found.values():
        entry["seconds"] = round(entry["last"] - entry["first"], 2)
        entry["rate"] = round(entry["frames"] / max(entry["seconds"], 1e-3), 1)
        entry["first"], entry["last"] = round(entry["first"], 2), round(entry["last"], 2)
    return found


async def cpu_percent(worker: Worker, seconds: float) -> float:
    cpu, wall = worker.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return round(100 * (worker.cpu_seconds() - cpu) / (time.monotonic() - wall), 2)


async def run(directory: str, seconds: float) -> dict:
    failures: list[str] = []
    result: dict = {"failures": failures}
    clips = {"h264": encode_clip("libx264"), "vp8": encode_clip("libvpx")}
    worker = Worker()
    await worker.start()
    await worker.wait_event(lambda e: e["event"] == "ready")
    await worker.call("configure", host_addresses=["127.0.0.1"], public_address=None, udp_ports=None,
                      ice_servers=[], max_peers=10)
    clients = [Client("a", "h264", clips), Client("b", "h264", clips), Client("c", "vp8", clips)]
    for client in clients:
        answer = (await worker.call("open_peer", room="room-1", peer_id=client.peer_id,
                                    offer_sdp=await client.offer()))["answer_sdp"]
        await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    for client in clients:
        for kind in ("audio", "video"):
            await worker.wait_event(lambda e, p=client.peer_id, k=kind: e["event"] == "track_added"
                                    and e["peer_id"] == p and e["kind"] == k)
    await asyncio.sleep(1.0)

    def check_streams(name: str, streams: dict, expected: dict) -> None:
        """expected: 'peer kind' -> seconds of media."""
        if sorted(streams) != sorted(expected):
            failures.append(f"{name}: streams {sorted(streams)} != {sorted(expected)}")
        for title, want in expected.items():
            got = streams.get(title)
            if got is None:
                continue
            if abs(got["seconds"] - want) > 1.0:
                failures.append(f"{name}: {title} has {got['seconds']} s, expected about {want}")
            rate = FPS if title.endswith("video") else 50
            if got["rate"] < 0.8 * rate:
                failures.append(f"{name}: {title} decodes {got['rate']} frames/s, sent {rate}")

    everyone = {f"{c.peer_id} {k}": seconds for c in clients for k in ("audio", "video")}

    # 1. CPU without and with a recording of the same streams; the file decodes.
    result["cpu_percent_without_recording"] = await cpu_percent(worker, 5.0)
    path = os.path.join(directory, "rec-1.mkv")
    await worker.call("start_recording", room="room-1", recording_id="rec-1", path=path)
    started = time.monotonic()
    await asyncio.sleep(1.0)
    result["cpu_percent_with_recording"] = await cpu_percent(worker, seconds - 2.0)
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stop = time.monotonic()
    stopped = await worker.call("stop_recording", recording_id="rec-1")
    result["stop_seconds"] = round(time.monotonic() - stop, 3)
    result["recording"] = stopped
    result["mode"] = oct(stat.S_IMODE(os.stat(path).st_mode))
    if result["mode"] != "0o600":
        failures.append(f"rec-1 mode {result['mode']}")
    if stopped["size"] != os.path.getsize(path):
        failures.append("rec-1 size differs from the file's")
    if sorted((t["peer_id"], t["kind"]) for t in stopped["tracks"]) != sorted(
            (c.peer_id, k) for c in clients for k in ("audio", "video")):
        failures.append(f"rec-1 tracks {stopped['tracks']}")
    result["decoded"] = await asyncio.to_thread(decode, path)
    check_streams("rec-1", result["decoded"], everyone)

    # 2. c leaves half-way: its streams end, the recording goes on.
    a, b, c = clients
    path = os.path.join(directory, "rec-2.mkv")
    await worker.call("start_recording", room="room-1", recording_id="rec-2", path=path)
    await asyncio.sleep(3.0)
    await worker.call("close_peer", peer_id=c.peer_id)
    await c.pc.close()
    await asyncio.sleep(3.0)
    result["recording_after_leave"] = await worker.call("stop_recording", recording_id="rec-2")
    result["decoded_after_leave"] = await asyncio.to_thread(decode, path)
    check_streams("rec-2", result["decoded_after_leave"], {
        **{f"{x.peer_id} {k}": 6.0 for x in (a, b) for k in ("audio", "video")},
        **{f"{c.peer_id} {k}": 3.0 for k in ("audio", "video")}})

    # 3. A path the worker cannot write.
    reply = await worker.request("start_recording", room="room-1", recording_id="rec-bad",
                                 path=os.path.join(directory, "no", "such", "dir.mkv"))
    result["unwritable"] = reply.get("error")
    if not reply.get("error") or reply["error"]["kind"] != "invalid":
        failures.append(f"unwritable path: {reply}")

    # 4. SIGTERM mid-recording: the worker finishes the file and exits 0.
    path = os.path.join(directory, "rec-3.mkv")
    await worker.call("start_recording", room="room-1", recording_id="rec-3", path=path)
    await asyncio.sleep(4.0)
    worker.process.send_signal(signal.SIGTERM)
    result["exit_code_on_sigterm"] = await asyncio.wait_for(worker.process.wait(), 30)
    if result["exit_code_on_sigterm"] != 0:
        failures.append(f"worker exited {result['exit_code_on_sigterm']} on SIGTERM")
    try:
        result["decoded_after_sigterm"] = await asyncio.to_thread(decode, path)
        check_streams("rec-3", result["decoded_after_sigterm"],
                      {f"{x.peer_id} {k}": 4.0 for x in (a, b) for k in ("audio", "video")})
    except av.FFmpegError as e:
        failures.append(f"rec-3 does not decode: {e!r}")
    for client in (a, b):
        await client.pc.close()
    return result


def main() -> None:
    directory = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    result = asyncio.run(asyncio.wait_for(run(directory, seconds), 240))
    print(json.dumps(result, sort_keys=True))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
