//! `portico-store` is Portico's persistence: one repository layer over SQLite (embedded, the
//! default) and PostgreSQL, through sqlx's `Any` driver, with one set of migrations written in
//! the SQL both share.
//!
//! Repository functions take `&mut AnyConnection`, so a caller runs them on a pooled connection
//! or inside a transaction ([`Store::begin`]) — every multi-row change is one transaction.
//! This crate knows rows and the domain types of `portico-core`; it has no business rules.

pub mod apps;
pub mod audit;
pub mod catalog;
pub mod invitations;
pub mod notify;
pub mod oauth;
pub mod orgs;
pub mod request_log;
pub mod rollups;
pub mod sso;
pub mod testing;
pub mod usage;
pub mod users;

mod row;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::str::FromStr;
use std::time::Duration;

pub use sqlx::AnyConnection as Conn;
/// The driver error, for callers that commit or roll back a transaction.
pub use sqlx::Error as DriverError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A unique constraint refused the change; the string names what clashed.
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    /// A stored value no longer parses: a bug or a hand-edited database.
    #[error("corrupt row in {table}: {message}")]
    Corrupt { table: &'static str, message: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Maps a unique-constraint violation to `Conflict(what)`; other errors pass through.
    pub(crate) fn unique(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        move |e| match &e {
            sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                Error::Conflict(what.into())
            }
            _ => Error::Database(e),
        }
    }
}

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The connection pool and what engine it talks to.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `url`: `sqlite://PATH` (created if missing, WAL mode) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, None).await
    }

    /// [`Store::connect`] with a pool of at most `max_connections` (e.g. a background task's
    /// own small pool); `None`: the default size.
    pub async fn connect_with(url: &str, max_connections: Option<u32>) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::Config(format!(
                "unsupported database URL `{}`: use sqlite://PATH or postgres://USER@HOST/DB",
                redact(url)
            )));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let opts = AnyConnectOptions::from_str(&url).map_err(|e| Error::Config(format!("bad database URL: {e}")))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.unwrap_or(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            }))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        Ok(Store { pool, backend })
    }

    /// Runs the migrations that have not run yet.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        let moved = usage::adopt_legacy_request_log(self).await?;
        if moved > 0 {
            tracing::info!(calls = moved, "the request log's rows were moved into pages");
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A pooled connection for single statements.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// A transaction; dropped without `commit` it rolls back. On SQLite it takes the write
    /// lock up front (`BEGIN IMMEDIATE`), so concurrent writers wait on the busy timeout instead
    /// of failing with "database is locked" when a read transaction tries to become a write.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Whether the database answers within two seconds.
    pub async fn ping(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(_)))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The config generation: bumped by every change the gateway's snapshot depends on.
pub async fn bump_generation(c: &mut Conn) -> Result<()> {
    sqlx::query("UPDATE config_generation SET generation = generation + 1 WHERE id = 1").execute(c).await?;
    Ok(())
}

pub async fn generation(c: &mut Conn) -> Result<i64> {
    let (g,): (i64,) = sqlx::query_as("SELECT generation FROM config_generation WHERE id = 1").fetch_one(c).await?;
    Ok(g)
}

/// A URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Unix milliseconds, as the store keeps times.
pub fn now_millis() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_millis(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A page request: at most `limit` rows after skipping `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub const MAX_LIMIT: i64 = 200;
    pub fn new(limit: Option<i64>, offset: Option<i64>) -> Self {
        Page { limit: limit.unwrap_or(50).clamp(1, Self::MAX_LIMIT), offset: offset.unwrap_or(0).max(0) }
    }
    pub fn all() -> Self {
        Page { limit: i64::MAX / 2, offset: 0 }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
