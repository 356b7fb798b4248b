//! Single sign-on: people's identities at the portal's OpenID providers, and the sign-ins in
//! flight to them.

use crate::row::{get, parse};
use crate::{Conn, Error, Result, now_millis};
use portico_core::ids::UserId;

/// The user an identity (`iss`, `sub`) signs in as.
pub async fn user_of(c: &mut Conn, issuer: &str, subject: &str) -> Result<Option<UserId>> {
    let r = sqlx::query("SELECT user_id FROM user_identities WHERE issuer = $1 AND subject = $2")
        .bind(issuer)
        .bind(subject)
        .fetch_optional(c)
        .await?;
    r.map(|r| parse(&r, "user_identities", "user_id")).transpose()
}

/// Links an identity to a user; `Conflict` when it is linked already.
pub async fn link(c: &mut Conn, issuer: &str, subject: &str, user: UserId) -> Result<()> {
    sqlx::query("INSERT INTO user_identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(issuer)
        .bind(subject)
        .bind(user.to_string())
        .bind(now_millis())
        .execute(c)
        .await
        .map_err(Error::unique("that identity"))?;
    Ok(())
}

/// A sign-in on its way to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    pub provider: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

pub async fn begin(c: &mut Conn, state_hash: &str, login: &PendingLogin) -> Result<()> {
    // Sign-ins never finished are forgotten after an hour.
    sqlx::query("DELETE FROM sso_logins WHERE created_at < $1").bind(now_millis() - 3_600_000).execute(&mut *c).await?;
    sqlx::query(
        "INSERT INTO sso_logins (state_hash, provider, nonce, pkce_verifier, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(state_hash)
    .bind(&login.provider)
    .bind(&login.nonce)
    .bind(&login.pkce_verifier)
    .bind(now_millis())
    .execute(c)
    .await?;
    Ok(())
}

/// Takes the sign-in of a state (once: a second call finds nothing), if it began less than
/// `max_age_ms` ago.
pub async fn take(c: &mut Conn, state_hash: &str, max_age_ms: i64) -> Result<Option<PendingLogin>> {
    let r = sqlx::query(
        "DELETE FROM sso_logins WHERE state_hash = $1 AND created_at >= $2 RETURNING provider, nonce, pkce_verifier",
    )
    .bind(state_hash)
    .bind(now_millis() - max_age_ms)
    .fetch_optional(c)
    .await?;
    let t = "sso_logins";
    r.map(|r| {
        Ok(PendingLogin {
            provider: get(&r, t, "provider")?,
            nonce: get(&r, t, "nonce")?,
            pkce_verifier: get(&r, t, "pkce_verifier")?,
        })
    })
    .transpose()
}
