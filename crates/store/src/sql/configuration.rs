//! Fleet configuration: a module of `sqlite.rs` and of `postgres.rs`, beside `common`.

use async_trait::async_trait;
use callhome_core::{DriftState, Imei};
use sqlx::{QueryBuilder, Row as _};
use time::OffsetDateTime;

use crate::conv::{from_ms, ms, opt_from_ms, parse_col};
use crate::{Devices, Result, StoreError};

use super::common::*;
use super::{BEGIN_WRITE, Db};
use crate::vault::Vault;

use crate::{Configuration, DeviceConfigRecord, NewProfileVersion, ProfileRecord};

macro_rules! profile_select {
    () => {
        "SELECT p.name, p.tag, p.priority, p.current_version, v.version, v.config, v.created_at, v.created_by \
         FROM profiles p JOIN profile_versions v ON v.name = p.name"
    };
}

pub(super) fn profile_from_row(v: &Vault, r: &DbRow) -> Result<ProfileRecord> {
    Ok(ProfileRecord {
        name: r.try_get("name")?,
        tag: r.try_get("tag")?,
        priority: r.try_get("priority")?,
        version: r.try_get("version")?,
        current_version: r.try_get("current_version")?,
        config: v.open_lines(r.try_get("config")?),
        created_at: from_ms(r.try_get("created_at")?),
        created_by: r.try_get("created_by")?,
    })
}

macro_rules! device_config_cols {
    () => {
        "overrides, document, reported, reported_at, drift, drift_keys, drift_checked_at"
    };
}

pub(super) fn device_config_from_row(v: &Vault, r: &DbRow) -> Result<DeviceConfigRecord> {
    Ok(DeviceConfigRecord {
        overrides: v.open_json(r.try_get("overrides")?),
        document: r
            .try_get::<Option<String>, _>("document")?
            .map(|d| v.open_lines(d)),
        reported: r
            .try_get::<Option<String>, _>("reported")?
            .map(|d| v.open_lines(d)),
        reported_at: opt_from_ms(r.try_get("reported_at")?),
        drift: parse_col(
            "device_config.drift",
            &r.try_get::<String, _>("drift")?,
            DriftState::parse,
        )?,
        drift_keys: r.try_get("drift_keys")?,
        drift_checked_at: opt_from_ms(r.try_get("drift_checked_at")?),
    })
}

impl SqlStore {
    /// Makes sure a device has a `device_config` row (the device must exist).
    async fn ensure_device_config(&self, imei: &Imei, by: &str) -> Result<()> {
        self.get_device(imei).await?;
        sqlx::query(
            "INSERT INTO device_config (imei, overrides, drift, updated_at, updated_by) VALUES ($1, '{}', 'unknown', $2, $3) \
             ON CONFLICT (imei) DO NOTHING",
        )
        .bind(imei.as_str())
        .bind(ms(OffsetDateTime::now_utc()))
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Configuration for SqlStore {
    async fn put_profile(&self, p: &NewProfileVersion) -> Result<ProfileRecord> {
        let now = ms(OffsetDateTime::now_utc());
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT current_version FROM profiles WHERE name = $1")
                .bind(&p.name)
                .fetch_optional(&mut *tx)
                .await?;
        let version = current.unwrap_or(0) + 1;
        if current.is_some() {
            sqlx::query(
                "UPDATE profiles SET tag = $2, priority = $3, current_version = $4, updated_at = $5, updated_by = $6 WHERE name = $1",
            )
            .bind(&p.name)
            .bind(p.tag.as_deref())
            .bind(p.priority)
            .bind(version)
            .bind(now)
            .bind(&p.by)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO profiles (name, tag, priority, current_version, created_at, updated_at, updated_by) \
                 VALUES ($1, $2, $3, $4, $5, $5, $6)",
            )
            .bind(&p.name)
            .bind(p.tag.as_deref())
            .bind(p.priority)
            .bind(version)
            .bind(now)
            .bind(&p.by)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("INSERT INTO profile_versions (name, version, config, created_at, created_by) VALUES ($1, $2, $3, $4, $5)")
            .bind(&p.name)
            .bind(version)
            .bind(self.vault.seal_lines(&p.config).as_ref())
            .bind(now)
            .bind(&p.by)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_profile(&p.name, Some(version)).await
    }

    async fn get_profile(&self, name: &str, version: Option<i64>) -> Result<ProfileRecord> {
        let row = sqlx::query(concat!(
            profile_select!(),
            " WHERE p.name = $1 AND v.version = COALESCE($2, p.current_version)"
        ))
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| match version {
            Some(v) => StoreError::NotFound(format!("profile {name:?} version {v}")),
            None => StoreError::NotFound(format!("profile {name:?}")),
        })?;
        profile_from_row(&self.vault, &row)
    }

    async fn list_profiles(&self) -> Result<Vec<ProfileRecord>> {
        let rows = sqlx::query(concat!(
            profile_select!(),
            " WHERE v.version = p.current_version ORDER BY p.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| profile_from_row(&self.vault, r))
            .collect()
    }

    async fn delete_profile(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        sqlx::query("DELETE FROM profile_versions WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM profiles WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("profile {name:?}")));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn profile_for_tags(&self, tags: &[String]) -> Result<Option<ProfileRecord>> {
        if tags.is_empty() {
            return Ok(None);
        }
        let mut q = QueryBuilder::<Db>::new(concat!(
            profile_select!(),
            " WHERE v.version = p.current_version AND p.tag IN ("
        ));
        let mut sep = q.separated(", ");
        for t in tags {
            sep.push_bind(t.clone());
        }
        q.push(") ORDER BY p.priority DESC, p.name LIMIT 1");
        let row = q.build().fetch_optional(&self.pool).await?;
        row.as_ref()
            .map(|r| profile_from_row(&self.vault, r))
            .transpose()
    }

    async fn get_device_config(&self, imei: &Imei) -> Result<DeviceConfigRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_config_cols!(),
            " FROM device_config WHERE imei = $1"
        ))
        .bind(imei.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => device_config_from_row(&self.vault, &r),
            None => {
                self.get_device(imei).await?;
                Ok(DeviceConfigRecord {
                    overrides: "{}".to_owned(),
                    drift: DriftState::Unknown,
                    ..Default::default()
                })
            }
        }
    }

    async fn set_overrides(
        &self,
        imei: &Imei,
        overrides: &str,
        document: Option<&str>,
        by: &str,
    ) -> Result<DeviceConfigRecord> {
        self.ensure_device_config(imei, by).await?;
        sqlx::query("UPDATE device_config SET overrides = $2, document = $3, updated_at = $4, updated_by = $5 WHERE imei = $1")
            .bind(imei.as_str())
            .bind(self.vault.seal_json(overrides).as_ref())
            .bind(document.map(|d| self.vault.seal_lines(d)).as_deref())
            .bind(ms(OffsetDateTime::now_utc()))
            .bind(by)
            .execute(&self.pool)
            .await?;
        self.get_device_config(imei).await
    }

    async fn set_reported(&self, imei: &Imei, config: &str, at: OffsetDateTime) -> Result<()> {
        self.ensure_device_config(imei, "gateway").await?;
        sqlx::query("UPDATE device_config SET reported = $2, reported_at = $3 WHERE imei = $1")
            .bind(imei.as_str())
            .bind(self.vault.seal_lines(config).as_ref())
            .bind(ms(at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn devices_due_for_drift_check(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Imei>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT d.imei FROM devices d LEFT JOIN device_config c ON c.imei = d.imei \
             WHERE d.online = $1 AND d.disabled = $2 AND (c.drift_checked_at IS NULL OR c.drift_checked_at < $3) \
             ORDER BY COALESCE(c.drift_checked_at, 0), d.imei LIMIT $4",
        )
        .bind(true)
        .bind(false)
        .bind(ms(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|s| parse_col("devices.imei", s, Imei::parse))
            .collect()
    }

    async fn set_drift(
        &self,
        imei: &Imei,
        drift: DriftState,
        keys: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        self.ensure_device_config(imei, "drift-check").await?;
        sqlx::query("UPDATE device_config SET drift = $2, drift_keys = $3, drift_checked_at = $4 WHERE imei = $1")
            .bind(imei.as_str())
            .bind(drift.as_str())
            .bind(keys)
            .bind(ms(at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_drift_if_reported(
        &self,
        imei: &Imei,
        drift: DriftState,
        keys: Option<&str>,
        at: OffsetDateTime,
        reported_at: OffsetDateTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE device_config SET drift = $2, drift_keys = $3, drift_checked_at = $4 WHERE imei = $1 AND reported_at = $5",
        )
        .bind(imei.as_str())
        .bind(drift.as_str())
        .bind(keys)
        .bind(ms(at))
        .bind(ms(reported_at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
