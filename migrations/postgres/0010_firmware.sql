-- Firmware management: the repository, what each device reports, campaigns as jobs.

-- The repository: one row per uploaded file. The bytes are in the blob store, addressed by
-- their SHA-256 (so an identical upload is refused as a duplicate).
CREATE TABLE firmware (
    id          TEXT PRIMARY KEY,
    version     TEXT NOT NULL,
    models      TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('image', 'midlet')),
    notes       TEXT,
    min_version TEXT,
    sha256      TEXT NOT NULL UNIQUE,
    size        BIGINT NOT NULL,
    signed_by   TEXT,
    jad         TEXT,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

-- Inventory: the firmware version each device reports (its model is `devices.model`),
-- and the history of what it reported.
ALTER TABLE devices ADD COLUMN firmware_version TEXT;
ALTER TABLE devices ADD COLUMN firmware_reported_at BIGINT;
CREATE INDEX devices_firmware ON devices (model, firmware_version);
CREATE TABLE device_firmware_history (
    id      BIGSERIAL PRIMARY KEY,
    imei    TEXT NOT NULL REFERENCES devices (imei) ON DELETE CASCADE,
    at      BIGINT NOT NULL,
    model   TEXT,
    version TEXT,
    source  TEXT NOT NULL
);
CREATE INDEX device_firmware_history_imei ON device_firmware_history (imei, id);

-- The firmware a campaign installs (so that firmware in use cannot be deleted).
ALTER TABLE jobs ADD COLUMN firmware_id TEXT;
CREATE INDEX jobs_firmware ON jobs (firmware_id) WHERE firmware_id IS NOT NULL;

-- Executions may be skipped, and carry an outcome.
ALTER TABLE job_devices DROP CONSTRAINT job_devices_state_check;
ALTER TABLE job_devices ADD CONSTRAINT job_devices_state_check
    CHECK (state IN ('pending', 'in_progress', 'succeeded', 'failed', 'cancelled', 'expired', 'skipped'));
ALTER TABLE job_devices ADD COLUMN outcome TEXT;

-- Each execution's event log (download started/resumed/completed, install notified...).
CREATE TABLE job_device_events (
    id     BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    imei   TEXT NOT NULL,
    at     BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX job_device_events_execution ON job_device_events (job_id, imei, id);

-- Download tokens: one per execution attempt, random, short-lived, bound to the device.
-- `token` is sealed with the master key when there is one (a resumed execution sends the
-- same command again from its journal); lookups go by its SHA-256.
CREATE TABLE firmware_downloads (
    token_hash     TEXT PRIMARY KEY,
    token          TEXT NOT NULL,
    job_id         TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    imei           TEXT NOT NULL,
    attempt        BIGINT NOT NULL,
    firmware_id    TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    requests       BIGINT NOT NULL DEFAULT 0,
    resumptions    BIGINT NOT NULL DEFAULT 0,
    bytes_served   BIGINT NOT NULL DEFAULT 0,
    completed_at   BIGINT,
    -- The last request's first byte and bytes written: a request that resumes inside it
    -- shows how much of it the modem really kept (the rest was lost in buffers).
    last_start     BIGINT,
    last_sent      BIGINT,
    refused        TEXT,
    notify_code    BIGINT,
    notify_message TEXT,
    notified_at    BIGINT,
    closed_at      BIGINT,
    UNIQUE (job_id, imei, attempt)
);
