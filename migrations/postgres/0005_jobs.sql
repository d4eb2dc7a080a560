-- Bulk jobs: one operation over a set of devices, rolled out under rate, wave and abort
-- rules. The targets are resolved once, when the job is created (one job_devices row each).
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    name         TEXT,
    operation    TEXT NOT NULL,
    target       TEXT NOT NULL,
    rollout      TEXT NOT NULL,
    restart      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'aborted', 'cancelled', 'expired')),
    state_reason TEXT,
    total        BIGINT NOT NULL,
    current_wave BIGINT NOT NULL DEFAULT 1,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    updated_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    expires_at   BIGINT NOT NULL,
    -- The node running the job, and until when its lease holds (renewed while it runs; a
    -- node that dies loses the job to another one when the lease runs out).
    runner       TEXT,
    lease_until  BIGINT
);
CREATE INDEX jobs_state ON jobs (state, id);

CREATE TABLE job_devices (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    imei        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    wave        BIGINT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'in_progress', 'succeeded', 'failed', 'cancelled', 'expired')),
    attempts    BIGINT NOT NULL DEFAULT 0,
    started_at  BIGINT,
    finished_at BIGINT,
    error       TEXT,
    result      TEXT,
    PRIMARY KEY (job_id, imei)
);
CREATE INDEX job_devices_queue ON job_devices (job_id, state, wave, seq);

CREATE INDEX commands_journal ON commands (imei, created_by, created_at);
