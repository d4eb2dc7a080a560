-- Certificate expiry watch and audit checks.

-- SHA-256 (hex) of each certificate's SubjectPublicKeyInfo, for the shared_key audit check.
-- Filled when a certificate is issued; rows from before are back-filled at start.
ALTER TABLE certificates ADD COLUMN public_key_sha256 TEXT;
CREATE INDEX certificates_public_key ON certificates (public_key_sha256);

-- Listing "expiring soonest first" and the expiry check: unrevoked rows by not_after.
CREATE INDEX certificates_expiry ON certificates (not_after, serial) WHERE revoked_at IS NULL;
CREATE INDEX certificates_not_after ON certificates (not_after, serial);

-- One row per (certificate, threshold) whose certificate.expiring event was published (or,
-- for wider thresholds a certificate was already past when first seen, skipped). The primary
-- key makes the notice exactly-once across nodes: INSERT ... ON CONFLICT DO NOTHING, and the
-- node whose insert happened publishes.
CREATE TABLE certificate_expiry_notices (
    serial         TEXT NOT NULL,
    threshold_days INTEGER NOT NULL,
    notified_at    INTEGER NOT NULL,
    published      BOOLEAN NOT NULL,
    PRIMARY KEY (serial, threshold_days)
);
