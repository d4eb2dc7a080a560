-- Security hardening.
-- A user's token version: raised by a password change, by disabling the user and by an
-- admin's "revoke tokens"; access tokens carry the version they were issued with, and a token
-- with an older one is refused.
ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;

-- Retention: the prune task deletes old rows in small batches by these columns.
CREATE INDEX commands_created ON commands (created_at);
CREATE INDEX sessions_closed ON sessions (closed_at) WHERE closed_at IS NOT NULL;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
