//! Firmware: the repository's records, what devices report, download tokens and the event
//! logs of firmware campaigns. A module of `sqlite.rs` and of `postgres.rs`, beside `common`.

use std::str::FromStr as _;

use async_trait::async_trait;
use callhome_core::Imei;
use callhome_core::firmware::{ExecEventKind, FirmwareKind};
use sqlx::Row as _;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::conv::{from_ms, ms, opt_from_ms, page, parse_col};
use crate::{
    DistributionRow, DownloadProgress, DownloadRecord, ExecEventRecord, Firmware,
    FirmwareHistoryEntry, FirmwareRecord, NewDownload, Page, Result, StoreError,
};

use super::BEGIN_WRITE;
use super::common::*;

macro_rules! firmware_cols {
    () => {
        "id, version, models, kind, notes, min_version, sha256, size, signed_by, jad, created_at, created_by"
    };
}

macro_rules! download_cols {
    () => {
        "token_hash, token, job_id, imei, attempt, firmware_id, created_at, expires_at, requests, resumptions, bytes_served, completed_at, refused, notify_code, notify_message, notified_at, closed_at"
    };
}

/// The vault's name for download tokens (bound into their encryption).
const TOKEN_KEY: &str = "firmware_download_token";

/// Most entries of an execution's event log returned (and kept: appends beyond it are
/// dropped, so a modem that loops cannot grow the log without bound).
const MAX_EVENTS: i64 = 1000;

fn firmware_from_row(r: &DbRow) -> Result<FirmwareRecord> {
    let models: String = r.try_get("models")?;
    Ok(FirmwareRecord {
        id: parse_col(
            "firmware.id",
            &r.try_get::<String, _>("id")?,
            Uuid::from_str,
        )?,
        version: r.try_get("version")?,
        models: serde_json::from_str(&models).map_err(|e| StoreError::Corrupt {
            column: "firmware.models",
            reason: e.to_string(),
        })?,
        kind: parse_col(
            "firmware.kind",
            &r.try_get::<String, _>("kind")?,
            FirmwareKind::parse,
        )?,
        notes: r.try_get("notes")?,
        min_version: r.try_get("min_version")?,
        sha256: r.try_get("sha256")?,
        size: r.try_get("size")?,
        signed_by: r.try_get("signed_by")?,
        jad: r.try_get("jad")?,
        created_at: from_ms(r.try_get("created_at")?),
        created_by: r.try_get("created_by")?,
    })
}

impl SqlStore {
    fn download_from_row(&self, r: &DbRow) -> Result<DownloadRecord> {
        Ok(DownloadRecord {
            token_hash: r.try_get("token_hash")?,
            token: {
                let stored: String = r.try_get("token")?;
                self.vault.decrypt(TOKEN_KEY, &stored).unwrap_or(stored)
            },
            job_id: parse_col(
                "firmware_downloads.job_id",
                &r.try_get::<String, _>("job_id")?,
                Uuid::from_str,
            )?,
            imei: parse_col(
                "firmware_downloads.imei",
                &r.try_get::<String, _>("imei")?,
                Imei::parse,
            )?,
            attempt: r.try_get("attempt")?,
            firmware_id: parse_col(
                "firmware_downloads.firmware_id",
                &r.try_get::<String, _>("firmware_id")?,
                Uuid::from_str,
            )?,
            created_at: from_ms(r.try_get("created_at")?),
            expires_at: from_ms(r.try_get("expires_at")?),
            requests: r.try_get("requests")?,
            resumptions: r.try_get("resumptions")?,
            bytes_served: r.try_get("bytes_served")?,
            completed_at: opt_from_ms(r.try_get("completed_at")?),
            refused: r.try_get("refused")?,
            notify_code: r.try_get("notify_code")?,
            notify_message: r.try_get("notify_message")?,
            notified_at: opt_from_ms(r.try_get("notified_at")?),
            closed_at: opt_from_ms(r.try_get("closed_at")?),
        })
    }
}

#[async_trait]
impl Firmware for SqlStore {
    async fn create_firmware(&self, fw: &FirmwareRecord) -> Result<FirmwareRecord> {
        let inserted = sqlx::query(concat!(
            "INSERT INTO firmware (",
            firmware_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
            firmware_cols!()
        ))
        .bind(fw.id.to_string())
        .bind(&fw.version)
        .bind(serde_json::Value::from(fw.models.clone()).to_string())
        .bind(fw.kind.as_str())
        .bind(fw.notes.as_deref())
        .bind(fw.min_version.as_deref())
        .bind(&fw.sha256)
        .bind(fw.size)
        .bind(fw.signed_by.as_deref())
        .bind(fw.jad.as_deref())
        .bind(ms(fw.created_at))
        .bind(&fw.created_by)
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => firmware_from_row(&row),
            Err(e) => match StoreError::from(e) {
                StoreError::Conflict { .. } => {
                    Err(match self.firmware_by_sha256(&fw.sha256).await? {
                        Some(existing) => StoreError::conflict(format!(
                            "this file is already in the repository as firmware {} (version {})",
                            existing.id, existing.version
                        )),
                        None => StoreError::conflict("this file is already in the repository"),
                    })
                }
                other => Err(other),
            },
        }
    }

    async fn get_firmware(&self, id: Uuid) -> Result<FirmwareRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            firmware_cols!(),
            " FROM firmware WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("firmware {id}")))?;
        firmware_from_row(&row)
    }

    async fn firmware_by_sha256(&self, sha256: &str) -> Result<Option<FirmwareRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            firmware_cols!(),
            " FROM firmware WHERE sha256 = $1"
        ))
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(firmware_from_row)
        .transpose()
    }

    async fn list_firmware(
        &self,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<FirmwareRecord>> {
        let limit = limit.clamp(1, 1000);
        let rows = sqlx::query(concat!(
            "SELECT ",
            firmware_cols!(),
            " FROM firmware WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(before.map(|b| b.to_string()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(firmware_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |f| f.id.to_string()))
    }

    async fn delete_firmware(&self, id: Uuid) -> Result<FirmwareRecord> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            firmware_cols!(),
            " FROM firmware WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("firmware {id}")))?;
        let fw = firmware_from_row(&row)?;
        let using: Option<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE firmware_id = $1 AND state IN ('running', 'paused') ORDER BY id LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(job) = using {
            return Err(StoreError::conflict(format!(
                "firmware {id} is used by campaign {job}, which is still running or paused; cancel it or let it finish first"
            )));
        }
        sqlx::query("DELETE FROM firmware WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(fw)
    }

    async fn firmware_distribution(&self) -> Result<Vec<DistributionRow>> {
        let rows = sqlx::query(
            "SELECT model, firmware_version, COUNT(*) AS n FROM devices \
             GROUP BY model, firmware_version ORDER BY n DESC, model, firmware_version LIMIT 10000",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DistributionRow {
                    model: r.try_get("model")?,
                    version: r.try_get("firmware_version")?,
                    devices: r.try_get("n")?,
                })
            })
            .collect()
    }

    async fn report_device_firmware(
        &self,
        imei: &Imei,
        model: Option<&str>,
        version: Option<&str>,
        source: &str,
        at: OffsetDateTime,
    ) -> Result<Option<(Option<String>, Option<String>)>> {
        if model.is_none() && version.is_none() {
            return Ok(None);
        }
        // The usual report changes nothing: one read, no write.
        let current = sqlx::query("SELECT model, firmware_version FROM devices WHERE imei = $1")
            .bind(imei.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("device {imei}")))?;
        let old_model: Option<String> = current.try_get("model")?;
        let old_version: Option<String> = current.try_get("firmware_version")?;
        let new_model = model.map(str::to_owned).or_else(|| old_model.clone());
        let new_version = version.map(str::to_owned).or_else(|| old_version.clone());
        if new_model == old_model && new_version == old_version {
            return Ok(None);
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // Only if nobody changed it meanwhile (else the later report wins).
        let done = sqlx::query(
            "UPDATE devices SET model = $2, firmware_version = $3, firmware_reported_at = $4 \
             WHERE imei = $1 AND model IS NOT DISTINCT FROM $5 AND firmware_version IS NOT DISTINCT FROM $6",
        )
        .bind(imei.as_str())
        .bind(new_model.as_deref())
        .bind(new_version.as_deref())
        .bind(ms(at))
        .bind(old_model.as_deref())
        .bind(old_version.as_deref())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO device_firmware_history (imei, at, model, version, source) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(imei.as_str())
        .bind(ms(at))
        .bind(new_model.as_deref())
        .bind(new_version.as_deref())
        .bind(source)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((old_version, old_model)))
    }

    async fn device_firmware_history(
        &self,
        imei: &Imei,
        limit: u32,
    ) -> Result<Vec<FirmwareHistoryEntry>> {
        let rows = sqlx::query(
            "SELECT at, model, version, source FROM device_firmware_history WHERE imei = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(imei.as_str())
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FirmwareHistoryEntry {
                    at: from_ms(r.try_get("at")?),
                    model: r.try_get("model")?,
                    version: r.try_get("version")?,
                    source: r.try_get("source")?,
                })
            })
            .collect()
    }

    async fn create_download(&self, d: &NewDownload) -> Result<DownloadRecord> {
        let sealed = self
            .vault
            .encrypt(TOKEN_KEY, &d.token)
            .unwrap_or_else(|| d.token.clone());
        sqlx::query(
            "INSERT INTO firmware_downloads (token_hash, token, job_id, imei, attempt, firmware_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (job_id, imei, attempt) DO NOTHING",
        )
        .bind(&d.token_hash)
        .bind(&sealed)
        .bind(d.job_id.to_string())
        .bind(d.imei.as_str())
        .bind(d.attempt)
        .bind(d.firmware_id.to_string())
        .bind(ms(d.at))
        .bind(ms(d.expires_at))
        .execute(&self.pool)
        .await?;
        self.download_of(d.job_id, &d.imei, d.attempt)
            .await?
            .ok_or_else(|| StoreError::NotFound("download token".to_owned()))
    }

    async fn get_download(&self, token_hash: &str) -> Result<DownloadRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            download_cols!(),
            " FROM firmware_downloads WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound("download token".to_owned()))?;
        self.download_from_row(&row)
    }

    async fn download_of(
        &self,
        job_id: Uuid,
        imei: &Imei,
        attempt: i64,
    ) -> Result<Option<DownloadRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            download_cols!(),
            " FROM firmware_downloads WHERE job_id = $1 AND imei = $2 AND attempt = $3"
        ))
        .bind(job_id.to_string())
        .bind(imei.as_str())
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| self.download_from_row(&r))
        .transpose()
    }

    async fn record_download(
        &self,
        token_hash: &str,
        p: &DownloadProgress,
    ) -> Result<DownloadRecord> {
        let last: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT last_start, last_sent FROM firmware_downloads WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let resumes_inside =
            matches!(last, Some((Some(s), Some(n))) if p.start > s && p.start < s + n);
        // `$6`: this request resumes inside the previous response, so the modem kept only
        // `start - last_start` of what that response wrote.
        let row = sqlx::query(concat!(
            "UPDATE firmware_downloads SET requests = requests + 1, resumptions = resumptions + $2, \
             bytes_served = bytes_served + $3 - CASE WHEN $6 THEN last_start + last_sent - $7 ELSE 0 END, \
             completed_at = CASE WHEN $4 THEN CASE WHEN $6 THEN $5 ELSE COALESCE(completed_at, $5) END \
                                 WHEN $6 THEN NULL ELSE completed_at END, \
             last_start = $7, last_sent = $3 \
             WHERE token_hash = $1 RETURNING ",
            download_cols!()
        ))
        .bind(token_hash)
        .bind(i64::from(p.resumed))
        .bind(p.bytes)
        .bind(p.completed)
        .bind(ms(p.at))
        .bind(resumes_inside)
        .bind(p.start)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound("download token".to_owned()))?;
        self.download_from_row(&row)
    }

    async fn record_download_refusal(&self, token_hash: &str, why: &str) -> Result<()> {
        sqlx::query("UPDATE firmware_downloads SET refused = $2 WHERE token_hash = $1")
            .bind(token_hash)
            .bind(why)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_install_notify(
        &self,
        token_hash: &str,
        code: i64,
        message: &str,
        at: OffsetDateTime,
    ) -> Result<DownloadRecord> {
        let row = sqlx::query(concat!(
            "UPDATE firmware_downloads SET notify_code = $2, notify_message = $3, notified_at = $4 \
             WHERE token_hash = $1 RETURNING ",
            download_cols!()
        ))
        .bind(token_hash)
        .bind(code)
        .bind(message)
        .bind(ms(at))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound("download token".to_owned()))?;
        self.download_from_row(&row)
    }

    async fn close_downloads(&self, job_id: Uuid, imei: &Imei, at: OffsetDateTime) -> Result<()> {
        sqlx::query(
            "UPDATE firmware_downloads SET closed_at = $3 WHERE job_id = $1 AND imei = $2 AND closed_at IS NULL",
        )
        .bind(job_id.to_string())
        .bind(imei.as_str())
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append_job_event(
        &self,
        job_id: Uuid,
        imei: &Imei,
        kind: ExecEventKind,
        detail: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO job_device_events (job_id, imei, at, kind, detail) \
             SELECT $1, $2, $3, $4, $5 WHERE (SELECT COUNT(*) FROM job_device_events WHERE job_id = $1 AND imei = $2) < $6",
        )
        .bind(job_id.to_string())
        .bind(imei.as_str())
        .bind(ms(at))
        .bind(kind.as_str())
        .bind(detail)
        .bind(MAX_EVENTS)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_job_events(&self, job_id: Uuid, imei: &Imei) -> Result<Vec<ExecEventRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, kind, detail FROM job_device_events WHERE job_id = $1 AND imei = $2 ORDER BY id LIMIT $3",
        )
        .bind(job_id.to_string())
        .bind(imei.as_str())
        .bind(MAX_EVENTS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ExecEventRecord {
                    id: r.try_get("id")?,
                    at: from_ms(r.try_get("at")?),
                    kind: parse_col(
                        "job_device_events.kind",
                        &r.try_get::<String, _>("kind")?,
                        ExecEventKind::parse,
                    )?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
