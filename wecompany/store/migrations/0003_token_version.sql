-- Access tokens carry the token version of their user (claim "ver"); a token
-- whose version is not the user's current one is refused. Raising it ends
-- every access token of the user at once: a password change or reset, a
-- ban, an account deletion.

ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
