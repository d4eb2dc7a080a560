-- Command channel: presence, per-device MQTT identity and topics, status log, command queue.
ALTER TABLE devices ADD COLUMN online BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE devices ADD COLUMN session_id TEXT;
ALTER TABLE devices ADD COLUMN connected_at INTEGER;
ALTER TABLE devices ADD COLUMN disconnected_at INTEGER;
ALTER TABLE devices ADD COLUMN last_seen INTEGER;
ALTER TABLE devices ADD COLUMN remote_addr TEXT;
ALTER TABLE devices ADD COLUMN cert_serial TEXT;
ALTER TABLE devices ADD COLUMN command_topic TEXT;
ALTER TABLE devices ADD COLUMN reply_topic TEXT;
ALTER TABLE devices ADD COLUMN status_topic TEXT;
ALTER TABLE devices ADD COLUMN mqtt_username TEXT;
ALTER TABLE devices ADD COLUMN mqtt_password_hash TEXT;
CREATE UNIQUE INDEX devices_mqtt_username ON devices (mqtt_username) WHERE mqtt_username IS NOT NULL;
CREATE INDEX devices_online ON devices (online, imei);

CREATE TABLE device_status (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    imei        TEXT NOT NULL REFERENCES devices (imei) ON DELETE CASCADE,
    received_at INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    parsed      TEXT
);
CREATE INDEX device_status_imei ON device_status (imei, id);
CREATE INDEX device_status_received ON device_status (received_at);

CREATE TABLE commands (
    id            TEXT PRIMARY KEY,
    imei          TEXT NOT NULL REFERENCES devices (imei) ON DELETE CASCADE,
    command       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'succeeded', 'failed', 'timed_out', 'cancelled', 'expired')),
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    timeout_ms    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    sent_at       INTEGER,
    completed_at  INTEGER,
    reply         TEXT,
    result        TEXT,
    error         TEXT,
    late_reply    TEXT,
    late_reply_at INTEGER
);
CREATE INDEX commands_queue ON commands (imei, state, created_at, id);
CREATE INDEX commands_state ON commands (state, expires_at);
