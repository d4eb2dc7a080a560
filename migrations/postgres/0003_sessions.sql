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
    port                BIGINT NOT NULL,
    timeout_s           BIGINT NOT NULL,
    pairing_timeout_s   BIGINT NOT NULL,
    forward_id          BOOLEAN NOT NULL DEFAULT FALSE,
    token_hash          TEXT,
    token_used          BOOLEAN NOT NULL DEFAULT FALSE,
    command_id          TEXT,
    created_by          TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    modem_connected_at  BIGINT,
    reader_connected_at BIGINT,
    active_at           BIGINT,
    closed_at           BIGINT,
    modem_addr          TEXT,
    reader_addr         TEXT,
    bytes_from_modem    BIGINT NOT NULL DEFAULT 0,
    bytes_to_modem      BIGINT NOT NULL DEFAULT 0
);
-- One open session per device.
CREATE UNIQUE INDEX sessions_one_open ON sessions (imei) WHERE state <> 'closed';
CREATE INDEX sessions_imei ON sessions (imei, created_at);
