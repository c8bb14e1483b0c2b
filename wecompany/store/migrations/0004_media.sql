-- The REST media API's items (uploads, processing results, and the files
-- sent with the TCP protocol's FILE transfer), and who else may read them.
--
-- storage_key names the bytes in the file storage (wecompany.storage); the
-- server always chooses it. A meeting's media outlive the meeting (its
-- uploader keeps them): meeting_id becomes NULL when the meeting goes.

CREATE TABLE media (
    id $serial_pk,
    uploader_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    meeting_id $bigint REFERENCES meetings (id) ON DELETE SET NULL,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size $bigint NOT NULL,
    sha256 TEXT NOT NULL,
    file_type TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    duration_ms $bigint,
    width INTEGER,
    height INTEGER,
    -- The item a processing result was made from.
    source_id $bigint REFERENCES media (id) ON DELETE SET NULL,
    created_at $float NOT NULL
);

-- A user's list (newest first), a user's usage for the quota, a meeting's list.
CREATE INDEX media_uploader ON media (uploader_id, id);
CREATE INDEX media_meeting ON media (meeting_id, id);
CREATE INDEX media_source ON media (source_id);

-- Users other than the uploader who may read an item (the recipient of a
-- TCP file transfer).
CREATE TABLE media_grants (
    media_id $bigint NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    user_id $bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (media_id, user_id)
);

CREATE INDEX media_grants_user ON media_grants (user_id, media_id);
