-- Meter-reading sessions (TEMPORALCLIENT), direct or through the rendezvous.
ALTER TABLE devices ADD COLUMN id_client TEXT;

CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY,
    imei                TEXT NOT NULL REFERENCES devices (imei) ON DELETE CASCADE,
    mode                TEXT NOT NULL CHECK (mode IN ('direct', 'rendezvous')),
    state               TEXT NOT NULL CHECK (state IN ('requested', 'modem_connected', 'reader_connected', 'active', 'closed')),
    close_reason        TEXT,
    error               TEXT,
    host                TEXT NOT NULL,
    port                INTEGER NOT NULL,
    timeout_s           INTEGER NOT NULL,
    pairing_timeout_s   INTEGER NOT NULL,
    forward_id          BOOLEAN NOT NULL DEFAULT FALSE,
    token_hash          TEXT,
    token_used          BOOLEAN NOT NULL DEFAULT FALSE,
    command_id          TEXT,
    created_by          TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    modem_connected_at  INTEGER,
    reader_connected_at INTEGER,
    active_at           INTEGER,
    closed_at           INTEGER,
    modem_addr          TEXT,
    reader_addr         TEXT,
    bytes_from_modem    INTEGER NOT NULL DEFAULT 0,
    bytes_to_modem      INTEGER NOT NULL DEFAULT 0
);
-- One open session per device.
CREATE UNIQUE INDEX sessions_one_open ON sessions (imei) WHERE state <> 'closed';
CREATE INDEX sessions_imei ON sessions (imei, created_at);
