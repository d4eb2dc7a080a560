//! Bootstrap secrets for EST enrolment: a module of `sqlite.rs` and of `postgres.rs`,
//! beside `common`.
//!
//! One row per device at most (the IMEI is the key). Consuming is one `DELETE` conditioned
//! on the hash and the expiry, so of two enrolments racing with the same secret only one
//! deletes the row and goes on to be issued a certificate.

use async_trait::async_trait;
use callhome_core::Imei;
use sqlx::Row as _;
use time::OffsetDateTime;

use crate::conv::{from_ms, ms, parse_col};
use crate::{BootstrapSecret, BootstrapSecrets, Result};

use super::common::SqlStore;

#[async_trait]
impl BootstrapSecrets for SqlStore {
    async fn put_bootstrap_secret(&self, s: &BootstrapSecret) -> Result<()> {
        sqlx::query(
            "INSERT INTO bootstrap_secrets (imei, secret_hash, expires_at, created_at, created_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (imei) DO UPDATE SET secret_hash = excluded.secret_hash, expires_at = excluded.expires_at, \
             created_at = excluded.created_at, created_by = excluded.created_by",
        )
        .bind(s.imei.as_str())
        .bind(&s.secret_hash)
        .bind(ms(s.expires_at))
        .bind(ms(s.created_at))
        .bind(&s.created_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn restore_bootstrap_secret(&self, s: &BootstrapSecret) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO bootstrap_secrets (imei, secret_hash, expires_at, created_at, created_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (imei) DO NOTHING",
        )
        .bind(s.imei.as_str())
        .bind(&s.secret_hash)
        .bind(ms(s.expires_at))
        .bind(ms(s.created_at))
        .bind(&s.created_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_bootstrap_secret(&self, imei: &Imei) -> Result<Option<BootstrapSecret>> {
        let row = sqlx::query(
            "SELECT imei, secret_hash, expires_at, created_at, created_by FROM bootstrap_secrets WHERE imei = $1",
        )
        .bind(imei.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(BootstrapSecret {
                imei: parse_col(
                    "bootstrap_secrets.imei",
                    &r.try_get::<String, _>("imei")?,
                    Imei::parse,
                )?,
                secret_hash: r.try_get("secret_hash")?,
                expires_at: from_ms(r.try_get("expires_at")?),
                created_at: from_ms(r.try_get("created_at")?),
                created_by: r.try_get("created_by")?,
            })
        })
        .transpose()
    }

    async fn consume_bootstrap_secret(
        &self,
        imei: &Imei,
        secret_hash: &str,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM bootstrap_secrets WHERE imei = $1 AND secret_hash = $2 AND expires_at > $3",
        )
        .bind(imei.as_str())
        .bind(secret_hash)
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_bootstrap_secret(&self, imei: &Imei) -> Result<bool> {
        let done = sqlx::query("DELETE FROM bootstrap_secrets WHERE imei = $1")
            .bind(imei.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
