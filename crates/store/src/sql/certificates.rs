//! The certificate inventory seen as a fleet ([`CertificateWatch`]): listing across devices,
//! the expiry watch's notices and counts, and the audit checks. A module of `sqlite.rs` and
//! of `postgres.rs`, beside `common`.
//!
//! Every query is one set-based statement (no per-device loop), served by the indexes of
//! migration 0011: `certificates (not_after, serial)` (partial: unrevoked rows, and a full
//! one), `certificates (public_key_sha256)` and the `(imei, created_at)` index of 0001.

use async_trait::async_trait;
use callhome_core::{CertificateState, Imei};
use sqlx::{QueryBuilder, Row as _};
use time::OffsetDateTime;

use crate::conv::{from_ms, ms, opt_from_ms, page, parse_col};
use crate::{
    CertificateCounts, CertificateFilter, CertificateRecord, CertificateRef, CertificateWatch,
    ExpiryCandidate, Page, Result, certificate_cursor,
};

use super::Db;
use super::common::{DbRow, SqlStore, cert_from_row};

/// The columns of a [`CertificateRef`], of the certificate aliased `c`.
macro_rules! ref_cols {
    () => {
        "c.serial, c.imei, c.not_after, c.created_at, c.revoked_at, c.public_key_sha256"
    };
}

/// `c` is active at `$1`.
macro_rules! active {
    ($alias:literal) => {
        concat!(
            $alias,
            ".revoked_at IS NULL AND ",
            $alias,
            ".not_after > $1"
        )
    };
}

fn ref_from_row(r: &DbRow) -> Result<CertificateRef> {
    Ok(CertificateRef {
        serial: r.try_get("serial")?,
        imei: parse_col(
            "certificates.imei",
            &r.try_get::<String, _>("imei")?,
            Imei::parse,
        )?,
        not_after: from_ms(r.try_get("not_after")?),
        created_at: from_ms(r.try_get("created_at")?),
        revoked_at: opt_from_ms(r.try_get("revoked_at")?),
        public_key_sha256: r.try_get("public_key_sha256")?,
    })
}

fn threshold(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl SqlStore {
    async fn refs(&self, sql: &'static str, now: OffsetDateTime) -> Result<Vec<CertificateRef>> {
        let rows = sqlx::query(sql).bind(ms(now)).fetch_all(&self.pool).await?;
        rows.iter().map(ref_from_row).collect()
    }
}

#[async_trait]
impl CertificateWatch for SqlStore {
    async fn list_all_certificates(
        &self,
        f: &CertificateFilter,
    ) -> Result<Page<CertificateRecord>> {
        let limit = f.limit.clamp(1, 1000);
        let now = ms(f.now);
        let mut q = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            cert_cols!(),
            " FROM certificates WHERE 1 = 1"
        ));
        if let Some(until) = f.expiring_before {
            q.push(" AND not_after > ")
                .push_bind(now)
                .push(" AND not_after <= ")
                .push_bind(ms(until));
        }
        match f.state {
            None => {}
            Some(CertificateState::Active) => {
                q.push(" AND revoked_at IS NULL AND not_after > ")
                    .push_bind(now);
            }
            Some(CertificateState::Revoked) => {
                q.push(" AND revoked_at IS NOT NULL");
            }
            Some(CertificateState::Expired) => {
                q.push(" AND revoked_at IS NULL AND not_after <= ")
                    .push_bind(now);
            }
        }
        if let Some(imei) = &f.imei {
            q.push(" AND imei = ").push_bind(imei.to_string());
        }
        if let Some((t, serial)) = &f.after {
            q.push(" AND (not_after > ")
                .push_bind(ms(*t))
                .push(" OR (not_after = ")
                .push_bind(ms(*t))
                .push(" AND serial > ")
                .push_bind(serial.clone())
                .push("))");
        }
        q.push(" ORDER BY not_after, serial LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows.iter().map(cert_from_row).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |c| {
            certificate_cursor(c.not_after, &c.serial)
        }))
    }

    async fn expiry_candidates(
        &self,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<ExpiryCandidate>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            ref_cols!(),
            ", (SELECT MIN(x.threshold_days) FROM certificate_expiry_notices x WHERE x.serial = c.serial) AS tightest \
             FROM certificates c WHERE ",
            active!("c"),
            " AND c.not_after <= $2 \
             AND NOT EXISTS (SELECT 1 FROM certificates n WHERE n.imei = c.imei AND ",
            active!("n"),
            " AND (n.created_at > c.created_at OR (n.created_at = c.created_at AND n.serial > c.serial))) \
             ORDER BY c.not_after, c.serial"
        ))
        .bind(ms(now))
        .bind(ms(until))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ExpiryCandidate {
                    cert: ref_from_row(r)?,
                    tightest_noticed: r.try_get::<Option<i64>, _>("tightest")?.map(threshold),
                })
            })
            .collect()
    }

    async fn record_expiry_notice(
        &self,
        serial: &str,
        threshold_days: u32,
        published: bool,
        at: OffsetDateTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO certificate_expiry_notices (serial, threshold_days, notified_at, published) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (serial, threshold_days) DO NOTHING",
        )
        .bind(serial)
        .bind(i64::from(threshold_days))
        .bind(ms(at))
        .bind(published)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn expiry_notices(&self, serial: &str) -> Result<Vec<(u32, bool)>> {
        let rows = sqlx::query(
            "SELECT threshold_days, published FROM certificate_expiry_notices \
             WHERE serial = $1 ORDER BY threshold_days DESC",
        )
        .bind(serial)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    threshold(r.try_get("threshold_days")?),
                    r.try_get("published")?,
                ))
            })
            .collect()
    }

    async fn count_expiring(&self, now: OffsetDateTime, days: &[u32]) -> Result<Vec<i64>> {
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Db>::new("SELECT ");
        for (i, d) in days.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.push("COALESCE(SUM(CASE WHEN not_after <= ")
                .push_bind(ms(now + time::Duration::days(i64::from(*d))))
                .push(" THEN 1 ELSE 0 END), 0)");
        }
        q.push(" FROM certificates WHERE revoked_at IS NULL AND not_after > ")
            .push_bind(ms(now));
        let row = q.build().fetch_one(&self.pool).await?;
        (0..days.len())
            .map(|i| Ok(row.try_get::<i64, _>(i)?))
            .collect()
    }

    async fn count_certificates(&self, now: OffsetDateTime) -> Result<CertificateCounts> {
        let row = sqlx::query(
            "SELECT \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND not_after > $1 THEN 1 ELSE 0 END), 0) AS active, \
             COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS revoked, \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND not_after <= $1 THEN 1 ELSE 0 END), 0) AS expired \
             FROM certificates",
        )
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(CertificateCounts {
            active: row.try_get("active")?,
            revoked: row.try_get("revoked")?,
            expired: row.try_get("expired")?,
        })
    }

    async fn active_certificate(
        &self,
        imei: &Imei,
        preferred: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<CertificateRef>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            ref_cols!(),
            " FROM certificates c WHERE c.imei = $2 AND ",
            active!("c"),
            " ORDER BY CASE WHEN c.serial = $3 THEN 0 ELSE 1 END, c.created_at DESC, c.serial DESC LIMIT 1"
        ))
        .bind(ms(now))
        .bind(imei.as_str())
        .bind(preferred.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(ref_from_row).transpose()
    }

    async fn certificates_without_public_key(&self, limit: u32) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT serial, certificate_pem FROM certificates \
             WHERE public_key_sha256 IS NULL ORDER BY serial LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("serial")?, r.try_get("certificate_pem")?)))
            .collect()
    }

    async fn set_certificate_public_key(&self, serial: &str, sha256: &str) -> Result<()> {
        sqlx::query("UPDATE certificates SET public_key_sha256 = $2 WHERE serial = $1")
            .bind(serial)
            .bind(sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn shared_key_certificates(&self, now: OffsetDateTime) -> Result<Vec<CertificateRef>> {
        self.refs(
            concat!(
                "SELECT ",
                ref_cols!(),
                " FROM certificates c WHERE ",
                active!("c"),
                " AND c.public_key_sha256 IN (SELECT k.public_key_sha256 FROM certificates k \
                 WHERE k.public_key_sha256 IS NOT NULL AND k.public_key_sha256 <> '' AND ",
                active!("k"),
                " GROUP BY k.public_key_sha256 HAVING COUNT(DISTINCT k.imei) > 1) \
                 ORDER BY c.public_key_sha256, c.imei, c.serial"
            ),
            now,
        )
        .await
    }

    async fn multiple_active_certificates(
        &self,
        now: OffsetDateTime,
        superseded_before: OffsetDateTime,
    ) -> Result<Vec<CertificateRef>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            ref_cols!(),
            " FROM certificates c WHERE ",
            active!("c"),
            " AND c.imei IN (SELECT m.imei FROM certificates m WHERE ",
            active!("m"),
            " GROUP BY m.imei HAVING COUNT(*) > 1 AND MAX(m.created_at) <= $2) \
             ORDER BY c.imei, c.created_at DESC, c.serial DESC"
        ))
        .bind(ms(now))
        .bind(ms(superseded_before))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ref_from_row).collect()
    }

    async fn connected_invalid_certificates(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRef>> {
        self.refs(
            concat!(
                "SELECT ",
                ref_cols!(),
                " FROM devices d JOIN certificates c ON c.serial = d.cert_serial \
                 WHERE d.online AND (c.revoked_at IS NOT NULL OR c.not_after <= $1) \
                 ORDER BY d.imei, c.serial"
            ),
            now,
        )
        .await
    }
}
