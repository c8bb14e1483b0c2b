"""Pure parts of wecompany.sfu.forwarding: keyframes, bounded queues, SDP tables (no sockets)."""

from __future__ import annotations

import asyncio
import fractions

import av
from aiortc import RTCRtpCodecParameters
from twisted.trial import unittest

from wecompany.sfu import forwarding
from wecompany.sfu.forwarding import ForwardedTrack, NegotiatedTables, announce_address, is_keyframe

ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 102 103 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
    "a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\na=rtpmap:96 VP8/90000\r\n"
)


class KeyframeTests(unittest.TestCase):
    def test_vp8(self) -> None:
        self.assertTrue(is_keyframe("video/VP8", b"\x10\x02\x00\x9d\x01\x2a"))
        self.assertFalse(is_keyframe("video/VP8", b"\x11\x02\x00"))
        self.assertFalse(is_keyframe("video/VP8", b""))

    def test_h264(self) -> None:
        sps, idr, sei, slice_ = b"\x00\x00\x00\x01\x67\x42", b"\x00\x00\x01\x65\x88", b"\x00\x00\x01\x06\x05", b"\x00\x00\x01\x41\x9a"
        self.assertTrue(is_keyframe("video/H264", sps + idr))
        self.assertTrue(is_keyframe("video/H264", sei + idr))
        self.assertFalse(is_keyframe("video/H264", sei + slice_))
        self.assertFalse(is_keyframe("video/H264", b"\x00\x00\x01"))


class AnnounceTests(unittest.TestCase):
    def test_public_address_replaces_host_address(self) -> None:
        sdp = announce_address(ANSWER, ["127.0.0.1"], "203.0.113.7")
        self.assertIn("a=candidate:1 1 udp 2130706431 203.0.113.7 50000 typ host\r\n", sdp)
        self.assertIn("c=IN IP4 203.0.113.7\r\n", sdp)
        self.assertIn("c=IN IP4 0.0.0.0\r\n", sdp)
        self.assertEqual(announce_address(ANSWER, ["127.0.0.1"], None), ANSWER)

    def test_without_host_addresses_every_host_candidate_is_announced(self) -> None:
        # (--sfu-addresses not given: aioice gathered on every interface.)
        sdp = announce_address(ANSWER, [], "203.0.113.7")
        self.assertIn("a=candidate:1 1 udp 2130706431 203.0.113.7 50000 typ host\r\n", sdp)
        self.assertIn("c=IN IP4 203.0.113.7\r\n", sdp)
        self.assertNotIn("127.0.0.1", sdp)
        self.assertEqual(announce_address(ANSWER, [], None), ANSWER)


class TablesTests(unittest.TestCase):
    def test_from_answer(self) -> None:
        tables = NegotiatedTables.from_sdp(ANSWER)
        self.assertEqual([c.payloadType for c in tables.codecs["video"]], [102, 103, 96])
        self.assertEqual([(e.id, e.uri.rsplit(":", 1)[-1]) for e in tables.header_extensions["audio"]],
                         [(4, "mid")])
        aiortc_h264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=99, parameters={
            "level-asymmetry-allowed": "1", "packetization-mode": "1", "profile-level-id": "42e01f"})
        self.assertEqual(tables.codec_like("video", aiortc_h264).payloadType, 102)
        vp9 = RTCRtpCodecParameters(mimeType="video/VP9", clockRate=90000, payloadType=98)
        self.assertIsNone(tables.codec_like("video", vp9))


class FakeSource:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.track_id = "t1"
        self.subscribers: set = set()
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1


def packet(n: int) -> av.Packet:
    p = av.Packet(bytes([n]))
    p.pts = n
    p.time_base = fractions.Fraction(1, 90000)
    return p


class QueueTests(unittest.TestCase):
    def run_track(self, kind: str, pushes, limit: int = 3):
        async def run():
            source = FakeSource(kind)
            track = ForwardedTrack(source, "sig-a")
            track._limit = limit
            first = asyncio.ensure_future(track.recv())  # the sender starts reading
            await asyncio.sleep(0)
            for n, key in pushes:
                track.push(packet(n), key)
            got = [(await first).pts]
            while track._queue:
                got.append((await track.recv()).pts)
            track.stop()
            return got, track, source
        return asyncio.run(run())

    def test_video_waits_for_a_keyframe_first(self) -> None:
        got, track, source = self.run_track("video", [(1, False), (2, True), (3, False)])
        self.assertEqual(got, [2, 3])
        self.assertGreaterEqual(source.keyframe_requests, 2)

    def test_full_video_queue_drops_until_next_keyframe(self) -> None:
        got, track, source = self.run_track("video", [(1, True), (2, False), (3, False), (4, False),
                                                      (5, False), (6, False), (7, True), (8, False)])
        # The reader runs after the pushes: 1-3 fill the queue, 4 overflows it, so
        # the queue is emptied and 5 and 6 are skipped until keyframe 7.
        self.assertEqual(got, [7, 8])
        self.assertEqual(track.dropped, 1)

    def test_full_audio_queue_drops_oldest(self) -> None:
        got, track, _ = self.run_track("audio", [(n, True) for n in range(1, 7)])
        self.assertEqual(got, [4, 5, 6])
        self.assertEqual(track.dropped, 3)

    def test_nothing_is_queued_before_the_sender_reads(self) -> None:
        async def run():
            track = ForwardedTrack(FakeSource("audio"), "s")
            track.push(packet(1), True)
            return len(track._queue)
        self.assertEqual(asyncio.run(run()), 0)

    def test_limits_are_bounded(self) -> None:
        self.assertLessEqual(max(forwarding.QUEUE_LIMIT.values()), 100)
