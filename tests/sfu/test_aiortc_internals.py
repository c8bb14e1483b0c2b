"""
Fails when an aiortc or aioice internal that wecompany/sfu/aiortc_internals.py
uses is missing or changes shape: attributes, signatures, the source of the
methods the hooks copy or rely on, and, where cheap, the behaviour itself
(fake transports, no sockets).
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import inspect

import aioice.ice
import aiortc
import aiortc.rtcpeerconnection
import av
from aiortc import MediaStreamTrack, RTCRtpCodecParameters
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpReceiveParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket, RtpPacket
from twisted.trial import unittest

from wecompany.sfu import aiortc_internals

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)

# sha256 of the sources reviewed for aiortc 1.16.0; the tap's receive() is
# RTCRtpReceiver.receive minus the decoder thread, and relies on
# _handle_rtp_packet putting (codec, frame) on __decoder_queue.
SOURCES = {
    (RTCRtpReceiver, "receive"): "d6d8d8d7a0bf4e95f3fb7cb78cf275d0a5f50c4912e0cb8498272008779916ef",
    (RTCRtpReceiver, "_handle_rtp_packet"): "4e54983d021a6336d80c29490f82f9a6dd531c0d3179b2daed818120c5ece238",
}


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


class FakeTransport:
    """What receivers and senders use of an RTCDtlsTransport."""

    state = "connected"
    _stats_id = "transport"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.registered: list = []

    def _register_rtp_receiver(self, receiver, parameters) -> None:
        self.registered.append(receiver)

    def _unregister_rtp_receiver(self, receiver) -> None:
        self.registered.remove(receiver)

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


class PacketTrack(MediaStreamTrack):
    kind = "audio"

    async def recv(self) -> av.Packet:
        packet = av.Packet(b"\x01\x02\x03")
        packet.pts = 960
        packet.time_base = fractions.Fraction(1, 48000)
        return packet


class VersionTests(unittest.TestCase):
    def test_version_is_the_one_tested(self) -> None:
        self.assertEqual(aiortc.__version__, aiortc_internals.TESTED_AIORTC_VERSION)
        self.assertEqual(aiortc_internals.aiortc_version(), "1.16.0")


class HostAddressTests(unittest.TestCase):
    def test_get_host_addresses_is_patchable(self) -> None:
        original = aioice.ice.get_host_addresses
        self.addCleanup(setattr, aioice.ice, "get_host_addresses", original)
        self.assertEqual(parameters(original), ["use_ipv4", "use_ipv6"])
        # Connection.gather_candidates looks it up in the module at each gathering.
        self.assertIn("get_host_addresses(", inspect.getsource(aioice.ice.Connection.gather_candidates))
        aiortc_internals.restrict_host_addresses(["127.0.0.1"])
        self.assertEqual(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False), ["127.0.0.1"])


class ReceiverTests(unittest.TestCase):
    def test_sources_unchanged(self) -> None:
        for (cls, name), digest in SOURCES.items():
            source = inspect.getsource(getattr(cls, name))
            self.assertEqual(hashlib.sha256(source.encode()).hexdigest(), digest, f"{cls.__name__}.{name} changed")

    def test_private_attributes_and_signatures(self) -> None:
        async def check() -> None:
            receiver = RTCRtpReceiver("audio", FakeTransport())
            for name in aiortc_internals.RECEIVER_PRIVATE:
                self.assertTrue(hasattr(receiver, name), name)
        asyncio.run(check())
        self.assertEqual(parameters(RTCRtpReceiver.receive), ["self", "parameters"])
        self.assertEqual(parameters(RTCRtpReceiver._handle_rtp_packet), ["self", "packet", "arrival_time_ms"])
        self.assertEqual(parameters(RTCRtpReceiver._send_rtcp_pli), ["self", "media_ssrc"])
        self.assertTrue(callable(RTCRtpReceiver._run_rtcp))
        self.assertEqual(parameters(RTCDtlsTransport._register_rtp_receiver), ["self", "receiver", "parameters"])
        # The connection calls receive through the instance, so the tap's replacement is used.
        source = inspect.getsource(aiortc.rtcpeerconnection.RTCPeerConnection._RTCPeerConnection__connect)
        self.assertIn("await transceiver.receiver.receive(", source)

    def test_tap_gets_encoded_frames_and_no_decoder_thread_starts(self) -> None:
        frames, ended = [], []

        async def run() -> FakeTransport:
            transport = FakeTransport()
            receiver = RTCRtpReceiver("audio", transport)
            aiortc_internals.install_receiver_tap(
                receiver, lambda codec, data, ts: frames.append((codec.mimeType, data, ts)),
                lambda: ended.append(True))
            await receiver.receive(RTCRtpReceiveParameters(codecs=[OPUS], encodings=[]))
            self.assertEqual(transport.registered, [receiver])
            thread = getattr(receiver, "_RTCRtpReceiver__decoder_thread")
            self.assertNotIsInstance(thread, __import__("threading").Thread)
            for n in range(10):
                packet = RtpPacket(payload_type=111, sequence_number=n, timestamp=960 * n, ssrc=1234)
                packet.payload = bytes([n]) * 10
                await receiver._handle_rtp_packet(packet, arrival_time_ms=n * 20)
            receiver._set_rtcp_ssrc(99)
            await aiortc_internals.send_pli(receiver, 1234)
            await receiver.stop()
            return transport

        transport = asyncio.run(run())
        self.assertTrue(frames)
        self.assertEqual(frames[0], ("audio/opus", bytes([0]) * 10, 0))
        self.assertEqual(frames[1][2], 960)
        self.assertEqual(ended, [True])
        plis = [p for data in transport.sent for p in RtcpPacket.parse(data)
                if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI]
        self.assertEqual([(p.ssrc, p.media_ssrc) for p in plis], [(99, 1234)])


def rtp(seq: int, timestamp: int, marker: bool = False, data: bytes | None = None) -> RtpPacket:
    packet = RtpPacket(payload_type=102, sequence_number=seq, timestamp=timestamp, marker=int(marker), ssrc=5)
    packet._data = data if data is not None else bytes([seq & 0xFF])  # what _handle_rtp_packet sets (depayloaded)
    return packet


class JitterBufferTests(unittest.TestCase):
    def test_the_jitter_buffer_internals_it_builds_on(self) -> None:
        self.assertEqual(parameters(JitterBuffer.__init__), ["self", "capacity", "prefetch", "is_video"])
        self.assertEqual(parameters(JitterBuffer._remove_frame), ["self", "sequence_number"])
        self.assertEqual(parameters(JitterBuffer.remove), ["self", "count"])
        self.assertEqual(parameters(JitterFrame.__init__), ["self", "data", "timestamp"])
        self.assertIn("self._remove_frame(packet.sequence_number)", inspect.getsource(JitterBuffer.add))
        buffer = JitterBuffer(capacity=16)
        for name in ("_packets", "_origin", "capacity"):
            self.assertTrue(hasattr(buffer, name), name)
        # The receiver assembles frames with the buffer it holds under this name.
        self.assertIn("self.__jitter_buffer.add(packet)", inspect.getsource(RTCRtpReceiver._handle_rtp_packet))

    def test_a_video_frame_goes_at_its_marker_not_at_the_next_frame(self) -> None:
        buffer = aiortc_internals.ForwardingJitterBuffer("video")
        self.assertEqual(buffer.add(rtp(10, 0)), (False, None))
        pli, frame = buffer.add(rtp(11, 0, marker=True))
        self.assertEqual((frame.data, frame.timestamp), (bytes([10, 11]), 0))
        # Reordered: nothing until the gap is filled, then the whole frame.
        self.assertEqual(buffer.add(rtp(13, 3000, marker=True))[1], None)
        frame = buffer.add(rtp(12, 3000))[1]
        self.assertEqual((frame.data, frame.timestamp), (bytes([12, 13]), 3000))
        # A marker lost: the frame goes when the next one starts.
        self.assertEqual(buffer.add(rtp(14, 6000))[1], None)
        frame = buffer.add(rtp(15, 9000))[1]
        self.assertEqual((frame.data, frame.timestamp), (bytes([14]), 6000))

    def test_aiortcs_own_holds_the_frame_until_the_next(self) -> None:
        # What the forwarding buffer is for (and the check that it differs).
        buffer = JitterBuffer(capacity=512, is_video=True)
        self.assertEqual(buffer.add(rtp(10, 0))[1], None)
        self.assertEqual(buffer.add(rtp(11, 0, marker=True))[1], None)
        self.assertEqual(buffer.add(rtp(12, 3000))[1].data, bytes([10, 11]))

    def test_frames_a_late_packet_completes_are_all_handed_on(self) -> None:
        # Single-packet frames 20, 21, 22 with 20 late: when it comes, all three are whole.
        buffer = aiortc_internals.ForwardingJitterBuffer("video")
        self.assertEqual(buffer.add(rtp(19, 0, marker=True))[1].timestamp, 0)
        self.assertEqual(buffer.add(rtp(21, 6000, marker=True))[1], None)
        self.assertEqual(buffer.add(rtp(22, 9000, marker=True))[1], None)
        frame = buffer.add(rtp(20, 3000, marker=True))[1]
        self.assertEqual((frame.timestamp, buffer.last_timestamp), (3000, 3000))
        self.assertEqual([f.timestamp for f in buffer.take_ready()], [6000, 9000])
        self.assertEqual(buffer.take_ready(), [])
        # Not one frame behind for good: the next is handed on with its own packet.
        self.assertEqual(buffer.add(rtp(23, 12000, marker=True))[1].timestamp, 12000)

    def test_the_tap_passes_them_on_in_the_receivers_timeline(self) -> None:
        frames = []
        buffer = aiortc_internals.ForwardingJitterBuffer("video")
        tap = aiortc_internals._FrameTap(lambda codec, data, ts: frames.append((data, ts)), lambda: None, buffer)
        buffer.add(rtp(1, 0xFFFFF000 - 3000, marker=True))
        buffer.add(rtp(3, (0xFFFFF000 + 3000) & 0xFFFFFFFF, marker=True))  # after the 32-bit wrap
        _, frame = buffer.add(rtp(2, 0xFFFFF000, marker=True))
        frame.timestamp = 3000  # as the receiver's TimestampMapper made it (its origin: the first frame)
        tap.put((None, frame))
        self.assertEqual(frames, [(bytes([2]), 3000), (bytes([3]), 6000)])

    def test_audio_packets_go_at_once_and_late_ones_are_dropped(self) -> None:
        buffer = aiortc_internals.ForwardingJitterBuffer("audio")
        self.assertEqual(buffer.add(rtp(100, 0))[1].timestamp, 0)
        self.assertEqual(buffer.add(rtp(102, 1920))[1].timestamp, 1920)  # 101 is missing: not waited for
        self.assertEqual(buffer.add(rtp(101, 960))[1], None)  # late
        self.assertEqual(buffer.add(rtp(103, 2880))[1].timestamp, 2880)
        buffer = aiortc_internals.ForwardingJitterBuffer("audio")  # across the 16-bit wrap
        self.assertIsNotNone(buffer.add(rtp(65535, 0))[1])
        self.assertIsNotNone(buffer.add(rtp(0, 960))[1])
        self.assertIsNone(buffer.add(rtp(65534, 0))[1])


class SenderTests(unittest.TestCase):
    def test_keyframe_request_hook(self) -> None:
        calls = []

        async def run() -> None:
            sender = RTCRtpSender("video", FakeTransport())
            self.assertTrue(callable(sender._send_keyframe))
            aiortc_internals.on_keyframe_request(sender, lambda: calls.append(True))
            await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc))

        asyncio.run(run())
        self.assertEqual(calls, [True])

    def test_stream_id_is_what_offers_carry(self) -> None:
        async def run() -> str:
            sender = RTCRtpSender("audio", FakeTransport())
            self.assertIsInstance(sender._stream_id, str)
            aiortc_internals.set_stream_id(sender, "sig-a")
            return sender._stream_id

        self.assertEqual(asyncio.run(run()), "sig-a")
        source = inspect.getsource(aiortc.rtcpeerconnection.create_media_description_for_transceiver)
        self.assertIn("transceiver.sender._stream_id", source)

    def test_pre_encoded_packets_are_packed_not_encoded(self) -> None:
        async def run():
            sender = RTCRtpSender(PacketTrack(), FakeTransport())
            self.assertEqual(parameters(sender._next_encoded_frame), ["codec"])
            return await sender._next_encoded_frame(OPUS)

        frame = asyncio.run(run())
        self.assertEqual(frame.payloads, [b"\x01\x02\x03"])
        self.assertEqual(frame.timestamp, 960)


class OfferTests(unittest.TestCase):
    def test_create_offer_reads_the_module_tables_without_suspending(self) -> None:
        module = aiortc.rtcpeerconnection
        self.assertEqual(set(module.CODECS), {"audio", "video"})
        self.assertEqual(set(module.HEADER_EXTENSIONS), {"audio", "video"})
        source = inspect.getsource(module.RTCPeerConnection.createOffer)
        self.assertIn("CODECS[transceiver.kind]", source)
        self.assertIn("HEADER_EXTENSIONS[transceiver.kind]", source)
        self.assertNotIn("await ", source)

    def test_create_offer_with_uses_the_given_tables_and_restores(self) -> None:
        module = aiortc.rtcpeerconnection
        saved = module.CODECS, module.HEADER_EXTENSIONS

        async def run() -> str:
            pc = aiortc.RTCPeerConnection()
            pc.addTransceiver("audio", direction="sendonly")
            offer = await aiortc_internals.create_offer_with(pc, {"audio": [OPUS]}, {"audio": []})
            await pc.close()
            return offer.sdp

        sdp = asyncio.run(run())
        self.assertIn("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", sdp)
        self.assertNotIn("a=extmap", sdp)
        self.assertEqual((module.CODECS, module.HEADER_EXTENSIONS), saved)
