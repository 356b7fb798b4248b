//! Who is calling: passwords (Argon2id), bearer tokens and session cookies, and the
//! [`Principal`] that every handler receives.

use crate::error::{Error, Result};
use crate::state::AppState;
use argon2::{Algorithm, Argon2, Params, Version};
use argon2::{PasswordHash, PasswordHasher, PasswordVerifier};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use portico_core::ids::{OrgId, SessionId};
use portico_core::model::{MemberRole, OrgKind};
use portico_store::orgs::Membership;
use portico_store::users::User;
use sha2::{Digest, Sha256};

/// The browser session cookie. `__Host-` comes with TLS (identity issue); today the cookie is
/// `HttpOnly; SameSite=Strict; Path=/`, plus `Secure` when Portico is configured for HTTPS.
pub const SESSION_COOKIE: &str = "portico_session";
/// Browser sessions live this long.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;

fn argon2() -> Argon2<'static> {
    // OWASP's Argon2id baseline: m = 19 MiB, t = 2, p = 1.
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(19 * 1024, 2, 1, None).expect("valid params"))
}

/// Hashes a password on the blocking pool: Argon2id takes ~20 ms of CPU and 19 MiB, which must
/// not stall the async workers that serve everyone else.
pub async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        PasswordHasher::<PasswordHash>::hash_password(&argon2(), password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing a password: {e}")))?
}

/// Checks a password against its hash on the blocking pool (see [`hash_password`]).
pub async fn verify_password(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordVerifier::<str>::verify_password(&argon2(), password.as_bytes(), &hash).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// A fresh bearer secret: `pts_` + 40 base62 characters (≈ 238 bits).
pub fn new_token() -> String {
    const A: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut s = String::from("pts_");
    for _ in 0..40 {
        s.push(A[rand::random_range(0..62usize)] as char);
    }
    s
}

/// Tokens are random and long, so a plain SHA-256 is enough to store them safely.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The signed-in user with their memberships.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub memberships: Vec<Membership>,
    pub session_id: SessionId,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.user.is_platform_admin
    }
    pub fn role_in(&self, org: OrgId) -> Option<MemberRole> {
        self.memberships.iter().find(|m| m.org.id == org).map(|m| m.role)
    }
    /// May read the organization's objects.
    pub fn can_read(&self, org: OrgId) -> bool {
        self.is_admin() || self.role_in(org).is_some()
    }
    /// May change the organization's objects.
    pub fn can_manage(&self, org: OrgId) -> bool {
        self.is_admin() || self.role_in(org).is_some_and(MemberRole::can_manage)
    }
    pub fn org_ids(&self) -> Vec<OrgId> {
        self.memberships.iter().map(|m| m.org.id).collect()
    }
    pub fn orgs_of_kind(&self, kind: OrgKind) -> Vec<OrgId> {
        self.memberships.iter().filter(|m| m.org.kind == kind).map(|m| m.org.id).collect()
    }
}

/// The bearer token or session cookie of a request, if any.
pub fn credential(headers: &HeaderMap) -> Option<String> {
    bearer(headers).or_else(|| session_cookie(headers))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(|t| t.trim().to_owned())
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
}

pub async fn resolve(state: &AppState, token: &str) -> Result<Option<Principal>> {
    let mut c = state.store.conn().await?;
    let Some(session) = portico_store::users::session_by_hash(&mut c, &token_hash(token)).await? else {
        return Ok(None);
    };
    let Some(user) = portico_store::users::by_id(&mut c, session.user_id).await? else {
        return Ok(None);
    };
    let memberships = portico_store::orgs::memberships(&mut c, user.id).await?;
    Ok(Some(Principal { user, memberships, session_id: session.id }))
}

/// Extractor: the caller must be signed in.
#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

/// Extractor: the caller may be anonymous.
#[derive(Debug, Clone)]
pub struct MaybeAuth(pub Option<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeAuth
where
    AppState: FromRef<S>,
{
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let state = AppState::from_ref(state);
        if let Some(t) = bearer(&parts.headers) {
            // A token sent on purpose that does not work is an error the caller must hear about.
            return match resolve(&state, &t).await? {
                Some(p) => Ok(MaybeAuth(Some(p))),
                None => Err(Error::Unauthenticated("the token is invalid or has expired; sign in again".into())),
            };
        }
        // A stale session cookie is just a signed-out browser.
        match session_cookie(&parts.headers) {
            None => Ok(MaybeAuth(None)),
            Some(t) => Ok(MaybeAuth(resolve(&state, &t).await?)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth
where
    AppState: FromRef<S>,
{
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        match MaybeAuth::from_request_parts(parts, state).await? {
            MaybeAuth(Some(p)) => Ok(Auth(p)),
            MaybeAuth(None) => Err(Error::Unauthenticated(
                "sign in first: send `Authorization: Bearer <token>` (from POST /api/v1/auth/login) or the session cookie".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h).await);
        assert!(!verify_password("wrong horse", &h).await);
        assert!(!verify_password("x", "not a hash").await);
    }

    #[test]
    fn credentials_from_header_or_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert(header::COOKIE, "a=b; portico_session=pts_x".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("pts_x"));
        h.insert(header::AUTHORIZATION, "Bearer pts_y".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("pts_y"));
        assert_ne!(new_token(), new_token());
        assert_eq!(token_hash("a"), token_hash("a"));
    }
}
