"""--sfu-udp-ports: the worker's host-candidate sockets bound in a range."""

from __future__ import annotations

import asyncio
import errno
import socket

from twisted.trial import unittest

from wecompany.sfu.ports import PortRange


def free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive UDP ports on 127.0.0.1 free now (checked by binding each)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base, base + size - 1
    raise RuntimeError("no free range of UDP ports")


class PortRangeTests(unittest.TestCase):
    def test_binds_to_port_0_take_the_range_until_it_is_full(self) -> None:
        low, high = free_range(3)

        async def run():
            loop = asyncio.get_running_loop()
            ports = PortRange(low, high, choose=lambda n: 1)
            ports.install(loop)
            ports.install(loop)  # once only: not wrapped twice
            transports = []
            try:
                for _ in range(3):
                    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                                       local_addr=("127.0.0.1", 0))
                    transports.append(transport)
                bound = [t.get_extra_info("sockname")[1] for t in transports]
                with self.assertRaises(OSError) as caught:
                    await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
                # A socket to a remote address (a TURN client's) is not held to the range.
                outgoing, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                                  remote_addr=("127.0.0.1", 9))
                transports.append(outgoing)
                return bound, caught.exception, outgoing.get_extra_info("sockname")[1], ports.exhausted
            finally:
                for t in transports:
                    t.close()

        bound, error, outgoing_port, exhausted = asyncio.run(run())
        self.assertEqual(bound, [low + 1, low + 2, low])  # from the chosen start, wrapping round
        self.assertEqual(error.errno, errno.EADDRINUSE)
        self.assertIn(f"{low}-{high}", str(error))
        self.assertFalse(low <= outgoing_port <= high)
        self.assertEqual(exhausted, 1)

    def test_bad_ranges(self) -> None:
        for low, high in ((0, 10), (10, 5), (1, 70000)):
            self.assertRaises(ValueError, PortRange, low, high)


class WorkerPortsTests(unittest.TestCase):
    def test_the_answer_candidates_are_in_the_range(self) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        from wecompany.sfu.forwarding import Forwarder

        low, high = free_range(8)

        async def run():
            forwarder = Forwarder(lambda message: None)
            await forwarder.configure(["127.0.0.1"], udp_ports=[low, high])
            client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                client.addTransceiver("audio", direction="sendrecv")
                client.addTransceiver("video", direction="sendrecv")
                await client.setLocalDescription(await client.createOffer())
                answer = await forwarder.open_peer("room", "peer-1", client.localDescription.sdp)
                return answer["answer_sdp"]
            finally:
                await client.close()
                await forwarder.close()

        sdp = asyncio.run(run())
        ports = [int(line.split()[5]) for line in sdp.splitlines() if line.startswith("a=candidate:")]
        self.assertTrue(ports, sdp)
        for port in ports:
            self.assertTrue(low <= port <= high, (port, low, high))
