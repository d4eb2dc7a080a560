//! Claims and their enrolments: a module of `sqlite.rs` and of `postgres.rs`, beside
//! `common`.
//!
//! A claim's enrolment count is `claims.enrollments_used`, raised by one conditional
//! `UPDATE ... WHERE enrollments_used < max_enrollments` in the transaction that inserts
//! the enrolment: on PostgreSQL the second of two concurrent updates re-checks the
//! condition after the first commits, on SQLite the write lock serialises them, so a claim
//! never gives out more slots than its limit, even across nodes.

use std::str::FromStr as _;

use async_trait::async_trait;
use callhome_core::Imei;
use callhome_core::claims::{
    AUTO_APPROVER, Approval, ClaimKind, ClaimPolicy, EnrollmentState, ImeiPolicy,
};
use sqlx::Row as _;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::conv::{from_ms, ms, opt_from_ms, page, parse_col};
use crate::{ClaimRecord, Claims, EnrollmentFilter, EnrollmentRecord, Page, Result, StoreError};

use super::BEGIN_WRITE;
use super::common::*;

macro_rules! claim_cols {
    () => {
        "id, name, kind, certificate_pem, fingerprint_sha256, serial, imeis, imei_from, imei_to, expires_at, max_enrollments, enrollments_used, approval, created_at, created_by, revoked_at, revoked_by"
    };
}

macro_rules! enrollment_cols {
    () => {
        "id, claim_id, imei, state, csr_pem, public_key_sha256, requested_at, remote_addr, decided_at, decided_by, reason, certificate_serial"
    };
}

fn corrupt(column: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        column,
        reason: reason.into(),
    }
}

fn imei_col(column: &'static str, value: &str) -> Result<Imei> {
    parse_col(column, value, Imei::parse)
}

fn claim_from_row(r: &DbRow) -> Result<ClaimRecord> {
    let imeis: Option<String> = r.try_get("imeis")?;
    let from: Option<String> = r.try_get("imei_from")?;
    let to: Option<String> = r.try_get("imei_to")?;
    let policy = match (imeis, from, to) {
        (Some(list), None, None) => {
            let list: Vec<String> =
                serde_json::from_str(&list).map_err(|e| corrupt("claims.imeis", e.to_string()))?;
            let mut parsed = list
                .iter()
                .map(|s| imei_col("claims.imeis", s))
                .collect::<Result<Vec<_>>>()?;
            parsed.sort();
            ImeiPolicy::List(parsed)
        }
        (None, Some(from), Some(to)) => ImeiPolicy::Range {
            from: imei_col("claims.imei_from", &from)?,
            to: imei_col("claims.imei_to", &to)?,
        },
        _ => return Err(corrupt("claims.imeis", "neither a list nor a range")),
    };
    Ok(ClaimRecord {
        id: parse_col("claims.id", &r.try_get::<String, _>("id")?, Uuid::from_str)?,
        name: r.try_get("name")?,
        kind: parse_col(
            "claims.kind",
            &r.try_get::<String, _>("kind")?,
            ClaimKind::parse,
        )?,
        certificate_pem: r.try_get("certificate_pem")?,
        fingerprint_sha256: r.try_get("fingerprint_sha256")?,
        serial: r.try_get("serial")?,
        policy: ClaimPolicy {
            imeis: policy,
            expires_at: from_ms(r.try_get("expires_at")?),
            max_enrollments: r.try_get("max_enrollments")?,
            approval: parse_col(
                "claims.approval",
                &r.try_get::<String, _>("approval")?,
                Approval::parse,
            )?,
        },
        enrollments_used: r.try_get("enrollments_used")?,
        created_at: from_ms(r.try_get("created_at")?),
        created_by: r.try_get("created_by")?,
        revoked_at: opt_from_ms(r.try_get("revoked_at")?),
        revoked_by: r.try_get("revoked_by")?,
    })
}

fn enrollment_from_row(r: &DbRow) -> Result<EnrollmentRecord> {
    Ok(EnrollmentRecord {
        id: parse_col(
            "enrollments.id",
            &r.try_get::<String, _>("id")?,
            Uuid::from_str,
        )?,
        claim_id: parse_col(
            "enrollments.claim_id",
            &r.try_get::<String, _>("claim_id")?,
            Uuid::from_str,
        )?,
        imei: imei_col("enrollments.imei", &r.try_get::<String, _>("imei")?)?,
        state: parse_col(
            "enrollments.state",
            &r.try_get::<String, _>("state")?,
            EnrollmentState::parse,
        )?,
        csr_pem: r.try_get("csr_pem")?,
        public_key_sha256: r.try_get("public_key_sha256")?,
        requested_at: from_ms(r.try_get("requested_at")?),
        remote_addr: r.try_get("remote_addr")?,
        decided_at: opt_from_ms(r.try_get("decided_at")?),
        decided_by: r.try_get("decided_by")?,
        reason: r.try_get("reason")?,
        certificate_serial: r.try_get("certificate_serial")?,
    })
}

#[async_trait]
impl Claims for SqlStore {
    async fn create_claim(&self, c: &ClaimRecord) -> Result<ClaimRecord> {
        let (imeis, from, to) = match &c.policy.imeis {
            ImeiPolicy::List(list) => (
                Some(
                    serde_json::Value::from(
                        list.iter()
                            .map(|i| i.as_str().to_owned())
                            .collect::<Vec<_>>(),
                    )
                    .to_string(),
                ),
                None,
                None,
            ),
            ImeiPolicy::Range { from, to } => (
                None,
                Some(from.as_str().to_owned()),
                Some(to.as_str().to_owned()),
            ),
        };
        let inserted = sqlx::query(concat!(
            "INSERT INTO claims (",
            claim_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING ",
            claim_cols!()
        ))
        .bind(c.id.to_string())
        .bind(&c.name)
        .bind(c.kind.as_str())
        .bind(&c.certificate_pem)
        .bind(&c.fingerprint_sha256)
        .bind(c.serial.as_deref())
        .bind(imeis)
        .bind(from)
        .bind(to)
        .bind(ms(c.policy.expires_at))
        .bind(c.policy.max_enrollments)
        .bind(c.enrollments_used)
        .bind(c.policy.approval.as_str())
        .bind(ms(c.created_at))
        .bind(&c.created_by)
        .bind(c.revoked_at.map(ms))
        .bind(c.revoked_by.as_deref())
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => claim_from_row(&row),
            Err(e) => match StoreError::from(e) {
                StoreError::Conflict { constraint, .. } => Err(StoreError::Conflict {
                    constraint,
                    detail: format!(
                        "a claim named {:?} (or with this certificate) already exists",
                        c.name
                    ),
                }),
                other => Err(other),
            },
        }
    }

    async fn get_claim(&self, id: Uuid) -> Result<ClaimRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            claim_cols!(),
            " FROM claims WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => claim_from_row(&r),
            None => Err(StoreError::NotFound(format!("claim {id}"))),
        }
    }

    async fn claim_by_serial(&self, serial: &str) -> Result<Option<ClaimRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            claim_cols!(),
            " FROM claims WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(claim_from_row).transpose()
    }

    async fn list_claims(&self, before: Option<Uuid>, limit: u32) -> Result<Page<ClaimRecord>> {
        let limit = limit.clamp(1, 1000);
        let rows = sqlx::query(concat!(
            "SELECT ",
            claim_cols!(),
            " FROM claims WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(before.map(|b| b.to_string()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(claim_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |c| c.id.to_string()))
    }

    async fn revoke_claim(&self, id: Uuid, at: OffsetDateTime, by: &str) -> Result<ClaimRecord> {
        let row = sqlx::query(concat!(
            "UPDATE claims SET revoked_at = $2, revoked_by = $3 WHERE id = $1 AND revoked_at IS NULL RETURNING ",
            claim_cols!()
        ))
        .bind(id.to_string())
        .bind(ms(at))
        .bind(by)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => claim_from_row(&r),
            None => {
                let claim = self.get_claim(id).await?;
                Err(StoreError::conflict(format!(
                    "claim {} is already revoked",
                    claim.name
                )))
            }
        }
    }

    async fn revoked_claims(&self, now: OffsetDateTime) -> Result<Vec<ClaimRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            claim_cols!(),
            " FROM claims WHERE revoked_at IS NOT NULL AND expires_at > $1 ORDER BY id"
        ))
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claim_from_row).collect()
    }

    async fn create_enrollment(
        &self,
        e: &EnrollmentRecord,
        now: OffsetDateTime,
    ) -> Result<Option<EnrollmentRecord>> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let reserved = sqlx::query(
            "UPDATE claims SET enrollments_used = enrollments_used + 1 \
             WHERE id = $1 AND enrollments_used < max_enrollments AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(e.claim_id.to_string())
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        if reserved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let inserted = sqlx::query(concat!(
            "INSERT INTO enrollments (",
            enrollment_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
            enrollment_cols!()
        ))
        .bind(e.id.to_string())
        .bind(e.claim_id.to_string())
        .bind(e.imei.as_str())
        .bind(e.state.as_str())
        .bind(&e.csr_pem)
        .bind(&e.public_key_sha256)
        .bind(ms(e.requested_at))
        .bind(e.remote_addr.as_deref())
        .bind(e.decided_at.map(ms))
        .bind(e.decided_by.as_deref())
        .bind(e.reason.as_deref())
        .bind(e.certificate_serial.as_deref())
        .fetch_one(&mut *tx)
        .await;
        match inserted {
            Ok(row) => {
                let record = enrollment_from_row(&row)?;
                tx.commit().await?;
                Ok(Some(record))
            }
            Err(err) => {
                tx.rollback().await?;
                Err(match StoreError::from(err) {
                    StoreError::Conflict { constraint, .. } => StoreError::Conflict {
                        constraint,
                        detail: format!("{} already has an enrolment under this claim", e.imei),
                    },
                    other => other,
                })
            }
        }
    }

    async fn get_enrollment(&self, id: Uuid) -> Result<EnrollmentRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            enrollment_cols!(),
            " FROM enrollments WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => enrollment_from_row(&r),
            None => Err(StoreError::NotFound(format!("enrolment {id}"))),
        }
    }

    async fn latest_enrollment(
        &self,
        claim_id: Uuid,
        imei: &Imei,
    ) -> Result<Option<EnrollmentRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            enrollment_cols!(),
            " FROM enrollments WHERE claim_id = $1 AND imei = $2 ORDER BY id DESC LIMIT 1"
        ))
        .bind(claim_id.to_string())
        .bind(imei.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    async fn list_enrollments(&self, f: &EnrollmentFilter) -> Result<Page<EnrollmentRecord>> {
        let limit = f.limit.clamp(1, 1000);
        let rows = sqlx::query(concat!(
            "SELECT ",
            enrollment_cols!(),
            " FROM enrollments WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR claim_id = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        ))
        .bind(f.state.map(EnrollmentState::as_str))
        .bind(f.claim_id.map(|c| c.to_string()))
        .bind(f.before.map(|b| b.to_string()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(enrollment_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |e| e.id.to_string()))
    }

    async fn decide_enrollment(
        &self,
        id: Uuid,
        to: EnrollmentState,
        by: &str,
        at: OffsetDateTime,
        reason: Option<&str>,
    ) -> Result<EnrollmentRecord> {
        if !matches!(to, EnrollmentState::Approved | EnrollmentState::Rejected) {
            return Err(StoreError::conflict(format!(
                "an enrolment is decided as approved or rejected, not {to}"
            )));
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row = sqlx::query(concat!(
            "UPDATE enrollments SET state = $2, decided_at = $3, decided_by = $4, reason = $5 \
             WHERE id = $1 AND state = 'pending' RETURNING ",
            enrollment_cols!()
        ))
        .bind(id.to_string())
        .bind(to.as_str())
        .bind(ms(at))
        .bind(by)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            let current = self.get_enrollment(id).await?;
            return Err(StoreError::conflict(match current.state {
                EnrollmentState::Rejected => format!("enrolment {id} is already rejected"),
                _ => format!(
                    "enrolment {id} is already approved (its certificate is {})",
                    current
                        .certificate_serial
                        .as_deref()
                        .unwrap_or("being issued")
                ),
            }));
        };
        let record = enrollment_from_row(&row)?;
        if to == EnrollmentState::Rejected {
            sqlx::query(
                "UPDATE claims SET enrollments_used = enrollments_used - 1 WHERE id = $1 AND enrollments_used > 0",
            )
            .bind(record.claim_id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn finish_enrollment(&self, id: Uuid, serial: &str) -> Result<EnrollmentRecord> {
        let row = sqlx::query(concat!(
            "UPDATE enrollments SET state = 'issued', certificate_serial = $2 \
             WHERE id = $1 AND state = 'approved' RETURNING ",
            enrollment_cols!()
        ))
        .bind(id.to_string())
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => enrollment_from_row(&r),
            None => {
                let current = self.get_enrollment(id).await?;
                Err(StoreError::conflict(format!(
                    "enrolment {id} is {}, not approved",
                    current.state
                )))
            }
        }
    }

    async fn undo_approval(&self, id: Uuid) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let deleted = sqlx::query(
            "DELETE FROM enrollments WHERE id = $1 AND state = 'approved' AND decided_by = $2 RETURNING claim_id",
        )
        .bind(id.to_string())
        .bind(AUTO_APPROVER)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = deleted {
            let claim_id: String = row.try_get("claim_id")?;
            sqlx::query(
                "UPDATE claims SET enrollments_used = enrollments_used - 1 WHERE id = $1 AND enrollments_used > 0",
            )
            .bind(claim_id)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE enrollments SET state = 'pending', decided_at = NULL, decided_by = NULL \
                 WHERE id = $1 AND state = 'approved'",
            )
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
