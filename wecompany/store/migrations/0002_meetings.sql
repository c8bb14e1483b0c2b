-- Meetings, their participants and chat, refresh tokens and password resets
-- (the REST API's durable data).
--
-- Booleans are INTEGER 0/1; a meeting's settings are a JSON object in TEXT.
-- Every row that names a user references users (id): the store checks the
-- user exists first and says so with a NotFound, the constraint is the
-- backstop. Users are deleted by status, so ON DELETE CASCADE only matters
-- when an operator removes a row by hand.

CREATE TABLE meetings (
    id $serial_pk,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    creator_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    start_time $float NOT NULL,
    end_time $float,
    max_participants INTEGER NOT NULL,
    meeting_type TEXT NOT NULL,
    status TEXT NOT NULL,
    password_hash TEXT,
    settings TEXT NOT NULL,
    -- The signaling room every member is given; two meetings never share one.
    room_id TEXT NOT NULL UNIQUE,
    created_at $float NOT NULL,
    updated_at $float NOT NULL,
    started_at $float,
    ended_at $float
);

-- list_meetings orders by start time and filters on it.
CREATE INDEX meetings_start_time ON meetings (start_time, id);
CREATE INDEX meetings_creator ON meetings (creator_id);

CREATE TABLE participants (
    id $serial_pk,
    meeting_id $bigint NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    user_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    audio_enabled INTEGER NOT NULL DEFAULT 1,
    video_enabled INTEGER NOT NULL DEFAULT 1,
    joined_at $float,
    left_at $float,
    -- When the row was made (invited, or first joined).
    created_at $float NOT NULL,
    UNIQUE (meeting_id, user_id)
);

-- list_meetings(member_id=...), and the cascade when a user row goes.
CREATE INDEX participants_user ON participants (user_id);

CREATE TABLE meeting_messages (
    id $serial_pk,
    meeting_id $bigint NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    user_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content TEXT NOT NULL,
    message_type TEXT NOT NULL,
    created_at $float NOT NULL
);

CREATE INDEX meeting_messages_meeting ON meeting_messages (meeting_id, id);
CREATE INDEX meeting_messages_user ON meeting_messages (user_id);

-- By the SHA-256 of the token; the token itself is never stored.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id TEXT NOT NULL,
    created_at $float NOT NULL,
    expires_at $float NOT NULL,
    revoked_at $float,
    replaced_by TEXT
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE password_resets (
    token_hash TEXT PRIMARY KEY,
    user_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at $float NOT NULL,
    expires_at $float NOT NULL,
    used_at $float
);

CREATE INDEX password_resets_user ON password_resets (user_id);
