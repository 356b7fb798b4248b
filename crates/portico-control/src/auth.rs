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
use portico_core::model::{MemberRole, OrgKind, Permission};
use portico_store::orgs::Membership;
use portico_store::users::User;
use sha2::{Digest, Sha256};

/// The browser session cookie: `__Host-portico_session; Path=/; Secure; HttpOnly;
/// SameSite=Strict` wherever the browser treats the connection as secure (HTTPS, and
/// loopback addresses, which browsers count as secure contexts).
pub const SESSION_COOKIE: &str = "__Host-portico_session";
/// The same cookie over plain HTTP on a non-loopback address (a LAN demo), where a browser
/// would drop a `Secure` cookie.
pub const PLAIN_SESSION_COOKIE: &str = "portico_session";
/// Browser sessions end this long after sign-in, whatever happens (absolute timeout).
pub const SESSION_TTL_SECS: i64 = 12 * 3600;
/// ... or after this long without a request (idle timeout).
pub const SESSION_IDLE_SECS: i64 = 3600;
/// A session's `last_seen_at` is written at most this often.
const TOUCH_EVERY_MS: i64 = 60_000;
/// The header that carries the CSRF token on cookie-authenticated changes.
pub const CSRF_HEADER: &str = "x-csrf-token";

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

/// The CSRF token of a session: derived from its secret, so it needs no storage and cannot be
/// computed by a page that cannot read the (`HttpOnly`) cookie.
pub fn csrf_token(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"portico-csrf\0");
    h.update(session_token.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The signed-in user with their memberships.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub memberships: Vec<Membership>,
    pub session_id: SessionId,
    /// The CSRF token that goes with this session (see [`csrf_token`]).
    pub csrf_token: String,
    /// Where the request came from (for the audit log).
    pub client: ClientInfo,
}

/// The caller's address (through trusted proxies) and user agent.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    pub fn from_parts(parts: &Parts, trusted: &[ipnet::IpNet]) -> Self {
        let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        let hops: Vec<&str> = parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        ClientInfo {
            ip: peer.map(|p| portico_core::policy::client_ip(p, hops.into_iter(), trusted)),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|u| u[..u.floor_char_boundary(200)].to_owned()),
        }
    }

    pub fn origin(&self) -> portico_store::users::Origin {
        portico_store::users::Origin { ip: self.ip.map(|i| i.to_string()), user_agent: self.user_agent.clone() }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo
where
    AppState: FromRef<S>,
{
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let state = AppState::from_ref(state);
        Ok(ClientInfo::from_parts(parts, &state.config.trusted_proxies))
    }
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.user.is_platform_admin
    }
    pub fn role_in(&self, org: OrgId) -> Option<MemberRole> {
        self.memberships.iter().find(|m| m.org.id == org).map(|m| m.role)
    }
    /// May do `p` in `org`: platform admins everything, members what their role allows
    /// ([`MemberRole::allows`], the one place roles are decided), everyone else nothing.
    pub fn can(&self, org: OrgId, p: Permission) -> bool {
        self.is_admin() || self.role_in(org).is_some_and(|r| r.allows(p))
    }
    /// May read the organization's objects.
    pub fn can_read(&self, org: OrgId) -> bool {
        self.can(org, Permission::Read)
    }
    /// May change the organization's objects.
    pub fn can_manage(&self, org: OrgId) -> bool {
        self.can(org, Permission::Manage)
    }
    /// The organizations whose members' role grants `p` (platform admins' too, as members).
    pub fn orgs_allowing(&self, p: Permission) -> Vec<OrgId> {
        self.memberships.iter().filter(|m| m.role.allows(p)).map(|m| m.org.id).collect()
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
    bearer(headers).or_else(|| session_cookie(headers, true))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(|t| t.trim().to_owned())
}

/// The session cookie's value, if the request has one: the `__Host-` cookie, or, only where
/// Portico sets the plain one (not a secure context), `portico_session`. A plain cookie in a
/// secure context is ignored: `__Host-` exists so that a sibling subdomain cannot plant one.
pub fn session_cookie(headers: &HeaderMap, accept_plain: bool) -> Option<String> {
    let cookies = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
    };
    cookies()
        .find(|(k, _)| *k == SESSION_COOKIE)
        .or_else(|| cookies().find(|(k, _)| accept_plain && *k == PLAIN_SESSION_COOKIE))
        .map(|(_, v)| v.to_owned())
}

/// Whether a browser will keep a `Secure` cookie from this request: Portico is configured for
/// HTTPS, or the browser talks to a loopback address (a secure context).
pub fn secure_context(state: &AppState, headers: &HeaderMap) -> bool {
    if state.config.secure_cookies {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `Set-Cookie` value for a session (`max_age` 0 clears it).
pub fn session_set_cookie(state: &AppState, headers: &HeaderMap, token: &str, max_age: i64) -> String {
    if secure_context(state, headers) {
        format!("{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
    } else {
        format!("{PLAIN_SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}")
    }
}

pub async fn resolve(state: &AppState, token: &str, client: ClientInfo) -> Result<Option<Principal>> {
    let mut c = state.store.conn().await?;
    let found = portico_store::users::session_by_hash(&mut c, &token_hash(token), SESSION_IDLE_SECS * 1000).await?;
    let Some(session) = found else {
        return Ok(None);
    };
    let Some(user) = portico_store::users::by_id(&mut c, session.user_id).await? else {
        return Ok(None);
    };
    let seen = session.last_seen_at.unwrap_or(session.created_at);
    if (time::OffsetDateTime::now_utc() - seen).whole_milliseconds() > i128::from(TOUCH_EVERY_MS) {
        portico_store::users::touch_session(&mut c, session.id).await?;
    }
    let memberships = portico_store::orgs::memberships(&mut c, user.id).await?;
    Ok(Some(Principal { user, memberships, session_id: session.id, csrf_token: csrf_token(token), client }))
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
        let client = ClientInfo::from_parts(parts, &state.config.trusted_proxies);
        if let Some(t) = bearer(&parts.headers) {
            // A token sent on purpose that does not work is an error the caller must hear about.
            return match resolve(&state, &t, client).await? {
                Some(p) => Ok(MaybeAuth(Some(p))),
                None => Err(Error::Unauthenticated("the token is invalid or has expired; sign in again".into())),
            };
        }
        // A stale session cookie is just a signed-out browser.
        let plain_ok = !secure_context(&state, &parts.headers);
        let Some(t) = session_cookie(&parts.headers, plain_ok) else { return Ok(MaybeAuth(None)) };
        let Some(p) = resolve(&state, &t, client).await? else { return Ok(MaybeAuth(None)) };
        // A browser sends the cookie with any request to this site, including ones a hostile
        // page makes it send: changes need the CSRF token too, which only our pages know.
        if !parts.method.is_safe() {
            use subtle::ConstantTimeEq;
            let sent = parts.headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
            if !bool::from(sent.ct_eq(p.csrf_token.as_bytes())) {
                return Err(Error::Forbidden(
                    "a change made with the session cookie needs the `X-CSRF-Token` header (its value is `csrf_token` in the sign-in answer and in GET /api/v1/me); scripts should use `Authorization: Bearer` instead"
                    .into()));
            }
        }
        Ok(MaybeAuth(Some(p)))
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
        h.insert(header::COOKIE, "__Host-portico_session=pts_z; a=b".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("pts_z"));
        assert_eq!(csrf_token("pts_z").len(), 32);
        assert_ne!(csrf_token("pts_z"), csrf_token("pts_y"));
        h.insert(header::AUTHORIZATION, "Bearer pts_y".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("pts_y"));
        assert_ne!(new_token(), new_token());
        assert_eq!(token_hash("a"), token_hash("a"));
    }
}
