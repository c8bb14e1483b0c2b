"""
The durable store, as the domain sees it.

Every method returns a Deferred (or is a coroutine) and never blocks the
reactor. Implementations: :mod:`wecompany.store.sqlite` (default) and, later,
PostgreSQL for clusters; both must pass the same ``tests/store`` suite.
"""

from __future__ import annotations

from zope.interface import Interface


class IStore(Interface):
    """Accounts, profiles, contacts, offline messages and files."""

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

        Raises :class:`wecompany.errors.Conflict` with error_code 1001 when the
        username exists (case-insensitively) or 1002 when the email exists.
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

    def mark_file_delivered(file_id):
        """-> None"""
