-- Foundation: users, API keys, devices, certificates, audit log.
-- Timestamps are Unix epoch milliseconds (BIGINT) so that the same SQL runs on SQLite and PostgreSQL.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'reader')),
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL UNIQUE,
    key_hash     TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'reader')),
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE TABLE devices (
    imei       TEXT PRIMARY KEY,
    name       TEXT,
    model      TEXT,
    tags       TEXT NOT NULL DEFAULT '[]',
    disabled   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE device_tags (
    imei TEXT NOT NULL REFERENCES devices (imei) ON DELETE CASCADE,
    tag  TEXT NOT NULL,
    PRIMARY KEY (imei, tag)
);
CREATE INDEX device_tags_tag ON device_tags (tag, imei);

CREATE TABLE certificates (
    serial             TEXT PRIMARY KEY,
    imei               TEXT NOT NULL,
    common_name        TEXT NOT NULL,
    fingerprint_sha256 TEXT NOT NULL,
    certificate_pem    TEXT NOT NULL,
    not_before         BIGINT NOT NULL,
    not_after          BIGINT NOT NULL,
    issued_by          TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    revocation_reason  TEXT,
    revoked_by         TEXT
);
CREATE INDEX certificates_imei ON certificates (imei, created_at);
CREATE INDEX certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    actor_kind  TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    outcome     TEXT NOT NULL,
    status      BIGINT,
    detail      TEXT,
    remote_addr TEXT,
    request_id  TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
