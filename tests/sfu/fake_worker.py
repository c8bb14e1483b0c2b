"""
A stand-in SFU worker with canned answers, for the one engine test with a real child process.

Plain Python (no aiortc, no Twisted), speaking the wire protocol of
wecompany/sfu/worker.py on stdin/stdout: enough to prove the pipes, the
framing (a reply far larger than one pipe read) and the shutdown for real.
"""

import json
import os
import sys


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main():
    print("fake worker starting", file=sys.stderr, flush=True)
    send({"event": "ready", "pid": os.getpid(), "aiortc": "fake"})
    peers = set()
    for line in sys.stdin:
        request = json.loads(line)
        op, args, rid = request["op"], request["args"], request["id"]
        if op == "configure":
            send({"id": rid, "result": {}})
        elif op == "open_peer":
            peers.add(args["peer_id"])
            send({"event": "candidate", "peer_id": args["peer_id"],
                  "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 40000 typ host",
                                "sdpMid": "0", "sdpMLineIndex": 0}})
            send({"event": "gathering_complete", "peer_id": args["peer_id"]})
            # An answer of ~300 KB: many pipe reads on the daemon's side.
            send({"id": rid, "result": {"answer_sdp": "v=0\r\n" + "a=x-pad:" + "y" * 300_000 + "\r\n"}})
        elif op == "close_peer":
            peers.discard(args["peer_id"])
            send({"id": rid, "result": {}})
        elif op == "stats":
            send({"id": rid, "result": {"peers": len(peers), "connected": 0, "streams_in": 0,
                                        "streams_out": 0, "packets": 7, "bytes": 70}})
        elif op == "shutdown":
            send({"id": rid, "result": {}})
            return 0
        elif args.get("peer_id") is not None and args["peer_id"] not in peers:
            send({"id": rid, "error": {"kind": "peer_not_found", "message": "no such peer"}})
        else:
            send({"id": rid, "error": {"kind": "invalid", "message": f"fake worker has no {op}"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
