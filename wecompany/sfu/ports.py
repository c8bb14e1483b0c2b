"""
``--sfu-udp-ports LOW-HIGH``: the media worker's UDP sockets bound in a range.

aioice (aiortc's ICE) binds each host candidate's socket with the event
loop's ``create_datagram_endpoint(..., local_addr=(address, 0))``, and has no
option for a port range. The worker owns its event loop, so it wraps that
loop's method (asyncio's public API, on our own loop object; nothing of
aioice is touched): a bind to port 0 takes a free port of the range instead,
starting at a random one, so firewalls can be opened for the range alone.
Binds to a given port, and sockets made with a remote address (a TURN
client's), are left as they are.
"""

from __future__ import annotations

import errno
import random


class PortRange:
    """Ports ``low`` to ``high`` (both included) for the loop's datagram endpoints bound to port 0."""

    def __init__(self, low: int, high: int, choose=random.randrange) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"not a port range: {low}-{high}")
        self.low, self.high = low, high
        self._choose = choose
        self.exhausted = 0  # binds that found the range full

    def install(self, loop) -> None:
        """Wrap ``loop.create_datagram_endpoint`` (once per loop)."""
        original = loop.create_datagram_endpoint
        if getattr(original, "__wecompany_port_range__", None) is not None:
            original = original.__wecompany_port_range__

        async def create_datagram_endpoint(protocol_factory, local_addr=None, remote_addr=None, **kwargs):
            if local_addr is None or remote_addr is not None or local_addr[1] != 0:
                return await original(protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs)
            host = local_addr[0]
            count = self.high - self.low + 1
            start = self._choose(count)
            for step in range(count):
                port = self.low + (start + step) % count
                try:
                    return await original(protocol_factory, local_addr=(host, port), **kwargs)
                except OSError as error:
                    if error.errno != errno.EADDRINUSE:
                        raise
            self.exhausted += 1
            raise OSError(errno.EADDRINUSE, f"no free UDP port in {self.low}-{self.high} on {host}")

        create_datagram_endpoint.__wecompany_port_range__ = original
        loop.create_datagram_endpoint = create_datagram_endpoint
