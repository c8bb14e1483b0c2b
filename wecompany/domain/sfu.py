"""
The meeting SFU's domain: who may publish and receive in a room, and when to negotiate.

(Being written: see issue 12.)
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ForwardedStream:
    """
    One track of one publisher as a subscriber receives it.

    ``stream_id`` is the msid stream id the subscriber's browser sees: the
    publisher's signaling ``peer_id``, so that its tile is labelled with the
    publisher's name; a publisher's audio and video share it.
    """

    publisher_peer_id: str
    track_id: str
    kind: str  # "audio" or "video"
    stream_id: str
