"""
Every use of aiortc's and aioice's internals, and nothing else.

aiortc has no public API to forward encoded media: its receivers decode every
frame in a thread and its senders encode again (issue 12 measured about 8 % of
a core per VP8 subscriber). The SFU worker takes the jitter buffer's assembled
encoded frames from each receiver instead of decoding them, and hands them to
senders as ``av.Packet`` objects, which ``RTCRtpSender`` packetizes without
encoding (its public-but-undocumented "pre-encoded" path). The hooks below
rely on name-mangled attributes and module globals of aiortc 1.16.0, which
setup.cfg pins exactly; tests/sfu/test_aiortc_internals.py fails when any of
them is missing or changes shape.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

import aioice.ice
import aiortc
import aiortc.rtcpeerconnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

TESTED_AIORTC_VERSION = "1.16.0"

# The mangled private attributes of RTCRtpReceiver this module reads or sets.
RECEIVER_PRIVATE = (
    "_RTCRtpReceiver__started",
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__decoder_queue",
    "_RTCRtpReceiver__decoder_thread",
    "_RTCRtpReceiver__transport",
    "_RTCRtpReceiver__rtcp_task",
    "_RTCRtpReceiver__jitter_buffer",
    "_RTCRtpReceiver__kind",
)

FrameCallback = Callable[[Any, bytes, int], None]


def aiortc_version() -> str:
    return aiortc.__version__


def restrict_host_addresses(addresses: list[str]) -> None:
    """
    Gather host candidates on exactly ``addresses``.

    aioice takes every interface except loopback (``get_host_addresses`` is
    a module function, called at each gathering); the worker must use only
    the configured addresses, and tests only 127.0.0.1.
    """
    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(chosen)


class _FrameTap:
    """
    Stands in for the receiver's decoder ``queue.Queue``: ``put`` is called
    on the event loop by ``RTCRtpReceiver._handle_rtp_packet`` with
    ``(codec, JitterFrame)`` for each assembled encoded frame, and with
    ``None`` when the receiver stops (RTCP BYE, transport gone, stop()).
    """

    def __init__(self, on_frame: FrameCallback, on_end: Callable[[], None],
                 buffer: Optional[ForwardingJitterBuffer] = None) -> None:
        self._on_frame = on_frame
        self._on_end = on_end
        self._ended = False
        self._buffer = buffer

    def put(self, item: Any) -> None:
        if item is None:
            if not self._ended:
                self._ended = True
                self._on_end()
            return
        codec, frame = item
        self._on_frame(codec, frame.data, frame.timestamp)
        if self._buffer is not None and self._buffer.ready:
            # Frames completed behind this one, in the receiver's timeline (it
            # mapped this frame's RTP timestamp to ``frame.timestamp``): each
            # that much later, in the 32-bit RTP clock.
            first = self._buffer.last_timestamp
            for more in self._buffer.take_ready():
                self._on_frame(codec, more.data, frame.timestamp + ((more.timestamp - first) & 0xFFFFFFFF))


class ForwardingJitterBuffer(JitterBuffer):
    """
    aiortc's jitter buffer for video (the same reordering, capacity and loss
    handling), handing each frame on as soon as it is whole; audio packets
    forwarded as they come. For forwarding, not for a decoder.

    aiortc's own knows a video frame is complete only when the next frame's
    first packet arrives, and holds audio for 4 packets (``prefetch``): right
    before a decoder, a hop's worth of latency on each forwarded stream
    (bench/sfu.py measured one frame interval, about 33 ms at 30 fps, per
    hop). Here a video frame goes at its marker bit (RFC 6184/7741: set on
    the last packet of a frame), or when a packet of the next frame shows the
    marker was lost; frames a late packet completes behind the first wait in
    :attr:`ready` (the receiver takes one frame per packet, and a buffer that
    kept them would stay a frame behind for good). An audio packet (one Opus
    frame) goes at once; one older than the last forwarded is late and
    dropped (the receiver's own jitter buffer and concealment deal with it).
    Relies on ``JitterBuffer.add`` calling ``_remove_frame``, and on its
    ``_packets``, ``_origin`` and ``remove``.
    """

    def __init__(self, kind: str) -> None:
        if kind == "audio":
            super().__init__(capacity=16)
        else:
            super().__init__(capacity=512, is_video=True)
        self._audio = kind == "audio"
        self._next_audio: Optional[int] = None
        self.ready: list[JitterFrame] = []
        self.last_timestamp: Optional[int] = None  # RTP timestamp of the frame add() last returned

    def add(self, packet: Any) -> tuple[bool, Optional[JitterFrame]]:
        if self._audio:
            if self._next_audio is not None and (packet.sequence_number - self._next_audio) & 0xFFFF >= 0x8000:
                return False, None
            self._next_audio = (packet.sequence_number + 1) & 0xFFFF
            frame = JitterFrame(data=packet._data, timestamp=packet.timestamp)
        else:
            pli, frame = super().add(packet)
            if frame is None:
                return pli, None
            while True:
                more = self._remove_frame(packet.sequence_number)
                if more is None:
                    break
                self.ready.append(more)
            self.last_timestamp = frame.timestamp
            return pli, frame
        self.last_timestamp = frame.timestamp
        return False, frame

    def take_ready(self) -> list[JitterFrame]:
        ready, self.ready = self.ready, []
        return ready

    def _remove_frame(self, sequence_number: int) -> Optional[JitterFrame]:
        packets: list = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None  # a gap: wait for it (or for the buffer to give up on it)
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:  # the frame ended without its marker
                self.remove(count)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
        return None


class _NoDecoderThread:
    """
    Stands in for the decoder thread: truthy, so ``_handle_rtp_packet``
    passes frames to the tap; ``join`` is what ``__stop_decoder`` calls.
    """

    def join(self, timeout: Optional[float] = None) -> None:
        pass


def install_receiver_tap(receiver: RTCRtpReceiver, on_frame: FrameCallback,
                         on_end: Callable[[], None]) -> None:
    """
    Make ``receiver`` hand its encoded frames to ``on_frame(codec, data,
    timestamp)`` (``timestamp`` in the codec's clock, from 0) and never
    start a decoder thread. ``on_end()`` is called once when it stops.

    Must be called before the connection calls ``receiver.receive`` (that is,
    before DTLS connects): the replacement below is ``RTCRtpReceiver.receive``
    of aiortc 1.16.0 minus the decoder thread, with a
    :class:`ForwardingJitterBuffer` instead of aiortc's.
    """
    buffer = ForwardingJitterBuffer(getattr(receiver, "_RTCRtpReceiver__kind"))
    tap = _FrameTap(on_frame, on_end, buffer)

    async def receive(parameters: Any) -> None:
        if getattr(receiver, "_RTCRtpReceiver__started"):
            return
        codecs = getattr(receiver, "_RTCRtpReceiver__codecs")
        rtx_ssrc = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc")
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        for encoding in parameters.encodings:
            if encoding.rtx:
                rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        setattr(receiver, "_RTCRtpReceiver__jitter_buffer", buffer)
        setattr(receiver, "_RTCRtpReceiver__decoder_queue", tap)
        setattr(receiver, "_RTCRtpReceiver__decoder_thread", _NoDecoderThread())
        getattr(receiver, "_RTCRtpReceiver__transport")._register_rtp_receiver(receiver, parameters)
        setattr(receiver, "_RTCRtpReceiver__rtcp_task", asyncio.ensure_future(receiver._run_rtcp()))
        setattr(receiver, "_RTCRtpReceiver__started", True)

    receiver.receive = receive  # type: ignore[method-assign]


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send RTCP PLI for ``media_ssrc`` (the publisher's SSRC) from ``receiver``."""
    await receiver._send_rtcp_pli(media_ssrc)


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """
    Call ``callback()`` when the remote end of ``sender`` sends PLI or FIR.

    ``RTCRtpSender._handle_rtcp_packet`` calls ``self._send_keyframe()``,
    which only sets a flag for its encoder; a forwarding sender has no
    encoder, so the request goes to the publisher instead.
    """
    sender._send_keyframe = callback  # type: ignore[method-assign]


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """Set the msid stream id ``createOffer`` writes for ``sender`` (aiortc picks a random one)."""
    sender._stream_id = stream_id


async def create_offer_with(pc: aiortc.RTCPeerConnection, codecs: dict[str, list],
                            header_extensions: dict[str, list]) -> aiortc.RTCSessionDescription:
    """
    ``pc.createOffer()`` with ``codecs`` and ``header_extensions`` (per kind)
    as the local capabilities instead of aiortc's defaults.

    ``createOffer`` resets every transceiver's codecs and extensions from the
    module globals ``CODECS`` and ``HEADER_EXTENSIONS``, with aiortc's own
    payload types and extension ids; Chromium rejects an offer that changes
    those ("RTP extension ID reassignment not supported"). Passing the tables
    negotiated with this peer keeps them. ``createOffer`` does not suspend
    (no ``await`` inside), so no other task sees the swapped globals.
    """
    module = aiortc.rtcpeerconnection
    saved_codecs, saved_extensions = module.CODECS, module.HEADER_EXTENSIONS
    module.CODECS = {**saved_codecs, **codecs}
    module.HEADER_EXTENSIONS = {**saved_extensions, **header_extensions}
    try:
        return await pc.createOffer()
    finally:
        module.CODECS, module.HEADER_EXTENSIONS = saved_codecs, saved_extensions
