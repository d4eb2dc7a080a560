-- Claim provisioning: a production batch's claim credential (a claim certificate issued by
-- us, or a manufacturer's claim CA) with its policy, and the enrolments made with it.
-- `enrollments_used` counts the enrolments that hold a slot (pending, approved, issued): it
-- is raised by one conditional UPDATE (`enrollments_used < max_enrollments`), so two
-- concurrent enrolments can never both take the last slot.
CREATE TABLE claims (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    kind               TEXT NOT NULL CHECK (kind IN ('issued', 'ca')),
    certificate_pem    TEXT NOT NULL,
    fingerprint_sha256 TEXT NOT NULL,
    serial             TEXT UNIQUE,
    imeis              TEXT,
    imei_from          TEXT,
    imei_to            TEXT,
    expires_at         BIGINT NOT NULL,
    max_enrollments    BIGINT NOT NULL,
    enrollments_used   BIGINT NOT NULL DEFAULT 0,
    approval           TEXT NOT NULL CHECK (approval IN ('auto', 'manual')),
    created_at         BIGINT NOT NULL,
    created_by         TEXT NOT NULL,
    revoked_at         BIGINT,
    revoked_by         TEXT,
    CHECK ((imeis IS NULL) <> (imei_from IS NULL AND imei_to IS NULL))
);

CREATE TABLE enrollments (
    id                 TEXT PRIMARY KEY,
    claim_id           TEXT NOT NULL REFERENCES claims (id) ON DELETE CASCADE,
    imei               TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'issued')),
    csr_pem            TEXT NOT NULL,
    public_key_sha256  TEXT NOT NULL,
    requested_at       BIGINT NOT NULL,
    remote_addr        TEXT,
    decided_at         BIGINT,
    decided_by         TEXT,
    reason             TEXT,
    certificate_serial TEXT
);
-- One live enrolment per IMEI and claim (a rejected one does not count).
CREATE UNIQUE INDEX enrollments_claim_imei ON enrollments (claim_id, imei) WHERE state <> 'rejected';
CREATE INDEX enrollments_state ON enrollments (state, id);
