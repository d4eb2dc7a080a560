//! Fresh, isolated databases for tests.
//!
//! [`TestDatabase::sqlite`] makes a temporary SQLite file (WAL; a file, not `:memory:`, so
//! that every pooled connection sees the same database). [`TestDatabase::postgres`] makes a
//! schema of its own on the server named by `TEST_DATABASE_URL`, and the URL it hands out
//! selects that schema through the connection's `search_path`, so concurrent test runs never
//! see each other's rows. The schema is dropped by [`TestDatabase::cleanup`].

use std::str::FromStr as _;

use sqlx::Connection as _;
use sqlx::postgres::PgConnectOptions;

use crate::{Result, StoreError};

/// Environment variable naming the PostgreSQL server for tests.
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

/// An isolated database for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// URL to open it with [`crate::open`] or `--database-url`.
    pub url: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { server_url: String, schema: String },
}

impl TestDatabase {
    /// A new SQLite file in a temporary directory, removed when this value drops.
    pub fn sqlite() -> Result<Self> {
        let dir = tempfile::tempdir()
            .map_err(|e| StoreError::InvalidUrl(format!("temporary directory: {e}")))?;
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        Ok(Self {
            url,
            kind: Kind::Sqlite(dir),
        })
    }

    /// A new schema on the PostgreSQL server `server_url`.
    pub async fn postgres(server_url: &str) -> Result<Self> {
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(server_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        // Validate the URL form we hand out; PgConnectOptions reads `options` from the URL.
        let sep = if server_url.contains('?') { '&' } else { '?' };
        let url = format!("{server_url}{sep}options=-c%20search_path%3D{schema}");
        PgConnectOptions::from_str(&url).map_err(|e| StoreError::InvalidUrl(format!("{e}")))?;
        Ok(Self {
            url,
            kind: Kind::Postgres {
                server_url: server_url.to_owned(),
                schema,
            },
        })
    }

    /// PostgreSQL when `TEST_DATABASE_URL` is set, else `None`.
    pub async fn postgres_from_env() -> Result<Option<Self>> {
        match std::env::var(TEST_DATABASE_URL) {
            Ok(url) if !url.is_empty() => Ok(Some(Self::postgres(&url).await?)),
            _ => Ok(None),
        }
    }

    /// Whether this is the PostgreSQL kind.
    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres { .. })
    }

    /// Drops the PostgreSQL schema (SQLite files go with the temporary directory).
    pub async fn cleanup(self) -> Result<()> {
        if let Kind::Postgres { server_url, schema } = &self.kind {
            let mut conn = sqlx::PgConnection::connect(server_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await?;
        }
        Ok(())
    }
}
