//! Users and their sessions (browser sessions and API tokens are both hashed bearer secrets).

use crate::row::{get, opt_time, parse, time, with};
use crate::{Conn, Error, Result, now_millis};
use portico_core::ids::{SessionId, UserId};
use portico_core::values::{Email, Name};
use sqlx::any::AnyRow;

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub name: Name,
    pub password_hash: String,
    pub is_platform_admin: bool,
    pub created_at: time::OffsetDateTime,
    /// When the person proved the address is theirs (the link in the verification e-mail).
    pub email_verified_at: Option<time::OffsetDateTime>,
}

const T: &str = "users";
const COLS: &str = "id, email, name, password_hash, is_platform_admin, created_at, email_verified_at";

fn decode(r: &AnyRow) -> Result<User> {
    Ok(User {
        id: parse(r, T, "id")?,
        email: with(r, T, "email", Email::parse)?,
        name: with(r, T, "name", Name::parse)?,
        password_hash: get(r, T, "password_hash")?,
        is_platform_admin: get::<i64>(r, T, "is_platform_admin")? != 0,
        created_at: time(r, T, "created_at")?,
        email_verified_at: opt_time(r, T, "email_verified_at")?,
    })
}

pub async fn insert(c: &mut Conn, email: &Email, name: &Name, password_hash: &str, admin: bool) -> Result<User> {
    let id = UserId::new();
    let now = now_millis();
    sqlx::query("INSERT INTO users (id, email, name, password_hash, is_platform_admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id.to_string())
        .bind(email.as_str())
        .bind(name.as_str())
        .bind(password_hash)
        .bind(i64::from(admin))
        .bind(now)
        .execute(c)
        .await
        .map_err(Error::unique(format!("an account for {email}")))?;
    Ok(User {
        id,
        email: email.clone(),
        name: name.clone(),
        password_hash: password_hash.into(),
        is_platform_admin: admin,
        created_at: crate::from_millis(now),
        email_verified_at: None,
    })
}

pub async fn by_email(c: &mut Conn, email: &Email) -> Result<Option<User>> {
    let q = format!("SELECT {COLS} FROM users WHERE email = $1");
    sqlx::query(sqlx::AssertSqlSafe(q)).bind(email.as_str()).fetch_optional(c).await?.as_ref().map(decode).transpose()
}

pub async fn by_id(c: &mut Conn, id: UserId) -> Result<Option<User>> {
    let q = format!("SELECT {COLS} FROM users WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(q)).bind(id.to_string()).fetch_optional(c).await?.as_ref().map(decode).transpose()
}

pub async fn count_admins(c: &mut Conn) -> Result<i64> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE is_platform_admin = 1").fetch_one(c).await?;
    get(&r, T, "n")
}

pub async fn set_password(c: &mut Conn, id: UserId, password_hash: &str) -> Result<()> {
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(password_hash)
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn set_admin(c: &mut Conn, id: UserId, admin: bool) -> Result<()> {
    sqlx::query("UPDATE users SET is_platform_admin = $1 WHERE id = $2")
        .bind(i64::from(admin))
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

/// What kind of bearer secret a session row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A browser session (cookie), expiring.
    Browser,
    /// A personal API token for scripts and the CLI.
    Token,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Browser => "browser",
            SessionKind::Token => "token",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub kind: SessionKind,
    pub created_at: time::OffsetDateTime,
    pub expires_at: Option<time::OffsetDateTime>,
    /// When it was last used (written at most once a minute); `None`: not since sign-in.
    pub last_seen_at: Option<time::OffsetDateTime>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Where a session was opened from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

const SESSION_COLS: &str = "id, user_id, kind, created_at, expires_at, last_seen_at, ip, user_agent";

fn decode_session(r: &AnyRow) -> Result<Session> {
    let t = "sessions";
    Ok(Session {
        id: parse(r, t, "id")?,
        user_id: parse(r, t, "user_id")?,
        kind: if get::<String>(r, t, "kind")? == "token" { SessionKind::Token } else { SessionKind::Browser },
        created_at: time(r, t, "created_at")?,
        expires_at: opt_time(r, t, "expires_at")?,
        last_seen_at: opt_time(r, t, "last_seen_at")?,
        ip: get(r, t, "ip")?,
        user_agent: get(r, t, "user_agent")?,
    })
}

pub async fn insert_session(
    c: &mut Conn,
    user: UserId,
    token_hash: &str,
    kind: SessionKind,
    expires_at: Option<i64>,
    origin: &Origin,
) -> Result<SessionId> {
    let id = SessionId::new();
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, user_id, kind, created_at, expires_at, ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.to_string())
    .bind(token_hash)
    .bind(user.to_string())
    .bind(kind.as_str())
    .bind(now_millis())
    .bind(expires_at)
    .bind(origin.ip.as_deref())
    .bind(origin.user_agent.as_deref().map(|u| &u[..u.floor_char_boundary(200)]))
    .execute(c)
    .await?;
    Ok(id)
}

/// The live session with this token hash, if any: not expired, and (for browser sessions) used
/// within `idle_ms`.
pub async fn session_by_hash(c: &mut Conn, token_hash: &str, idle_ms: i64) -> Result<Option<Session>> {
    let now = now_millis();
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLS} FROM sessions \
         WHERE token_hash = $1 AND (expires_at IS NULL OR expires_at > $2) \
         AND (kind <> 'browser' OR COALESCE(last_seen_at, created_at) > $3)"
    )))
    .bind(token_hash)
    .bind(now)
    .bind(now - idle_ms)
    .fetch_optional(c)
    .await?;
    r.as_ref().map(decode_session).transpose()
}

/// Notes that a session was used now.
pub async fn touch_session(c: &mut Conn, id: SessionId) -> Result<()> {
    sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2")
        .bind(now_millis())
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

/// A user's sessions that have not expired, newest first.
pub async fn sessions_of(c: &mut Conn, user: UserId) -> Result<Vec<Session>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLS} FROM sessions WHERE user_id = $1 AND (expires_at IS NULL OR expires_at > $2) ORDER BY created_at DESC"
    )))
    .bind(user.to_string())
    .bind(now_millis())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_session).collect()
}

/// Ends one of a user's sessions; false when the user has no such session.
pub async fn delete_session_of(c: &mut Conn, user: UserId, id: SessionId) -> Result<bool> {
    let n = sqlx::query("DELETE FROM sessions WHERE id = $1 AND user_id = $2")
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(c)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// Ends every session of a user (a password change); returns how many.
pub async fn delete_sessions_of(c: &mut Conn, user: UserId) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user.to_string()).execute(c).await?.rows_affected())
}

pub async fn delete_session(c: &mut Conn, id: SessionId) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE id = $1").bind(id.to_string()).execute(c).await?;
    Ok(())
}
