-- Accounts, profiles, contacts, offline messages and files.
--
-- Column types written with a dollar sign are filled in per database by
-- wecompany.store.dialect (SQLite: AUTOINCREMENT, COLLATE NOCASE...).
-- Every statement ends with ';' at the end of a line.

CREATE TABLE users (
    id $serial_pk,
    username $text_nocase NOT NULL UNIQUE,
    -- NULL for accounts made over TCP without an email; NULLs never clash.
    email $text_nocase UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at $float NOT NULL,
    last_login $float
);

CREATE TABLE profiles (
    user_id $bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    nickname TEXT NOT NULL,
    avatar TEXT NOT NULL DEFAULT '',
    phone TEXT NOT NULL DEFAULT '',
    updated_at $float NOT NULL
);

CREATE TABLE contacts (
    user_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contact_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at $float NOT NULL,
    PRIMARY KEY (user_id, contact_id)
);

-- watchers_of, and the cascade when a contact's user row goes.
CREATE INDEX contacts_contact_id ON contacts (contact_id);

CREATE TABLE offline_messages (
    -- Insertion order: messages are delivered oldest first.
    seq $serial_pk,
    -- The 63-bit message id the sender was told in its TEXT_ACK.
    id $bigint NOT NULL UNIQUE,
    sender_id $bigint NOT NULL,
    recipient_id $bigint NOT NULL,
    text TEXT NOT NULL,
    sent_at $float NOT NULL
);

CREATE INDEX offline_messages_recipient ON offline_messages (recipient_id, seq);

-- The media store shared by TCP FILE transfers and the REST media API.
CREATE TABLE files (
    id $serial_pk,
    owner_id $bigint NOT NULL,
    recipient_id $bigint,
    name TEXT NOT NULL,
    size $bigint NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    status TEXT NOT NULL,
    content_type TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    created_at $float NOT NULL
);

CREATE INDEX files_undelivered ON files (recipient_id, delivered, status);
