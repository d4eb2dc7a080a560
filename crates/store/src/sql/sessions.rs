//! Meter-reading sessions: a module of `sqlite.rs` and of `postgres.rs`, beside `common`.

use std::str::FromStr as _;

use async_trait::async_trait;
use callhome_core::{CloseReason, Imei, SessionMode};
use sqlx::{QueryBuilder, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::conv::{from_ms, ms, opt_from_ms, page, parse_col};
use crate::{Page, Result, StoreError};

use super::Db;
use super::common::*;

use crate::{
    NewSession, NewSessionTarget, SessionRecord, SessionState, SessionTarget, SessionTargets,
    SessionUpdate, Sessions,
};

macro_rules! session_cols {
    () => {
        "id, imei, mode, state, close_reason, error, host, port, timeout_s, pairing_timeout_s, forward_id, token_hash, token_used, command_id, created_by, created_by_id, requested_host, created_at, modem_connected_at, reader_connected_at, active_at, closed_at, modem_addr, reader_addr, bytes_from_modem, bytes_to_modem"
    };
}

pub(super) fn session_from_row(r: &DbRow) -> Result<SessionRecord> {
    let command_id: Option<String> = r.try_get("command_id")?;
    Ok(SessionRecord {
        id: parse_col(
            "sessions.id",
            &r.try_get::<String, _>("id")?,
            Uuid::from_str,
        )?,
        imei: parse_col(
            "sessions.imei",
            &r.try_get::<String, _>("imei")?,
            Imei::parse,
        )?,
        mode: parse_col(
            "sessions.mode",
            &r.try_get::<String, _>("mode")?,
            SessionMode::parse,
        )?,
        state: parse_col(
            "sessions.state",
            &r.try_get::<String, _>("state")?,
            SessionState::from_str,
        )?,
        close_reason: r
            .try_get::<Option<String>, _>("close_reason")?
            .map(|c| parse_col("sessions.close_reason", &c, CloseReason::parse))
            .transpose()?,
        error: r.try_get("error")?,
        host: r.try_get("host")?,
        port: r.try_get("port")?,
        timeout_s: r.try_get("timeout_s")?,
        pairing_timeout_s: r.try_get("pairing_timeout_s")?,
        forward_id: r.try_get("forward_id")?,
        token_hash: r.try_get("token_hash")?,
        token_used: r.try_get("token_used")?,
        command_id: command_id
            .as_deref()
            .map(|c| parse_col("sessions.command_id", c, Uuid::from_str))
            .transpose()?,
        created_by: r.try_get("created_by")?,
        created_by_id: r
            .try_get::<Option<String>, _>("created_by_id")?
            .map(|c| parse_col("sessions.created_by_id", &c, Uuid::from_str))
            .transpose()?,
        requested_host: r.try_get("requested_host")?,
        created_at: from_ms(r.try_get("created_at")?),
        modem_connected_at: opt_from_ms(r.try_get("modem_connected_at")?),
        reader_connected_at: opt_from_ms(r.try_get("reader_connected_at")?),
        active_at: opt_from_ms(r.try_get("active_at")?),
        closed_at: opt_from_ms(r.try_get("closed_at")?),
        modem_addr: r.try_get("modem_addr")?,
        reader_addr: r.try_get("reader_addr")?,
        bytes_from_modem: r.try_get("bytes_from_modem")?,
        bytes_to_modem: r.try_get("bytes_to_modem")?,
    })
}

#[async_trait]
impl Sessions for SqlStore {
    async fn create_session(&self, s: &NewSession) -> Result<SessionRecord> {
        let inserted = sqlx::query(concat!(
            "INSERT INTO sessions (id, imei, mode, state, host, port, timeout_s, pairing_timeout_s, forward_id, token_hash, token_used, created_by, created_at, created_by_id, requested_host) \
             VALUES ($1, $2, $3, 'requested', $4, $5, $6, $7, $8, $9, FALSE, $10, $11, $12, $13) RETURNING ",
            session_cols!()
        ))
        .bind(Uuid::now_v7().to_string())
        .bind(s.imei.as_str())
        .bind(s.mode.as_str())
        .bind(&s.host)
        .bind(s.port)
        .bind(s.timeout_s)
        .bind(s.pairing_timeout_s)
        .bind(s.forward_id)
        .bind(s.token_hash.as_deref())
        .bind(&s.created_by)
        .bind(ms(OffsetDateTime::now_utc()))
        .bind(s.created_by_id.map(|u| u.to_string()))
        .bind(s.requested_host.as_deref())
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => session_from_row(&row),
            Err(e) => match StoreError::from(e) {
                StoreError::Conflict { .. } => {
                    let open = self.open_session_of(&s.imei).await?;
                    Err(StoreError::conflict(match open {
                        Some(o) => {
                            format!("device {} already has an open session: {}", s.imei, o.id)
                        }
                        None => format!("device {} already has an open session", s.imei),
                    }))
                }
                other => Err(other),
            },
        }
    }

    async fn get_session(&self, id: Uuid) -> Result<SessionRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("session {id}")))?;
        session_from_row(&row)
    }

    async fn open_session_of(&self, imei: &Imei) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE imei = $1 AND state <> 'closed'"
        ))
        .bind(imei.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn list_sessions(
        &self,
        imei: &Imei,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<SessionRecord>> {
        let limit = limit.clamp(1, 1000);
        let mut q = QueryBuilder::<Db>::new(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE imei = "
        ));
        q.push_bind(imei.to_string());
        if let Some(b) = before {
            q.push(" AND id < ").push_bind(b.to_string());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(session_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, |s| s.id.to_string()))
    }

    async fn update_session(&self, id: Uuid, u: &SessionUpdate) -> Result<SessionRecord> {
        let row = sqlx::query(concat!(
            "UPDATE sessions SET state = CASE WHEN $2 IS NULL THEN state \
             WHEN $2 IN ('modem_connected', 'reader_connected') AND state <> 'requested' THEN state ELSE $2 END, close_reason = COALESCE($3, close_reason), \
             error = COALESCE($4, error), command_id = COALESCE($5, command_id), \
             modem_connected_at = COALESCE($6, modem_connected_at), reader_connected_at = COALESCE($7, reader_connected_at), \
             active_at = COALESCE($8, active_at), closed_at = COALESCE($9, closed_at), \
             modem_addr = COALESCE($10, modem_addr), reader_addr = COALESCE($11, reader_addr), \
             bytes_from_modem = COALESCE($12, bytes_from_modem), bytes_to_modem = COALESCE($13, bytes_to_modem) \
             WHERE id = $1 AND state <> 'closed' RETURNING ",
            session_cols!()
        ))
        .bind(id.to_string())
        .bind(u.state.map(SessionState::as_str))
        .bind(u.close_reason.map(CloseReason::as_str))
        .bind(u.error.as_deref())
        .bind(u.command_id.map(|c| c.to_string()))
        .bind(u.modem_connected_at.map(ms))
        .bind(u.reader_connected_at.map(ms))
        .bind(u.active_at.map(ms))
        .bind(u.closed_at.map(ms))
        .bind(u.modem_addr.as_deref())
        .bind(u.reader_addr.as_deref())
        .bind(u.bytes.map(|b| b.0))
        .bind(u.bytes.map(|b| b.1))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => session_from_row(&r),
            None => {
                self.get_session(id).await?;
                Err(StoreError::conflict(format!("session {id} is closed")))
            }
        }
    }

    async fn consume_session_token(&self, id: Uuid, token_hash: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET token_used = TRUE WHERE id = $1 AND token_hash = $2 AND token_used = FALSE AND state <> 'closed'",
        )
        .bind(id.to_string())
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn close_open_sessions(&self, reason: CloseReason, at: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("UPDATE sessions SET state = 'closed', close_reason = $1, closed_at = $2 WHERE state <> 'closed'")
            .bind(reason.as_str())
            .bind(ms(at))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

macro_rules! target_cols {
    () => {
        "id, network, port_first, port_last, users, api_keys, note, created_by, created_at"
    };
}

fn target_from_row(r: &DbRow) -> Result<SessionTarget> {
    use callhome_core::targets::{Cidr, PortRange};
    let port = |col: &'static str| -> Result<u16> {
        let v: i64 = r.try_get(col)?;
        u16::try_from(v).map_err(|_| StoreError::Corrupt {
            column: col,
            reason: format!("{v} is not a port"),
        })
    };
    let ports = PortRange::new("ports", port("port_first")?, port("port_last")?).map_err(|e| {
        StoreError::Corrupt {
            column: "session_targets.port_first",
            reason: e.to_string(),
        }
    })?;
    Ok(SessionTarget {
        id: parse_col(
            "session_targets.id",
            &r.try_get::<String, _>("id")?,
            Uuid::from_str,
        )?,
        network: parse_col(
            "session_targets.network",
            &r.try_get::<String, _>("network")?,
            |s| Cidr::parse("network", s),
        )?,
        ports,
        users: parse_col(
            "session_targets.users",
            &r.try_get::<String, _>("users")?,
            |v| serde_json::from_str::<Vec<String>>(v),
        )?,
        api_keys: parse_col(
            "session_targets.api_keys",
            &r.try_get::<String, _>("api_keys")?,
            |v| serde_json::from_str::<Vec<Uuid>>(v),
        )?,
        note: r.try_get("note")?,
        created_by: r.try_get("created_by")?,
        created_at: from_ms(r.try_get("created_at")?),
    })
}

#[async_trait]
impl SessionTargets for SqlStore {
    async fn create_session_target(&self, t: &NewSessionTarget) -> Result<SessionTarget> {
        let users = serde_json::to_string(&t.users).map_err(|e| StoreError::Corrupt {
            column: "session_targets.users",
            reason: e.to_string(),
        })?;
        let keys = serde_json::to_string(&t.api_keys).map_err(|e| StoreError::Corrupt {
            column: "session_targets.api_keys",
            reason: e.to_string(),
        })?;
        let row = sqlx::query(concat!(
            "INSERT INTO session_targets (id, network, port_first, port_last, users, api_keys, note, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
            target_cols!()
        ))
        .bind(Uuid::now_v7().to_string())
        .bind(t.network.to_string())
        .bind(i64::from(t.ports.first()))
        .bind(i64::from(t.ports.last()))
        .bind(users)
        .bind(keys)
        .bind(t.note.as_deref())
        .bind(&t.created_by)
        .bind(ms(OffsetDateTime::now_utc()))
        .fetch_one(&self.pool)
        .await?;
        target_from_row(&row)
    }

    async fn list_session_targets(&self) -> Result<Vec<SessionTarget>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            target_cols!(),
            " FROM session_targets ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(target_from_row).collect()
    }

    async fn delete_session_target(&self, id: Uuid) -> Result<SessionTarget> {
        let row = sqlx::query(concat!(
            "DELETE FROM session_targets WHERE id = $1 RETURNING ",
            target_cols!()
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("session target {id}")))?;
        target_from_row(&row)
    }
}
