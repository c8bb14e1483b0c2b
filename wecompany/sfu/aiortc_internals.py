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

    def __init__(self, on_frame: FrameCallback, on_end: Callable[[], None]) -> None:
        self._on_frame = on_frame
        self._on_end = on_end
        self._ended = False

    def put(self, item: Any) -> None:
        if item is None:
            if not self._ended:
                self._ended = True
                self._on_end()
            return
        codec, frame = item
        self._on_frame(codec, frame.data, frame.timestamp)


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
    of aiortc 1.16.0 minus the decoder thread.
    """
    tap = _FrameTap(on_frame, on_end)

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
