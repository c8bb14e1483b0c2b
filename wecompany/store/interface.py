"""
The durable store, as the domain sees it.

Every method returns a Deferred (or is a coroutine) and never blocks the
reactor. Implementations: :mod:`wecompany.store.sqlite` (default) and, later,
PostgreSQL for clusters; both must pass the same ``tests/store`` suite.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IStore(Interface):
    """
    Accounts, profiles, contacts, offline messages and files.

    A write that fails because the storage is full or failing raises
    :class:`wecompany.errors.Unavailable` (503), not the driver's error.
    """

    storage_problem = Attribute(
        "Why the last write failed for want of storage (``'disk full'``...), until a write succeeds; or None.")

    user_caches = Attribute(
        "Objects told ``invalidate(user_id)`` when a write to that user's row or profile (create_user,"
        " update_user, set_password_hash, record_login, revoke_all_tokens, update_profile) is done or has"
        " failed, before the write's Deferred fires (:class:`wecompany.domain.usercache.UserCache`);"
        " a constructor keyword.")

    meeting_caches = Attribute(
        "Objects told ``invalidate(meeting_id)`` when a write to that meeting's row (create_meeting,"
        " update_meeting, delete_meeting) is done or has failed, before the write's Deferred fires"
        " (:class:`wecompany.domain.meetingpages.MeetingPages`); a constructor keyword.")

    def start():
        """Open the database and apply pending schema migrations. Deferred fires when ready."""

    def stop():
        """Finish outstanding writes and close. Deferred."""

    def ping():
        """Deferred firing True when the database answers a trivial query (health check)."""

    # -- accounts -----------------------------------------------------------
    def create_user(username, password_hash, email, nickname, now, role="user"):
        """
        Insert a user and its profile in one transaction -> UserRecord.

        Raises :class:`wecompany.errors.UsernameTaken` (1001) when the
        username exists (case-insensitively) or :class:`~wecompany.errors.EmailTaken`
        (1002) when the email exists.
        """

    def get_user(user_id):
        """-> UserRecord or None (deleted users are returned with status 'deleted')."""

    def get_user_by_username(username):
        """Case-insensitive -> UserRecord or None."""

    def get_user_by_login(login):
        """By username (case-insensitive) or email (case-insensitive) -> UserRecord or None."""

    def set_password_hash(user_id, password_hash):
        """Replace the hash (rehash on login, password change). -> None"""

    def record_login(user_id, now):
        """Set last_login. -> None"""

    def get_profile(user_id):
        """-> ProfileRecord or None."""

    def list_users_by_ids(user_ids):
        """-> dict id -> UserRecord for the ids that exist."""

    # -- contacts (friends) -------------------------------------------------
    def add_contact(user_id, contact_id, now):
        """user_id adds contact_id to its contact list (idempotent). -> None"""

    def remove_contact(user_id, contact_id):
        """-> bool, whether a row was removed."""

    def list_contacts(user_id, offset, limit):
        """-> (total, [UserRecord]) ordered by username."""

    def watchers_of(user_id):
        """Ids of users that have user_id in their contacts. -> list[int]"""

    # -- offline messages ---------------------------------------------------
    def store_offline_message(message):
        """Persist a StoredMessage durably (committed before the Deferred fires)."""

    def fetch_offline_messages(recipient_id, limit):
        """The oldest ``limit`` waiting messages, oldest first. -> list[StoredMessage]"""

    def delete_offline_messages(message_ids):
        """Remove delivered messages. -> None"""

    # -- files --------------------------------------------------------------
    def create_file(owner_id, name, size, sha256, path, now, recipient_id=None,
                    content_type="application/octet-stream"):
        """Insert with status 'receiving'. -> FileRecord"""

    def complete_file(file_id):
        """Mark 'complete'. -> None"""

    def delete_file(file_id):
        """Remove the row (the caller removes the bytes). -> None"""

    def get_file(file_id):
        """-> FileRecord or None."""

    def undelivered_files_for(recipient_id):
        """Complete files addressed to recipient_id and not yet delivered, oldest first."""

    def delete_incomplete_files(created_before, path_prefix=None):
        """
        Remove every file row still 'receiving' that was created before
        ``created_before`` (uploads a stopped server can no longer finish),
        and whose path starts with ``path_prefix`` if given (one node's).
        -> the removed FileRecords, oldest first (the caller removes the bytes).
        """

    def mark_file_delivered(file_id):
        """-> None"""


class IMeetingStore(Interface):
    """
    Accounts administration, meetings, participants, meeting chat, refresh
    tokens and password resets (the REST API's durable data). Implemented by
    the same classes as :class:`IStore`.

    ``changes`` arguments are dicts of column -> new value restricted to the
    keys each method lists; an unknown key is a programming error (ValueError).

    Rules common to the methods below:

    * a method that writes a row naming a user (create_meeting, join_meeting,
      add_participant, add_meeting_message, add_refresh_token,
      add_password_reset) raises :class:`wecompany.errors.NotFound` (1003)
      when that user does not exist, and writes nothing;
    * a token or reset "expires at" ``expires_at``: it is expired when
      ``expires_at <= now``. A refresh token is *live* while it is neither
      revoked nor expired; only live tokens are revoked (and counted);
    * a ``room_id`` or token hash that is already stored raises
      :class:`wecompany.errors.Conflict` (no business code) and changes
      nothing.
    """

    # -- accounts -----------------------------------------------------------
    def update_user(user_id, changes):
        """
        Keys: email, role, status, username. -> UserRecord, or None if no such user.
        Email/username clashes raise EmailTaken (1002) / UsernameTaken (1001) and change nothing.
        """

    def update_profile(user_id, changes, now):
        """Keys: nickname, avatar, phone. Sets updated_at (also with no changes). -> ProfileRecord or None."""

    def list_users(offset, limit, keyword=None, status=None):
        """
        -> (total, [UserRecord]) ordered by id. ``keyword`` matches username or
        email case-insensitively as a substring (LIKE with % and _ escaped).
        """

    def get_profiles(user_ids):
        """-> dict user_id -> ProfileRecord."""

    # -- meetings -----------------------------------------------------------
    def create_meeting(title, description, creator_id, start_time, end_time, max_participants,
                       meeting_type, password_hash, settings, room_id, now):
        """
        Insert the meeting and its creator as participant (role 'host',
        status 'invited') in one transaction -> (MeetingRecord, ParticipantRecord).
        """

    def get_meeting(meeting_id):
        """-> MeetingRecord or None."""

    def get_meeting_by_room(room_id):
        """The meeting whose ``room_id`` this is (room ids are unique) -> MeetingRecord or None."""

    def update_meeting(meeting_id, changes, now):
        """
        Keys: title, description, start_time, end_time, max_participants,
        meeting_type, password_hash, settings, status, started_at, ended_at.
        Sets updated_at. -> MeetingRecord or None.
        """

    def delete_meeting(meeting_id):
        """Delete the meeting with its participants and messages. -> bool"""

    def list_meetings(offset, limit, statuses=None, keyword=None, member_id=None,
                      start_from=None, start_until=None, newest_first=False):
        """
        -> (total, [MeetingRecord]).

        ``statuses``: a collection of statuses to keep (None = all).
        ``keyword``: case-insensitive substring of title or description.
        ``member_id``: only meetings where this user is the creator or has a
        participant row that is not removed. ``start_from``/``start_until``: bounds on start_time
        (inclusive). Ordered by start_time then id, ascending, or descending
        when ``newest_first``.
        """

    # -- participants -------------------------------------------------------
    def join_meeting(meeting_id, user_id, role, now):
        """
        Atomically: if the user has a row, set status 'joined', joined_at=now,
        left_at=None (role unchanged) -> (ParticipantRecord, False). A row the
        user was removed by raises :class:`wecompany.errors.ParticipantRemoved`
        and changes nothing. Otherwise, if the meeting already has
        max_participants rows (every status but removed counts, the host
        included) raise :class:`wecompany.errors.MeetingFull`; else insert
        with ``role``, status 'joined' -> (ParticipantRecord, True). Raises
        MeetingNotFound when the meeting does not exist.
        """

    def add_participant(meeting_id, user_id, role, now):
        """
        Invite: insert with status 'invited' -> ParticipantRecord, capacity
        checked as in join_meeting; a removed user's row is made 'invited'
        again with ``role`` (the bar is lifted). Raises Conflict if the user
        already has a row that is not removed, MeetingNotFound if the meeting
        does not exist.
        """

    def get_participant(meeting_id, user_id):
        """-> ParticipantRecord or None (also None for a removed user)."""

    def list_participants(meeting_id):
        """-> [ParticipantRecord] ordered by id, removed users left out."""

    def update_participant(meeting_id, user_id, changes):
        """
        Keys: role, status, audio_enabled, video_enabled, joined_at, left_at.
        -> ParticipantRecord or None (a removed user's row is not changed).
        """

    def remove_participant(meeting_id, user_id, now):
        """
        Mark the row 'removed' (left_at=now): from then on the user is no
        participant to any read, and join_meeting refuses them until
        add_participant adds them back. -> bool, whether a row was removed.
        """

    # -- meeting chat -------------------------------------------------------
    def add_meeting_message(meeting_id, user_id, content, message_type, now):
        """Store durably (committed when the Deferred fires) -> MeetingMessageRecord."""

    def list_meeting_messages(meeting_id, offset, limit):
        """-> (total, [MeetingMessageRecord]) oldest first (by id)."""

    # -- refresh tokens -----------------------------------------------------
    def add_refresh_token(token_hash, user_id, family_id, now, expires_at):
        """-> RefreshTokenRecord"""

    def get_refresh_token(token_hash):
        """-> RefreshTokenRecord or None."""

    def rotate_refresh_token(old_hash, new_hash, now, expires_at):
        """
        Atomically, one transaction:
        * old unknown or expired -> None, nothing changes;
        * old already revoked (a stolen token replayed) -> revoke every live
          token of its family, return None;
        * otherwise revoke old (revoked_at=now, replaced_by=new_hash), insert
          new in the same family -> the new RefreshTokenRecord.
        """

    def revoke_all_tokens(user_id, now):
        """
        Every token of the user stops working, in one transaction: the
        user's ``token_version`` goes up by one (access tokens issued before
        name the old one) and every live refresh token is revoked.
        -> int, how many refresh tokens were live (0 for an unknown user).
        """

    def revoke_refresh_token(token_hash, user_id, now):
        """
        Revoke one token of ``user_id`` (logout). -> bool, whether it was live
        and that user's; a token of another user is left alone.
        """

    # -- password resets ----------------------------------------------------
    def add_password_reset(token_hash, user_id, now, expires_at):
        """Store a single-use reset token (by hash). -> None"""

    def consume_password_reset(token_hash, now):
        """
        Atomically mark the token used and return its user id; None when it
        is unknown, used, or expired.
        """


class IMediaStore(Interface):
    """
    The REST media API's items (:class:`~wecompany.store.records.MediaRecord`)
    and who else may read them. Implemented by the same classes as
    :class:`IStore`. Lists are newest first (by id, descending).
    """

    def add_media(uploader_id, filename, content_type, size, sha256, file_type, storage_key, now,
                  meeting_id=None, duration_ms=None, width=None, height=None, source_id=None,
                  shared_with=(), quota=None):
        """
        Insert an item, and a grant to read it for each of ``shared_with``
        (user ids), in one transaction -> MediaRecord.

        With ``quota`` (bytes), the uploader's usage (:meth:`media_usage`)
        plus ``size`` must not pass it, checked in the same transaction with
        the uploader's row locked, so two uploads that each fit but not
        together cannot both be added:
        :class:`wecompany.errors.QuotaExceeded` otherwise, and nothing is
        written. Raises NotFound (1003) for an unknown uploader or user of
        ``shared_with``, MeetingNotFound for an unknown meeting.
        """

    def get_media(media_id):
        """-> MediaRecord or None."""

    def media_shared_with(media_id, user_id):
        """-> bool, whether ``user_id`` was granted reading ``media_id``."""

    def list_media(offset, limit, user_id=None, meeting_id=None):
        """
        -> (total, [MediaRecord]) newest first. ``user_id``: only items it
        uploaded or was granted; ``meeting_id``: only that meeting's; both:
        both conditions.
        """

    def delete_media(media_id):
        """Remove the item and its grants -> the removed MediaRecord, or None (the caller removes the bytes)."""

    def media_usage(user_id):
        """-> int, the bytes of every item ``user_id`` uploaded."""
