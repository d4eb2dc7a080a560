//! Presence, status log and command queue: a module of `sqlite.rs` and of
//! `postgres.rs`, beside `common` (whose helpers it uses). Same rules: SQL valid on both backends.

use std::str::FromStr as _;

use async_trait::async_trait;
use callhome_core::Imei;
use sqlx::{QueryBuilder, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::conv::{from_ms, like_pattern, ms, opt_from_ms, page, parse_col};
use crate::{Device, Page, Result, StoreError};

use super::common::*;
use super::{BEGIN_WRITE, Db};

use crate::{
    CommandFilter, CommandOutcome, CommandRecord, CommandState, Commands, NewCommand, NewStatus,
    OnlineRecord, Presence, StatusLog, StatusRecord,
};

#[async_trait]
impl Presence for SqlStore {
    async fn mark_online(&self, imei: &Imei, rec: &OnlineRecord) -> Result<()> {
        let done = sqlx::query(
            "UPDATE devices SET online = TRUE, session_id = $2, connected_at = $3, last_seen = $3, \
             remote_addr = $4, cert_serial = $5 WHERE imei = $1",
        )
        .bind(imei.as_str())
        .bind(&rec.session_id)
        .bind(ms(rec.at))
        .bind(&rec.remote_addr)
        .bind(rec.cert_serial.as_deref())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("device {imei}")));
        }
        Ok(())
    }

    async fn mark_offline(
        &self,
        imei: &Imei,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE devices SET online = FALSE, disconnected_at = $3, last_seen = $3 \
             WHERE imei = $1 AND session_id = $2 AND online = TRUE",
        )
        .bind(imei.as_str())
        .bind(session_id)
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn touch_last_seen(&self, seen: &[(Imei, OffsetDateTime)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        for (imei, at) in seen {
            sqlx::query("UPDATE devices SET last_seen = $2 WHERE imei = $1 AND (last_seen IS NULL OR last_seen < $2)")
                .bind(imei.as_str())
                .bind(ms(*at))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mark_node_offline(&self, session_prefix: &str, at: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE devices SET online = FALSE, disconnected_at = $2 WHERE online = TRUE AND session_id LIKE $1 ESCAPE '\\'",
        )
        .bind(format!("{}%", like_pattern(session_prefix).trim_matches('%')))
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn count_online(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE online = TRUE")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn get_device_by_mqtt_username(&self, username: &str) -> Result<Device> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE mqtt_username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device with MQTT user name {username:?}")))?;
        device_from_row(&row)
    }
}

macro_rules! status_cols {
    () => {
        "id, imei, received_at, topic, payload, parsed"
    };
}

pub(super) fn status_from_row(r: &DbRow) -> Result<StatusRecord> {
    Ok(StatusRecord {
        id: r.try_get("id")?,
        imei: parse_col(
            "status_log.imei",
            &r.try_get::<String, _>("imei")?,
            Imei::parse,
        )?,
        received_at: from_ms(r.try_get("received_at")?),
        topic: r.try_get("topic")?,
        payload: r.try_get("payload")?,
        parsed: r.try_get("parsed")?,
    })
}

#[async_trait]
impl StatusLog for SqlStore {
    async fn append_status(&self, s: &NewStatus) -> Result<StatusRecord> {
        let row = sqlx::query(concat!(
            "INSERT INTO device_status (imei, received_at, topic, payload, parsed) VALUES ($1, $2, $3, $4, $5) RETURNING ",
            status_cols!()
        ))
        .bind(s.imei.as_str())
        .bind(ms(s.received_at))
        .bind(&s.topic)
        .bind(&s.payload)
        .bind(s.parsed.as_deref())
        .fetch_one(&self.pool)
        .await?;
        status_from_row(&row)
    }

    async fn latest_status(&self, imei: &Imei) -> Result<Option<StatusRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            status_cols!(),
            " FROM device_status WHERE imei = $1 ORDER BY id DESC LIMIT 1"
        ))
        .bind(imei.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(status_from_row).transpose()
    }

    async fn status_history(
        &self,
        imei: &Imei,
        since: Option<OffsetDateTime>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Page<StatusRecord>> {
        let limit = limit.clamp(1, 1000);
        let mut q = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            status_cols!(),
            " FROM device_status WHERE imei = "
        ));
        q.push_bind(imei.to_string());
        if let Some(since) = since {
            q.push(" AND received_at >= ").push_bind(ms(since));
        }
        if let Some(before) = before {
            q.push(" AND id < ").push_bind(before);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(status_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |s| s.id.to_string()))
    }

    async fn prune_status(&self, cutoff: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM device_status WHERE received_at < $1")
            .bind(ms(cutoff))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

macro_rules! command_cols {
    () => {
        "id, imei, command, state, created_at, created_by, timeout_ms, expires_at, max_attempts, attempts, sent_at, completed_at, reply, result, error, late_reply, late_reply_at"
    };
}

pub(super) fn command_from_row(r: &DbRow) -> Result<CommandRecord> {
    Ok(CommandRecord {
        id: parse_col(
            "commands.id",
            &r.try_get::<String, _>("id")?,
            Uuid::from_str,
        )?,
        imei: parse_col(
            "commands.imei",
            &r.try_get::<String, _>("imei")?,
            Imei::parse,
        )?,
        command: r.try_get("command")?,
        state: parse_col(
            "commands.state",
            &r.try_get::<String, _>("state")?,
            CommandState::from_str,
        )?,
        created_at: from_ms(r.try_get("created_at")?),
        created_by: r.try_get("created_by")?,
        timeout_ms: r.try_get("timeout_ms")?,
        expires_at: from_ms(r.try_get("expires_at")?),
        max_attempts: r.try_get("max_attempts")?,
        attempts: r.try_get("attempts")?,
        sent_at: opt_from_ms(r.try_get("sent_at")?),
        completed_at: opt_from_ms(r.try_get("completed_at")?),
        reply: r.try_get("reply")?,
        result: r.try_get("result")?,
        error: r.try_get("error")?,
        late_reply: r.try_get("late_reply")?,
        late_reply_at: opt_from_ms(r.try_get("late_reply_at")?),
    })
}

impl SqlStore {
    /// A command row with its secret values decrypted.
    fn read_command(&self, r: &DbRow) -> Result<CommandRecord> {
        let mut c = command_from_row(r)?;
        c.command = self.vault.open_command(std::mem::take(&mut c.command));
        c.reply = self.vault.open_reply(&c.command, c.reply.take());
        c.error = self.vault.open_reply(&c.command, c.error.take());
        c.late_reply = self.vault.open_reply(&c.command, c.late_reply.take());
        Ok(c)
    }

    /// The stored text of command `id` (for sealing its reply: only `GETPARAM`s, which
    /// carry no secret, matter), when encryption is on.
    async fn command_text(&self, id: Uuid) -> Result<Option<String>> {
        if !self.vault.is_enabled() {
            return Ok(None);
        }
        Ok(
            sqlx::query_scalar("SELECT command FROM commands WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Runs a conditional state change; on no match tells "not found" from "wrong state".
    async fn command_transition(
        &self,
        id: Uuid,
        row: Option<DbRow>,
        what: &str,
    ) -> Result<CommandRecord> {
        match row {
            Some(row) => self.read_command(&row),
            None => {
                let current = self.get_command(id).await?;
                Err(StoreError::conflict(format!(
                    "command {id} is {}; cannot {what}",
                    current.state.as_str()
                )))
            }
        }
    }
}

#[async_trait]
impl Commands for SqlStore {
    async fn enqueue_command(&self, c: &NewCommand) -> Result<CommandRecord> {
        let row = sqlx::query(concat!(
            "INSERT INTO commands (id, imei, command, state, created_at, created_by, timeout_ms, expires_at, max_attempts, attempts) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, 0) RETURNING ",
            command_cols!()
        ))
        .bind(Uuid::now_v7().to_string())
        .bind(c.imei.as_str())
        .bind(self.vault.seal_command(&c.command).as_ref())
        .bind(ms(OffsetDateTime::now_utc()))
        .bind(&c.created_by)
        .bind(c.timeout_ms)
        .bind(ms(c.expires_at))
        .bind(c.max_attempts)
        .fetch_one(&self.pool)
        .await?;
        self.read_command(&row)
    }

    async fn get_command(&self, id: Uuid) -> Result<CommandRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("command {id}")))?;
        self.read_command(&row)
    }

    async fn list_commands(&self, f: &CommandFilter) -> Result<Page<CommandRecord>> {
        let limit = f.limit.clamp(1, 1000);
        let mut q = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE 1 = 1"
        ));
        if let Some(imei) = &f.imei {
            q.push(" AND imei = ").push_bind(imei.clone());
        }
        if !f.states.is_empty() {
            q.push(" AND state IN (");
            let mut sep = q.separated(", ");
            for s in &f.states {
                sep.push_bind(s.as_str());
            }
            q.push(")");
        }
        if let Some(before) = f.before {
            q.push(" AND id < ").push_bind(before.to_string());
        }
        if let Some(by) = &f.created_by {
            q.push(" AND created_by = ").push_bind(by.clone());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(|r| self.read_command(r))
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |c| c.id.to_string()))
    }

    async fn next_queued_command(
        &self,
        imei: &Imei,
        now: OffsetDateTime,
    ) -> Result<Option<CommandRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ", command_cols!(),
            " FROM commands WHERE imei = $1 AND state = 'queued' AND expires_at > $2 ORDER BY created_at, id LIMIT 1"
        ))
        .bind(imei.as_str())
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|r| self.read_command(r)).transpose()
    }

    async fn in_flight_command(&self, imei: &Imei) -> Result<Option<CommandRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE imei = $1 AND state = 'sent' ORDER BY sent_at DESC LIMIT 1"
        ))
        .bind(imei.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|r| self.read_command(r)).transpose()
    }

    async fn mark_command_sent(&self, id: Uuid, at: OffsetDateTime) -> Result<CommandRecord> {
        let row = sqlx::query(concat!(
            "UPDATE commands SET state = 'sent', sent_at = $2, attempts = attempts + 1 \
             WHERE id = $1 AND state = 'queued' RETURNING ",
            command_cols!()
        ))
        .bind(id.to_string())
        .bind(ms(at))
        .fetch_optional(&self.pool)
        .await?;
        self.command_transition(id, row, "send it").await
    }

    async fn complete_command(&self, id: Uuid, o: &CommandOutcome) -> Result<CommandRecord> {
        let command = if o.reply.is_some() || o.error.is_some() {
            self.command_text(id).await?.unwrap_or_default()
        } else {
            String::new()
        };
        let reply = o
            .reply
            .as_deref()
            .map(|r| self.vault.seal_reply(&command, r));
        let error = o
            .error
            .as_deref()
            .map(|e| self.vault.seal_reply(&command, e));
        let row = sqlx::query(concat!(
            "UPDATE commands SET state = $2, reply = $3, result = $4, error = $5, completed_at = $6 \
             WHERE id = $1 AND state = 'sent' RETURNING ",
            command_cols!()
        ))
        .bind(id.to_string())
        .bind(o.state.as_str())
        .bind(reply.as_deref())
        .bind(o.result.as_deref())
        .bind(error.as_deref())
        .bind(ms(o.at))
        .fetch_optional(&self.pool)
        .await?;
        self.command_transition(id, row, "complete it").await
    }

    async fn requeue_command(&self, id: Uuid, error: &str) -> Result<CommandRecord> {
        let command = self.command_text(id).await?.unwrap_or_default();
        let error = self.vault.seal_reply(&command, error);
        let row = sqlx::query(concat!(
            "UPDATE commands SET state = 'queued', error = $2 WHERE id = $1 AND state = 'sent' RETURNING ",
            command_cols!()
        ))
        .bind(id.to_string())
        .bind(error.as_ref())
        .fetch_optional(&self.pool)
        .await?;
        self.command_transition(id, row, "re-queue it").await
    }

    async fn cancel_command(&self, id: Uuid, at: OffsetDateTime) -> Result<CommandRecord> {
        let row = sqlx::query(concat!(
            "UPDATE commands SET state = 'cancelled', completed_at = $2 WHERE id = $1 AND state = 'queued' RETURNING ",
            command_cols!()
        ))
        .bind(id.to_string())
        .bind(ms(at))
        .fetch_optional(&self.pool)
        .await?;
        self.command_transition(id, row, "cancel it (only queued commands can be cancelled)")
            .await
    }

    async fn record_late_reply(&self, id: Uuid, reply: &str, at: OffsetDateTime) -> Result<()> {
        let command = self.command_text(id).await?.unwrap_or_default();
        let reply = self.vault.seal_reply(&command, reply);
        sqlx::query("UPDATE commands SET late_reply = $2, late_reply_at = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(reply.as_ref())
            .bind(ms(at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn expire_commands(&self, now: OffsetDateTime) -> Result<Vec<CommandRecord>> {
        let rows = sqlx::query(concat!(
            "UPDATE commands SET state = 'expired', completed_at = $1, \
             error = COALESCE(error, 'not delivered before its expiry') \
             WHERE state = 'queued' AND expires_at <= $1 RETURNING ",
            command_cols!()
        ))
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| self.read_command(r)).collect()
    }

    async fn sent_commands(&self) -> Result<Vec<CommandRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE state = 'sent'"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| self.read_command(r)).collect()
    }

    async fn devices_with_queued_commands(&self) -> Result<Vec<Imei>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT imei FROM commands WHERE state = 'queued'")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|s| parse_col("commands.imei", s, Imei::parse))
            .collect()
    }

    async fn count_queued_commands(&self, imei: &Imei) -> Result<i64> {
        Ok(
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM commands WHERE imei = $1 AND state = 'queued'",
            )
            .bind(imei.as_str())
            .fetch_one(&self.pool)
            .await?,
        )
    }
}
