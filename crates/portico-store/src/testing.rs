//! Helpers for tests that need a real database: a fresh PostgreSQL database per test.
//!
//! The server is `PORTICO_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! When it cannot be reached the helper fails with a message that says so: tests of the
//! PostgreSQL backend never skip silently.

use sqlx::Connection;

pub fn postgres_admin_url() -> String {
    std::env::var("PORTICO_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database with a unique name and returns its URL.
pub async fn fresh_postgres_database() -> Result<String, String> {
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.map_err(|e| {
        format!(
            "PostgreSQL is required for this test and is not reachable at {} ({e}). Start it, or point PORTICO_TEST_POSTGRES at one.",
            crate::redact(&admin)
        )
    })?;
    let name = format!("portico_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("creating test database {name}: {e}"))?;
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}
