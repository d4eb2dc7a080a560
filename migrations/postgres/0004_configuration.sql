-- Fleet configuration: versioned Config.txt profiles assigned by tag, per-device overrides,
-- the configuration last reported by the modem, and its drift state.
CREATE TABLE profiles (
    name            TEXT PRIMARY KEY,
    tag             TEXT,
    priority        BIGINT NOT NULL DEFAULT 0,
    current_version BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    updated_by      TEXT NOT NULL
);
CREATE INDEX profiles_tag ON profiles (tag, priority);

CREATE TABLE profile_versions (
    name       TEXT NOT NULL REFERENCES profiles (name) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    config     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE device_config (
    imei             TEXT PRIMARY KEY REFERENCES devices (imei) ON DELETE CASCADE,
    overrides        TEXT NOT NULL DEFAULT '{}',
    reported         TEXT,
    reported_at      BIGINT,
    drift            TEXT NOT NULL DEFAULT 'unknown',
    drift_keys       TEXT,
    drift_checked_at BIGINT,
    updated_at       BIGINT NOT NULL,
    updated_by       TEXT NOT NULL
);
CREATE INDEX device_config_drift ON device_config (drift, imei);
