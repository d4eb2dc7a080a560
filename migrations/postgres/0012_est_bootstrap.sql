-- EST enrolment (RFC 7030): per-device bootstrap secrets that authenticate a first
-- enrolment (HTTP Basic, user name = IMEI). Only an argon2 hash is kept; at most one
-- secret per device (a new one replaces it); the row is deleted when an enrolment uses it
-- (single use), when it is withdrawn, or with its device.
CREATE TABLE bootstrap_secrets (
    imei        TEXT PRIMARY KEY REFERENCES devices (imei) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);
