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
    size        INTEGER NOT NULL,
    signed_by   TEXT,
    jad         TEXT,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
);

-- Inventory: the firmware version each device reports (its model is `devices.model`),
-- and the history of what it reported.
ALTER TABLE devices ADD COLUMN firmware_version TEXT;
ALTER TABLE devices ADD COLUMN firmware_reported_at INTEGER;
CREATE INDEX devices_firmware ON devices (model, firmware_version);
CREATE TABLE device_firmware_history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    imei    TEXT NOT NULL REFERENCES devices (imei) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    model   TEXT,
    version TEXT,
    source  TEXT NOT NULL
);
CREATE INDEX device_firmware_history_imei ON device_firmware_history (imei, id);

-- The firmware a campaign installs (so that firmware in use cannot be deleted).
ALTER TABLE jobs ADD COLUMN firmware_id TEXT;
CREATE INDEX jobs_firmware ON jobs (firmware_id) WHERE firmware_id IS NOT NULL;

-- Executions may be skipped, and carry an outcome: SQLite cannot change a CHECK
-- constraint, so the table is rebuilt.
CREATE TABLE job_devices_new (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    imei        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    wave        INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'in_progress', 'succeeded', 'failed', 'cancelled', 'expired', 'skipped')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER,
    finished_at INTEGER,
    error       TEXT,
    result      TEXT,
    outcome     TEXT,
    PRIMARY KEY (job_id, imei)
);
INSERT INTO job_devices_new (job_id, imei, seq, wave, state, attempts, started_at, finished_at, error, result)
    SELECT job_id, imei, seq, wave, state, attempts, started_at, finished_at, error, result FROM job_devices;
DROP TABLE job_devices;
ALTER TABLE job_devices_new RENAME TO job_devices;
CREATE INDEX job_devices_queue ON job_devices (job_id, state, wave, seq);

-- Each execution's event log (download started/resumed/completed, install notified...).
CREATE TABLE job_device_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    imei   TEXT NOT NULL,
    at     INTEGER NOT NULL,
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
    attempt        INTEGER NOT NULL,
    firmware_id    TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    requests       INTEGER NOT NULL DEFAULT 0,
    resumptions    INTEGER NOT NULL DEFAULT 0,
    bytes_served   INTEGER NOT NULL DEFAULT 0,
    completed_at   INTEGER,
    -- The last request's first byte and bytes written: a request that resumes inside it
    -- shows how much of it the modem really kept (the rest was lost in buffers).
    last_start     INTEGER,
    last_sent      INTEGER,
    refused        TEXT,
    notify_code    INTEGER,
    notify_message TEXT,
    notified_at    INTEGER,
    closed_at      INTEGER,
    UNIQUE (job_id, imei, attempt)
);
