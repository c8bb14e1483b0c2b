"""What the domain knows about a connected client: this interface and nothing else."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IClient(Interface):
    """
    One live connection of one user, as the domain sees it.

    Implemented by the TCP protocol and (later) the WebSocket signaling
    protocol; tests implement it with a recording fake. Every method must
    return quickly and never block.
    """

    identity = Attribute("The :class:`~wecompany.domain.sessions.Identity` this client logged in as.")
    kind = Attribute('Transport name, "tcp" or "ws". One "tcp" session per user at a time.')

    def send_event(event):
        """
        Deliver one domain event (see :mod:`wecompany.domain.events`).

        Events are small control messages and are never dropped; a client
        whose outgoing buffer grows past its limit is disconnected by its
        transport instead.
        """

    def send_media(call_id, data):
        """
        Relay one media packet of call ``call_id``.

        Media is real time: return ``False`` and drop the packet when the
        receiver cannot keep up (its transport is applying back-pressure),
        ``True`` when it was written.
        """

    def disconnect(error):
        """Tell the client why (a :class:`~wecompany.errors.WeCompanyError`) and close."""


class IMeetingListener(Interface):
    """
    Told by :class:`~wecompany.domain.meetings.MeetingService` what happened
    to a meeting through the REST API, after it is stored (the rooms of live
    meetings follow it).
    """

    def meeting_changed(meeting):
        """The meeting's record changed (settings, capacity, status: also ended or cancelled)."""

    def meeting_deleted(meeting_id):
        """The meeting and everything of it are gone."""

    def participant_left(meeting_id, user_id, reason):
        """The user left the meeting (``"left"``) or was removed from it (``"removed"``)."""


class ISessionListener(Interface):
    """
    Told by :class:`~wecompany.domain.chat.ChatService` when a client's
    session opens (it has authenticated) and closes. File transfers listen:
    they start delivering files waiting for the user, and drop a closed
    session's uploads.
    """

    def session_opened(client):
        """``client`` (an :class:`IClient`) is in."""

    def session_closed(client):
        """``client`` is gone, or replaced."""


class IMediaEngine(Interface):
    """
    The media half of the meeting SFU (:mod:`wecompany.domain.sfu` is the
    other): WebRTC connections and the forwarding of encoded media between
    them, never decoded. The domain decides who publishes, who receives what
    and when to negotiate; the engine does the SDP, ICE, DTLS and RTP.

    Peers are named by the domain's ``peer_id`` (unguessable strings); all the
    peers of one room (``room``, a string) live in one place of the engine, so
    media between them never crosses a process. Every method returns a
    Deferred and never blocks; one that fails fails with a
    :class:`~wecompany.errors.WeCompanyError` (an unknown peer is
    :class:`~wecompany.errors.PeerNotFound`, a worker that is gone or too busy
    :class:`~wecompany.errors.Unavailable`).
    """

    def start(listener):
        """Begin; events go to ``listener`` (an :class:`IMediaEngineListener`)."""

    def stop():
        """Close every peer (recordings are finished first). -> Deferred fired when done."""

    def open_peer(room, peer_id, offer_sdp):
        """
        A new connection answering a browser's offer (audio then video
        transceivers, both ``sendrecv``). Tracks it publishes are reported
        with ``track_added``; nothing is forwarded to it until the domain
        calls :meth:`renegotiate`. -> Deferred[str], the answer SDP (it may
        hold no candidates: they follow as ``candidate`` events).
        """

    def add_candidate(peer_id, candidate):
        """
        A remote ICE candidate, as the browser's ``RTCIceCandidate.toJSON()``
        (``candidate``, ``sdpMid``, ``sdpMLineIndex``, ``usernameFragment``);
        ``None`` for end of candidates. -> Deferred[None].
        """

    def renegotiate(peer_id, streams):
        """
        Make the peer receive exactly ``streams`` (a sequence of
        :class:`~wecompany.domain.sfu.ForwardedStream`): senders are added for
        new ones and removed for those no longer listed, then an offer is made
        that keeps every payload type and header-extension id already
        negotiated with this peer. -> Deferred[str], the offer SDP.
        """

    def apply_answer(peer_id, answer_sdp):
        """The peer's answer to the last :meth:`renegotiate` offer. -> Deferred[None]."""

    def request_keyframe(peer_id):
        """Ask the peer, as a publisher, for a keyframe of each of its video tracks (RTCP PLI). -> Deferred[None]."""

    def close_peer(peer_id):
        """Close the connection; its published tracks end (``track_ended``). -> Deferred[None]; unknown peers are fine."""

    def start_recording(room, recording_id, path):
        """
        Remux every track forwarded in ``room`` from now on, without
        transcoding, into the file ``path`` (tracks that start later join
        it). -> Deferred[None].
        """

    def stop_recording(recording_id):
        """
        Finish the file so that it is valid. -> Deferred[dict] with
        ``duration`` (seconds), ``size`` (bytes) and ``tracks`` (a list of
        ``{peer_id, track_id, kind}``).
        """

    def stats():
        """-> Deferred[dict]: ``peers``, ``connected``, ``streams_in``, ``streams_out``, ``packets``, ``bytes``, ``workers``."""


class IMediaEngineListener(Interface):
    """What an :class:`IMediaEngine` reports, on the reactor thread."""

    def candidate(peer_id, candidate):
        """A local ICE candidate for the browser: ``{candidate, sdpMid, sdpMLineIndex}``."""

    def gathering_complete(peer_id):
        """The engine has no more local candidates for this peer."""

    def connection_state(peer_id, state):
        """The peer's connection state: ``new``, ``connecting``, ``connected``, ``disconnected``, ``failed`` or ``closed``."""

    def track_added(peer_id, track_id, kind):
        """The peer publishes a track (``kind`` is ``audio`` or ``video``); media has arrived on it."""

    def track_ended(peer_id, track_id):
        """A published track is gone (its peer closed, failed, or stopped sending)."""

    def recording_failed(recording_id, reason):
        """A recording could not go on (disk full, worker gone); what was written is kept."""

    def engine_lost(rooms):
        """The place that held ``rooms`` (a worker process) died: every peer in them is gone."""
