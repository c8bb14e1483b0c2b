"""
Baseline for ``bench/sfu.py``: a pure RTP packet forwarder, one asyncio UDP socket.

What it does, and nothing more: every client sends ``HELLO <room> <index>``
from its UDP socket (answered with ``WELCOME``); from then on each RTP
packet (version 2) that arrives from that address is sent, unchanged, to
every other address of the same room with one ``sendto`` each. ``BYE``
unregisters. No ICE, no DTLS, no RTCP, no NACK/retransmission, no jitter
buffer, no depacketizing or packetizing again, no congestion control, no
queue: the floor of "receive a packet in Python and send it to N-1 people".

With ``--srtp`` it also does what an SFU must do with SRTP: decrypt each
packet once with the publisher's key and encrypt it again with each
subscriber's own key (pylibsrtp, the libsrtp binding aiortc uses, with the
profile aiortc negotiates between aiortc peers, AEAD_AES_256_GCM). Keys are
fixed from the client's index (:func:`srtp_key`) instead of coming from a
DTLS handshake.

Run as its own process (``bench/sfu.py`` starts it):

    python bench/sfu_baseline.py [--port 0] [--srtp]

It prints ``ready PORT`` on stdout once bound to 127.0.0.1 and exits on
SIGTERM or EOF of stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import sys

SRTP_KEY_LENGTH = 32 + 12  # AEAD_AES_256_GCM: master key + salt


def srtp_key(direction: str, index: int) -> bytes:
    """The fixed SRTP master key+salt of client ``index``: "up" (it sends to the forwarder) or "down"."""
    return hashlib.sha512(f"sfu-bench-{direction}-{index}".encode()).digest()[:SRTP_KEY_LENGTH]


def srtp_session(direction: str, index: int, inbound: bool):
    from pylibsrtp import Policy, Session
    policy = Policy(key=srtp_key(direction, index),
                    ssrc_type=Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND,
                    srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM)
    # Loopback never reorders much; the default replay window is fine, but
    # allow_repeat_tx lets the same sequence numbers be reused after a restart.
    policy.allow_repeat_tx = True
    return Session(policy=policy)


class Forwarder(asyncio.DatagramProtocol):
    def __init__(self, srtp: bool) -> None:
        self.srtp = srtp
        self.transport = None
        self.rooms: dict[bytes, list] = {}       # room -> [addr]
        self.targets: dict[tuple, list] = {}     # addr -> [addr of the others]
        self.inbound: dict[tuple, object] = {}   # addr -> its publisher session (--srtp)
        self.outbound: dict[tuple, object] = {}  # addr -> its subscriber session (--srtp)
        self.room_of: dict[tuple, bytes] = {}
        self.forwarded = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        targets = self.targets.get(addr)
        if targets is not None and data and data[0] & 0xC0 == 0x80:
            sendto = self.transport.sendto
            if self.srtp:
                plain = self.inbound[addr].unprotect(data)
                outbound = self.outbound
                for target in targets:
                    sendto(outbound[target].protect(plain), target)
            else:
                for target in targets:
                    sendto(data, target)
            self.forwarded += len(targets)
        elif data.startswith(b"HELLO "):
            _, room, index = data.split(b" ")
            if addr not in self.room_of:
                if self.srtp:
                    self.inbound[addr] = srtp_session("up", int(index), inbound=True)
                    self.outbound[addr] = srtp_session("down", int(index), inbound=False)
                self.room_of[addr] = room
                self.rooms.setdefault(room, []).append(addr)
                self._recompute(room)
            self.transport.sendto(b"WELCOME", addr)
        elif data == b"BYE":
            room = self.room_of.pop(addr, None)
            if room is not None:
                self.rooms[room].remove(addr)
                self.targets.pop(addr, None)
                self.inbound.pop(addr, None)
                self.outbound.pop(addr, None)
                self._recompute(room)

    def _recompute(self, room: bytes) -> None:
        members = self.rooms[room]
        for addr in members:
            self.targets[addr] = [other for other in members if other != addr]


async def main(port: int, srtp: bool) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: Forwarder(srtp), local_addr=("127.0.0.1", port))
    sock = transport.get_extra_info("socket")
    import socket
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: (sys.stdin.buffer.raw.read(4096) or stop.set()))
    print(f"ready {transport.get_extra_info('sockname')[1]}", flush=True)
    await stop.wait()
    transport.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--srtp", action="store_true", help="decrypt once, encrypt per subscriber (pylibsrtp)")
    a = p.parse_args()
    asyncio.run(main(a.port, a.srtp))
