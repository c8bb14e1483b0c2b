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
