//! The SQL implementation of the repository traits, written once and compiled for each
//! backend: `sqlite.rs` and `postgres.rs` each define `Db`, `MIGRATOR`, `BACKEND`,
//! `BEGIN_WRITE` and `connect()`, and declare this file and its siblings (`gateway`,
//! `sessions`, `configuration`, `jobs`) as their modules (`#[path]`), so each statement is
//! written once and type-checked against both drivers. Keep every statement valid on both
//! databases (`$n` placeholders, `RETURNING`, `ON CONFLICT`, epoch-millisecond integers).

use std::str::FromStr as _;

use async_trait::async_trait;
use callhome_core::{ActorKind, AuditOutcome, Imei, Role};
use sqlx::{Pool, QueryBuilder, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::conv::{from_ms, like_pattern, ms, opt_from_ms, page, parse_col};
use crate::vault::{self, Vault};
use crate::{
    ApiKey, ApiKeys, Audit, AuditEntry, AuditFilter, Backend, CertificateRecord, Certificates,
    Device, DeviceFilter, DevicePatch, Devices, NewApiKey, NewAuditEntry, NewDevice, NewUser,
    OpenOptions, Page, Result, Revocation, Store, StoreError, User, UserPatch, Users,
};

use super::{BACKEND, BEGIN_WRITE, Db, MIGRATOR, connect};

pub(super) type DbRow = <Db as sqlx::Database>::Row;

/// The repository on this backend's connection pool.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(super) pool: Pool<Db>,
    /// Encrypts secret Config.txt values on the way in, decrypts them on the way out.
    pub(super) vault: Vault,
    /// The `NOTIFY` channel of this database and schema ([`crate::CHANGES_CHANNEL`],
    /// suffixed with the schema unless it is `public`: channels are per database).
    pub(super) channel: String,
    /// Set by [`Store::close`]: change listeners give their pooled connection back, so
    /// that closing the pool does not wait for them.
    pub(super) closing: tokio::sync::watch::Sender<bool>,
}

impl SqlStore {
    /// Connects to `url`, runs the migrations and, with a master key, checks it against the
    /// database's (recording it on first use).
    pub async fn open(url: &str, options: &OpenOptions) -> Result<Self> {
        let pool = connect(url, options).await?;
        MIGRATOR.run(&pool).await?;
        let channel = if BACKEND == Backend::Postgres {
            let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                .fetch_one(&pool)
                .await?;
            if schema == "public" {
                crate::CHANGES_CHANNEL.to_owned()
            } else {
                format!("{}_{schema}", crate::CHANGES_CHANNEL)
            }
        } else {
            crate::CHANGES_CHANNEL.to_owned()
        };
        let store = Self {
            pool,
            vault: Vault::new(options.master_key.as_ref()),
            channel,
            closing: tokio::sync::watch::Sender::new(false),
        };
        if options.master_key.is_some() {
            store.check_master_key().await?;
        }
        Ok(store)
    }

    /// Records the key check on first use; afterwards refuses a key that does not decrypt it.
    async fn check_master_key(&self) -> Result<()> {
        if let Some(sealed) = self
            .vault
            .encrypt(vault::KEY_CHECK_NAME, vault::KEY_CHECK_PLAINTEXT)
        {
            sqlx::query(
                "INSERT INTO master_key_check (id, sealed, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
            )
            .bind(sealed)
            .bind(ms(OffsetDateTime::now_utc()))
            .execute(&self.pool)
            .await?;
        }
        let stored: String = sqlx::query_scalar("SELECT sealed FROM master_key_check WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        match self.vault.try_decrypt(vault::KEY_CHECK_NAME, &stored) {
            Some(p) if p == vault::KEY_CHECK_PLAINTEXT => Ok(()),
            _ => Err(StoreError::MasterKey(
                "this is not the key the database's secret values were encrypted with (master.key or CALLHOME_MASTER_KEY changed?); restore the original key".to_owned(),
            )),
        }
    }

    /// The underlying pool (for tests and maintenance tasks).
    pub fn pool(&self) -> &Pool<Db> {
        &self.pool
    }
}

macro_rules! user_cols {
    () => {
        "id, username, password_hash, role, disabled, token_version, created_at, updated_at"
    };
}

pub(super) fn user_from_row(r: &DbRow) -> Result<User> {
    Ok(User {
        id: parse_col("users.id", &r.try_get::<String, _>("id")?, Uuid::from_str)?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        role: parse_col(
            "users.role",
            &r.try_get::<String, _>("role")?,
            Role::from_str,
        )?,
        disabled: r.try_get("disabled")?,
        token_version: r.try_get("token_version")?,
        created_at: from_ms(r.try_get("created_at")?),
        updated_at: from_ms(r.try_get("updated_at")?),
    })
}

#[async_trait]
impl Users for SqlStore {
    async fn create_user(&self, user: &NewUser) -> Result<User> {
        let now = ms(OffsetDateTime::now_utc());
        let row = sqlx::query(concat!("INSERT INTO users (id, username, password_hash, role, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, FALSE, $5, $5) RETURNING ", user_cols!()))
        .bind(Uuid::now_v7().to_string())
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict { .. } => {
                StoreError::conflict(format!("user {:?} already exists", user.username))
            }
            other => other,
        })?;
        user_from_row(&row)
    }

    async fn get_user(&self, id: Uuid) -> Result<User> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
        user_from_row(&row)
    }

    async fn get_user_by_name(&self, username: &str) -> Result<User> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("user {username:?}")))?;
        user_from_row(&row)
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(&self, id: Uuid, patch: &UserPatch) -> Result<User> {
        let row = sqlx::query(concat!(
            "UPDATE users SET role = COALESCE($2, role), disabled = COALESCE($3, disabled), \
             password_hash = COALESCE($4, password_hash), updated_at = $5, \
             token_version = token_version + CASE WHEN $4 IS NOT NULL OR $3 = TRUE THEN 1 ELSE 0 END \
             WHERE id = $1 RETURNING ",
            user_cols!()
        ))
        .bind(id.to_string())
        .bind(patch.role.map(Role::as_str))
        .bind(patch.disabled)
        .bind(patch.password_hash.as_deref())
        .bind(ms(OffsetDateTime::now_utc()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
        user_from_row(&row)
    }

    async fn revoke_user_tokens(&self, id: Uuid) -> Result<User> {
        let row = sqlx::query(concat!(
            "UPDATE users SET token_version = token_version + 1, updated_at = $2 \
             WHERE id = $1 RETURNING ",
            user_cols!()
        ))
        .bind(id.to_string())
        .bind(ms(OffsetDateTime::now_utc()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
        user_from_row(&row)
    }
}

macro_rules! api_key_cols {
    () => {
        "id, name, prefix, key_hash, role, created_by, created_at, expires_at, last_used_at, revoked_at"
    };
}

pub(super) fn api_key_from_row(r: &DbRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: parse_col(
            "api_keys.id",
            &r.try_get::<String, _>("id")?,
            Uuid::from_str,
        )?,
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        key_hash: r.try_get("key_hash")?,
        role: parse_col(
            "api_keys.role",
            &r.try_get::<String, _>("role")?,
            Role::from_str,
        )?,
        created_by: r.try_get("created_by")?,
        created_at: from_ms(r.try_get("created_at")?),
        expires_at: opt_from_ms(r.try_get("expires_at")?),
        last_used_at: opt_from_ms(r.try_get("last_used_at")?),
        revoked_at: opt_from_ms(r.try_get("revoked_at")?),
    })
}

#[async_trait]
impl ApiKeys for SqlStore {
    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey> {
        let row = sqlx::query(concat!("INSERT INTO api_keys (id, name, prefix, key_hash, role, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ", api_key_cols!()))
        .bind(Uuid::now_v7().to_string())
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&key.key_hash)
        .bind(key.role.as_str())
        .bind(&key.created_by)
        .bind(ms(OffsetDateTime::now_utc()))
        .bind(key.expires_at.map(ms))
        .fetch_one(&self.pool)
        .await?;
        api_key_from_row(&row)
    }

    async fn get_api_key_by_prefix(&self, prefix: &str) -> Result<ApiKey> {
        let row = sqlx::query(concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE prefix = $1"
        ))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound("API key".to_owned()))?;
        api_key_from_row(&row)
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, id: Uuid, at: OffsetDateTime) -> Result<ApiKey> {
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING ",
            api_key_cols!()
        ))
        .bind(id.to_string())
        .bind(ms(at))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => api_key_from_row(&row),
            None => {
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT id FROM api_keys WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await?;
                Err(match exists {
                    Some(_) => StoreError::conflict(format!("API key {id} is already revoked")),
                    None => StoreError::NotFound(format!("API key {id}")),
                })
            }
        }
    }

    async fn touch_api_key(&self, id: Uuid, at: OffsetDateTime) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(ms(at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

macro_rules! device_cols {
    () => {
        "imei, name, model, tags, disabled, created_at, updated_at, online, session_id, connected_at, disconnected_at, last_seen, remote_addr, cert_serial, command_topic, reply_topic, status_topic, mqtt_username, mqtt_password_hash, id_client, firmware_version, firmware_reported_at"
    };
}

pub(super) fn device_from_row(r: &DbRow) -> Result<Device> {
    let tags: String = r.try_get("tags")?;
    Ok(Device {
        imei: parse_col(
            "devices.imei",
            &r.try_get::<String, _>("imei")?,
            Imei::parse,
        )?,
        name: r.try_get("name")?,
        model: r.try_get("model")?,
        tags: serde_json::from_str(&tags).map_err(|e| StoreError::Corrupt {
            column: "devices.tags",
            reason: e.to_string(),
        })?,
        disabled: r.try_get("disabled")?,
        created_at: from_ms(r.try_get("created_at")?),
        updated_at: from_ms(r.try_get("updated_at")?),
        presence: crate::PresenceInfo {
            online: r.try_get("online")?,
            session_id: r.try_get("session_id")?,
            connected_at: opt_from_ms(r.try_get("connected_at")?),
            disconnected_at: opt_from_ms(r.try_get("disconnected_at")?),
            last_seen: opt_from_ms(r.try_get("last_seen")?),
            remote_addr: r.try_get("remote_addr")?,
            cert_serial: r.try_get("cert_serial")?,
        },
        mqtt: crate::MqttIdentity {
            command_topic: r.try_get("command_topic")?,
            reply_topic: r.try_get("reply_topic")?,
            status_topic: r.try_get("status_topic")?,
            username: r.try_get("mqtt_username")?,
            password_hash: r.try_get("mqtt_password_hash")?,
            id_client: r.try_get("id_client")?,
        },
        firmware_version: r.try_get("firmware_version")?,
        firmware_reported_at: opt_from_ms(r.try_get("firmware_reported_at")?),
    })
}

pub(super) fn tags_json(tags: &[String]) -> String {
    serde_json::Value::from(tags.to_vec()).to_string()
}

pub(super) async fn replace_tags(
    tx: &mut sqlx::Transaction<'_, Db>,
    imei: &Imei,
    tags: &[String],
) -> Result<()> {
    sqlx::query("DELETE FROM device_tags WHERE imei = $1")
        .bind(imei.as_str())
        .execute(&mut **tx)
        .await?;
    for tag in tags {
        sqlx::query("INSERT INTO device_tags (imei, tag) VALUES ($1, $2)")
            .bind(imei.as_str())
            .bind(tag)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl Devices for SqlStore {
    async fn create_device(&self, device: &NewDevice) -> Result<Device> {
        let now = ms(OffsetDateTime::now_utc());
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row = sqlx::query(concat!(
            "INSERT INTO devices (imei, name, model, tags, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, FALSE, $5, $5) RETURNING ",
            device_cols!()
        ))
        .bind(device.imei.as_str())
        .bind(device.name.as_deref())
        .bind(device.model.as_deref())
        .bind(tags_json(&device.tags))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict { .. } => {
                StoreError::conflict(format!("device {} already exists", device.imei))
            }
            other => other,
        })?;
        replace_tags(&mut tx, &device.imei, &device.tags).await?;
        tx.commit().await?;
        device_from_row(&row)
    }

    async fn get_device(&self, imei: &Imei) -> Result<Device> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE imei = $1"
        ))
        .bind(imei.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {imei}")))?;
        device_from_row(&row)
    }

    async fn list_devices(&self, filter: &DeviceFilter) -> Result<Page<Device>> {
        let limit = filter.limit.clamp(1, 1000);
        let mut q = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices d WHERE 1 = 1"
        ));
        if let Some(online) = filter.online {
            q.push(" AND d.online = ").push_bind(online);
        }
        if let Some(after) = &filter.after {
            q.push(" AND d.imei > ").push_bind(after.clone());
        }
        if let Some(drift) = &filter.drift {
            q.push(" AND COALESCE((SELECT c.drift FROM device_config c WHERE c.imei = d.imei), 'unknown') = ")
                .push_bind(drift.as_str());
        }
        if let Some(version) = &filter.firmware {
            q.push(" AND d.firmware_version = ")
                .push_bind(version.clone());
        }
        if let Some(model) = &filter.model {
            q.push(" AND LOWER(d.model) = ")
                .push_bind(model.to_lowercase());
        }
        if let Some(tag) = &filter.tag {
            q.push(" AND EXISTS (SELECT 1 FROM device_tags t WHERE t.imei = d.imei AND t.tag = ")
                .push_bind(tag.clone())
                .push(")");
        }
        if let Some(text) = &filter.text {
            let pattern = like_pattern(&text.to_lowercase());
            q.push(" AND (d.imei LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR LOWER(COALESCE(d.name, '')) LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
        q.push(" ORDER BY d.imei LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(device_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |d| d.imei.to_string()))
    }

    async fn update_device(&self, imei: &Imei, patch: &DevicePatch) -> Result<Device> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE imei = $1"
        ))
        .bind(imei.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {imei}")))?;
        let mut device = device_from_row(&row)?;
        if let Some(name) = &patch.name {
            device.name.clone_from(name);
        }
        if let Some(model) = &patch.model {
            device.model.clone_from(model);
        }
        if let Some(disabled) = patch.disabled {
            device.disabled = disabled;
        }
        if let Some(tags) = &patch.tags {
            device.tags.clone_from(tags);
            replace_tags(&mut tx, imei, tags).await?;
        }
        for (field, value) in [
            (&mut device.mqtt.command_topic, &patch.command_topic),
            (&mut device.mqtt.reply_topic, &patch.reply_topic),
            (&mut device.mqtt.status_topic, &patch.status_topic),
        ] {
            if let Some(v) = value {
                field.clone_from(v);
            }
        }
        if let Some(id) = &patch.id_client {
            device.mqtt.id_client.clone_from(id);
        }
        if let Some(creds) = &patch.mqtt_credentials {
            let (user, hash) = creds.clone().unzip();
            device.mqtt.username = user;
            device.mqtt.password_hash = hash;
        }
        let row = sqlx::query(concat!("UPDATE devices SET name = $2, model = $3, tags = $4, disabled = $5, updated_at = $6, \
             command_topic = $7, reply_topic = $8, status_topic = $9, mqtt_username = $10, mqtt_password_hash = $11, id_client = $12 \
             WHERE imei = $1 RETURNING ", device_cols!()))
        .bind(imei.as_str())
        .bind(device.name.as_deref())
        .bind(device.model.as_deref())
        .bind(tags_json(&device.tags))
        .bind(device.disabled)
        .bind(ms(OffsetDateTime::now_utc()))
        .bind(device.mqtt.command_topic.as_deref())
        .bind(device.mqtt.reply_topic.as_deref())
        .bind(device.mqtt.status_topic.as_deref())
        .bind(device.mqtt.username.as_deref())
        .bind(device.mqtt.password_hash.as_deref())
        .bind(device.mqtt.id_client.as_deref())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict { .. } => StoreError::conflict(format!(
                "MQTT user name {:?} is used by another device",
                device.mqtt.username.as_deref().unwrap_or_default()
            )),
            other => other,
        })?;
        tx.commit().await?;
        device_from_row(&row)
    }

    async fn delete_device(&self, imei: &Imei) -> Result<()> {
        let done = sqlx::query("DELETE FROM devices WHERE imei = $1")
            .bind(imei.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("device {imei}")));
        }
        Ok(())
    }
}

macro_rules! cert_cols {
    () => {
        "serial, imei, common_name, fingerprint_sha256, certificate_pem, not_before, not_after, issued_by, created_at, revoked_at, revocation_reason, revoked_by"
    };
}

pub(super) fn cert_from_row(r: &DbRow) -> Result<CertificateRecord> {
    let revoked_at: Option<i64> = r.try_get("revoked_at")?;
    Ok(CertificateRecord {
        serial: r.try_get("serial")?,
        imei: parse_col(
            "certificates.imei",
            &r.try_get::<String, _>("imei")?,
            Imei::parse,
        )?,
        common_name: r.try_get("common_name")?,
        fingerprint_sha256: r.try_get("fingerprint_sha256")?,
        certificate_pem: r.try_get("certificate_pem")?,
        not_before: from_ms(r.try_get("not_before")?),
        not_after: from_ms(r.try_get("not_after")?),
        issued_by: r.try_get("issued_by")?,
        created_at: from_ms(r.try_get("created_at")?),
        revocation: match revoked_at {
            Some(at) => Some(Revocation {
                at: from_ms(at),
                reason: r.try_get("revocation_reason")?,
                by: r
                    .try_get::<Option<String>, _>("revoked_by")?
                    .unwrap_or_default(),
            }),
            None => None,
        },
    })
}

#[async_trait]
impl Certificates for SqlStore {
    async fn insert_certificate(&self, c: &CertificateRecord) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO certificates (",
            cert_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&c.serial)
        .bind(c.imei.as_str())
        .bind(&c.common_name)
        .bind(&c.fingerprint_sha256)
        .bind(&c.certificate_pem)
        .bind(ms(c.not_before))
        .bind(ms(c.not_after))
        .bind(&c.issued_by)
        .bind(ms(c.created_at))
        .bind(c.revocation.as_ref().map(|r| ms(r.at)))
        .bind(c.revocation.as_ref().and_then(|r| r.reason.clone()))
        .bind(c.revocation.as_ref().map(|r| r.by.clone()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_certificate(&self, serial: &str) -> Result<CertificateRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            cert_cols!(),
            " FROM certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("certificate {serial}")))?;
        cert_from_row(&row)
    }

    async fn list_certificates(&self, imei: &Imei) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            cert_cols!(),
            " FROM certificates WHERE imei = $1 ORDER BY created_at DESC, serial"
        ))
        .bind(imei.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn revoke_certificate(
        &self,
        serial: &str,
        rev: &Revocation,
    ) -> Result<CertificateRecord> {
        let row = sqlx::query(concat!(
            "UPDATE certificates SET revoked_at = $2, revocation_reason = $3, revoked_by = $4 \
             WHERE serial = $1 AND revoked_at IS NULL RETURNING ",
            cert_cols!()
        ))
        .bind(serial)
        .bind(ms(rev.at))
        .bind(rev.reason.as_deref())
        .bind(&rev.by)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => cert_from_row(&row),
            None => {
                // Tell "no such serial" from "already revoked".
                self.get_certificate(serial).await?;
                Err(StoreError::conflict(format!(
                    "certificate {serial} is already revoked"
                )))
            }
        }
    }

    async fn list_revoked_certificates(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(concat!("SELECT ", cert_cols!(), " FROM certificates WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY revoked_at, serial"))
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }
}

macro_rules! audit_cols {
    () => {
        "id, at, actor, actor_kind, action, target, outcome, status, detail, remote_addr, request_id"
    };
}

pub(super) fn audit_from_row(r: &DbRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.try_get("id")?,
        at: from_ms(r.try_get("at")?),
        actor: r.try_get("actor")?,
        actor_kind: parse_col(
            "audit_log.actor_kind",
            &r.try_get::<String, _>("actor_kind")?,
            ActorKind::parse,
        )?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: parse_col(
            "audit_log.outcome",
            &r.try_get::<String, _>("outcome")?,
            AuditOutcome::parse,
        )?,
        status: r.try_get("status")?,
        detail: r.try_get("detail")?,
        remote_addr: r.try_get("remote_addr")?,
        request_id: r.try_get("request_id")?,
    })
}

#[async_trait]
impl Audit for SqlStore {
    async fn append_audit(&self, e: &NewAuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, actor_kind, action, target, outcome, status, detail, remote_addr, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(ms(e.at))
        .bind(&e.actor)
        .bind(e.actor_kind.as_str())
        .bind(&e.action)
        .bind(e.target.as_deref())
        .bind(e.outcome.as_str())
        .bind(e.status)
        .bind(e.detail.as_deref())
        .bind(e.remote_addr.as_deref())
        .bind(e.request_id.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEntry>> {
        let limit = filter.limit.clamp(1, 1000);
        let mut q = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_log WHERE 1 = 1"
        ));
        if let Some(before) = filter.before {
            q.push(" AND id < ").push_bind(before);
        }
        if let Some(actor) = &filter.actor {
            q.push(" AND actor = ").push_bind(actor.clone());
        }
        if let Some(target) = &filter.target {
            q.push(" AND target = ").push_bind(target.clone());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(audit_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |e| e.id.to_string()))
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        BACKEND
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.closing.send_replace(true);
        self.pool.close().await;
    }

    async fn announce(&self, change: &callhome_core::ClusterChange) -> Result<()> {
        if BACKEND == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.channel)
                .bind(change.to_string())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn changes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<callhome_core::ClusterChange>>> {
        self.listen_changes().await
    }
}
