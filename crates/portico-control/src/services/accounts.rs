//! Sign-up, sign-in, sessions and platform admins.

use crate::auth::{self, ClientInfo, Principal};
use crate::error::{Error, Result};
use crate::services::audit::{self, Change};
use crate::state::AppState;
use crate::views::{MeView, OrgView, SessionView, UserView};
use portico_core::model::{MemberRole, OrgKind};
use portico_core::values::{Email, Name, Password, Slug};
use portico_store::users::SessionKind;
use portico_store::{Store, now_millis, orgs, users};
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    #[schema(value_type = String, example = "ada@example.com")]
    pub email: Email,
    /// At least 8 characters.
    #[schema(value_type = String, format = Password)]
    pub password: Password,
    #[schema(value_type = String, example = "Ada Lovelace")]
    pub name: Name,
    /// `consumer` (builds apps that call APIs) or `provider` (publishes APIs).
    #[schema(value_type = String, example = "consumer")]
    pub account_type: OrgKind,
    /// The organization to create; defaults to the person's name.
    #[schema(value_type = Option<String>, example = "Analytical Engines Ltd")]
    pub organization: Option<Name>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(value_type = String, example = "ada@example.com")]
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: String,
}

/// A slug for a new organization: from its name, with a numeric suffix if taken.
/// The slug of the platform admins' organization; no other organization may take it.
pub(crate) const PLATFORM_SLUG: &str = "platform";

pub(crate) async fn free_org_slug(c: &mut portico_store::Conn, name: &Name) -> Result<Slug> {
    let base = Slug::slugify(name.as_str()).unwrap_or_else(|_| Slug::parse("org").expect("valid"));
    if base.as_str() != PLATFORM_SLUG && orgs::by_slug(c, base.as_str()).await?.is_none() {
        return Ok(base);
    }
    for _ in 0..20 {
        let candidate =
            format!("{}-{}", &base.as_str()[..base.as_str().len().min(50)], rand::random_range(1000..99999u32));
        if let Ok(s) = Slug::parse(&candidate)
            && orgs::by_slug(c, s.as_str()).await?.is_none()
        {
            return Ok(s);
        }
    }
    Err(Error::Conflict("could not find a free slug for the organization; choose another name".into()))
}

fn membership_views(ms: &[orgs::Membership]) -> Vec<OrgView> {
    ms.iter().map(|m| OrgView::from(&m.org, Some(m.role.to_string()))).collect()
}

pub async fn signup(state: &AppState, req: SignupRequest, client: &ClientInfo) -> Result<SessionView> {
    if req.account_type == OrgKind::Platform {
        return Err(Error::Invalid("account_type must be `consumer` or `provider`".into()));
    }
    let hash = auth::hash_password(req.password.expose()).await?;
    let mut tx = state.store.begin().await?;
    let user = users::insert(&mut tx, &req.email, &req.name, &hash, false).await?;
    let org_name = req.organization.unwrap_or_else(|| req.name.clone());
    let slug = free_org_slug(&mut tx, &org_name).await?;
    let org = orgs::insert(&mut tx, &slug, &org_name, req.account_type).await?;
    orgs::add_member(&mut tx, org.id, user.id, MemberRole::Owner).await?;
    let session = new_session(&mut tx, &user, SessionKind::Browser, client).await?;
    let verify = email_token(&mut tx, user.id, VERIFY_EMAIL, VERIFY_TTL_MS).await?;
    let ch = Change::new("user.signup", "user", user.id, Some(org.id))
        .after(serde_json::json!({"email": user.email.as_str(), "organization": org.slug.as_str(), "kind": org.kind.to_string()}));
    audit::record_as(&mut tx, None, user.email.as_str(), client, ch).await?;
    tx.commit().await?;
    send_verification(state, &user, &verify);
    let ms = {
        let mut c = state.store.conn().await?;
        orgs::memberships(&mut c, user.id).await?
    };
    Ok(session_view(session, &user, &ms))
}

async fn new_session(
    c: &mut portico_store::Conn,
    user: &users::User,
    kind: SessionKind,
    client: &ClientInfo,
) -> Result<(String, Option<String>)> {
    let token = auth::new_token();
    let expires = match kind {
        SessionKind::Browser => Some(now_millis() + auth::SESSION_TTL_SECS * 1000),
        SessionKind::Token => None,
    };
    users::insert_session(c, user.id, &auth::token_hash(&token), kind, expires, &client.origin()).await?;
    let expires_at = expires.map(|ms| {
        portico_store::from_millis(ms).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    });
    Ok((token, expires_at))
}

/// A sign-in's answer: the session's secret and CSRF token, the user, their organizations.
fn session_view(session: (String, Option<String>), user: &users::User, ms: &[orgs::Membership]) -> SessionView {
    SessionView {
        csrf_token: auth::csrf_token(&session.0),
        token: session.0,
        expires_at: session.1,
        user: UserView::from(user),
        organizations: membership_views(ms),
    }
}

/// Ends the session whose cookie the browser still had at a sign-in, so that a session id
/// never survives one (fixation).
async fn end_replaced(c: &mut portico_store::Conn, replaces: Option<&str>) -> Result<()> {
    if let Some(old) = replaces
        && let Some(s) = users::session_by_hash(c, &auth::token_hash(old), i64::MAX / 4).await?
    {
        users::delete_session(c, s.id).await?;
    }
    Ok(())
}

/// Signs in. `replaces`: the session cookie the browser still had, ended so that a session id
/// never survives a sign-in (fixation).
pub async fn login(
    state: &AppState,
    req: LoginRequest,
    client: &ClientInfo,
    replaces: Option<&str>,
) -> Result<SessionView> {
    let wrong = || Error::Unauthenticated("wrong e-mail or password".into());
    if let Err(wait) = state.throttle.attempt(&req.email, client.ip) {
        return Err(Error::TooManyRequests(
            format!(
                "too many failed sign-ins for this account or from your address; try again in {} minutes",
                wait.div_ceil(60)
            ),
            wait,
        ));
    }
    let email = Email::parse(&req.email);
    let mut c = state.store.conn().await?;
    let user = match &email {
        Ok(e) => users::by_email(&mut c, e).await?,
        Err(_) => None,
    };
    drop(c);
    // Verify against a dummy hash when the account does not exist, so timing does not tell.
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0YbmHt7kOonkQSvF8v2tm5mNXv5V0d6oGE/3oHBwL0Q";
    // An account without a password (made by single sign-on) takes as long to refuse.
    let hash = user.as_ref().map(|u| u.password_hash.as_str()).filter(|h| h.starts_with('$')).unwrap_or(DUMMY);
    let ok = auth::verify_password(&req.password, hash).await
        && user.as_ref().is_some_and(|u| u.password_hash.starts_with('$'));
    let mut c = state.store.conn().await?;
    let user = match user {
        Some(u) if ok => u,
        other => {
            let actor: String = req.email.chars().take(200).collect();
            let ch = Change { action: "session.login_failed", object_type: "user", ..Default::default() };
            let ch = match &other {
                Some(u) => Change { object_id: Some(u.id.to_string()), ..ch },
                None => ch,
            };
            audit::record_as(&mut c, None, &actor, client, ch).await?;
            return Err(wrong());
        }
    };
    state.throttle.succeeded(&req.email, client.ip);
    end_replaced(&mut c, replaces).await?;
    let session = new_session(&mut c, &user, SessionKind::Browser, client).await?;
    audit::record_as(&mut c, None, user.email.as_str(), client, Change::new("session.login", "user", user.id, None))
        .await?;
    let ms = orgs::memberships(&mut c, user.id).await?;
    Ok(session_view(session, &user, &ms))
}

/// What an OpenID provider vouched for about the person signing in.
#[derive(Debug, Clone)]
pub(crate) struct ExternalIdentity {
    /// The provider's id in the settings (for the audit log).
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// The password hash of an account made by single sign-on: no password verifies against it
/// (a password reset sets one).
const NO_PASSWORD: &str = "!sso";

/// Signs in with an identity of an OpenID provider. A known identity signs in as its user. A
/// new one needs an address the provider verified (an unverified one could be anyone's): with
/// no account of that address, a new account and organization are made; with one, it is
/// linked only when `link_by_email` is on, Portico has verified the address too, and the
/// account is not a platform admin's (otherwise whoever registered the address first could
/// take over, or be taken over). `replaces`: the session cookie the browser still had, ended.
pub(crate) async fn sso_sign_in(
    state: &AppState,
    id: ExternalIdentity,
    account_type: OrgKind,
    link_by_email: bool,
    client: &ClientInfo,
    replaces: Option<&str>,
) -> Result<SessionView> {
    use portico_store::sso;
    let mut tx = state.store.begin().await?;
    let user = match sso::user_of(&mut tx, &id.issuer, &id.subject).await? {
        Some(uid) => users::by_id(&mut tx, uid).await?.ok_or_else(|| Error::not_found("the account"))?,
        None if !id.email_verified => {
            return Err(Error::Forbidden(
                "the identity provider has not verified your e-mail address; verify it there, then sign in again"
                    .into(),
            ));
        }
        None => {
            let raw = id.email.as_deref().ok_or_else(|| {
                Error::Invalid(
                    "the identity provider shared no e-mail address; Portico needs one (ask for the `email` scope)"
                        .into(),
                )
            })?;
            let email = Email::parse(raw).map_err(|_| {
                Error::Invalid(format!(
                    "the identity provider's e-mail `{}` is not an address Portico accepts",
                    raw.escape_default()
                ))
            })?;
            match users::by_email(&mut tx, &email).await? {
                Some(u) if link_by_email && u.email_verified_at.is_some() && !u.is_platform_admin => {
                    sso::link(&mut tx, &id.issuer, &id.subject, u.id).await?;
                    let ch = Change::new("user.link_identity", "user", u.id, None)
                        .after(serde_json::json!({"provider": id.provider, "issuer": id.issuer}));
                    audit::record_as(&mut tx, None, u.email.as_str(), client, ch).await?;
                    u
                }
                Some(u) if u.email_verified_at.is_none() => {
                    return Err(Error::Conflict(
                        "an account with this e-mail exists but its address is not verified yet; sign in with your \
                         password and verify it"
                            .into(),
                    ));
                }
                Some(_) => {
                    return Err(Error::Conflict(
                        "an account with this e-mail exists; sign in with your password (this provider does not \
                         link accounts by e-mail)"
                            .into(),
                    ));
                }
                None => {
                    let fallback = email.as_str().split('@').next().unwrap_or("member").to_owned();
                    let name = id
                        .name
                        .as_deref()
                        .and_then(|n| Name::parse(n).ok())
                        .or_else(|| Name::parse(&fallback).ok())
                        .unwrap_or_else(|| Name::parse("Member").expect("valid"));
                    let u = users::insert(&mut tx, &email, &name, NO_PASSWORD, false).await?;
                    portico_store::notify::mark_email_verified(&mut tx, u.id).await?;
                    let slug = free_org_slug(&mut tx, &name).await?;
                    let org = orgs::insert(&mut tx, &slug, &name, account_type).await?;
                    orgs::add_member(&mut tx, org.id, u.id, MemberRole::Owner).await?;
                    sso::link(&mut tx, &id.issuer, &id.subject, u.id).await?;
                    let ch = Change::new("user.signup", "user", u.id, Some(org.id)).after(serde_json::json!({
                        "email": u.email.as_str(), "organization": org.slug.as_str(), "kind": org.kind.to_string(),
                        "provider": id.provider,
                    }));
                    audit::record_as(&mut tx, None, u.email.as_str(), client, ch).await?;
                    users::by_id(&mut tx, u.id).await?.ok_or_else(|| Error::not_found("the account"))?
                }
            }
        }
    };
    end_replaced(&mut tx, replaces).await?;
    let session = new_session(&mut tx, &user, SessionKind::Browser, client).await?;
    let ch = Change::new("session.login", "user", user.id, None).after(serde_json::json!({"provider": id.provider}));
    audit::record_as(&mut tx, None, user.email.as_str(), client, ch).await?;
    tx.commit().await?;
    let mut c = state.store.conn().await?;
    let ms = orgs::memberships(&mut c, user.id).await?;
    Ok(session_view(session, &user, &ms))
}

pub async fn logout(state: &AppState, who: &Principal) -> Result<()> {
    let mut c = state.store.conn().await?;
    users::delete_session(&mut c, who.session_id).await?;
    audit::record(&mut c, who, Change::new("session.logout", "session", who.session_id, None)).await?;
    Ok(())
}

/// The caller's own sessions and tokens that have not expired.
pub async fn sessions(state: &AppState, who: &Principal) -> Result<Vec<SessionInfo>> {
    let mut c = state.store.conn().await?;
    let rfc = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    Ok(users::sessions_of(&mut c, who.user.id)
        .await?
        .into_iter()
        .map(|s| SessionInfo {
            id: s.id.to_string(),
            kind: s.kind.as_str().to_owned(),
            current: s.id == who.session_id,
            created_at: rfc(s.created_at),
            last_seen_at: s.last_seen_at.map(rfc),
            expires_at: s.expires_at.map(rfc),
            ip: s.ip,
            user_agent: s.user_agent,
        })
        .collect())
}

/// Ends one of the caller's own sessions (another person's answers 404).
pub async fn revoke_session(state: &AppState, who: &Principal, id: &str) -> Result<()> {
    let not_found = || Error::not_found(format_args!("session `{id}`"));
    let sid: portico_core::ids::SessionId = id.parse().map_err(|_| not_found())?;
    let mut tx = state.store.begin().await?;
    if !users::delete_session_of(&mut tx, who.user.id, sid).await? {
        return Err(not_found());
    }
    audit::record(&mut tx, who, Change::new("session.revoke", "session", sid, None)).await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    #[schema(value_type = String, format = Password)]
    pub current_password: String,
    /// At least 8 characters, not a common password.
    #[schema(value_type = String, format = Password)]
    pub new_password: Password,
}

/// Changes the caller's password: every session and token of the account ends, and a new
/// browser session is returned.
pub async fn change_password(state: &AppState, who: &Principal, req: ChangePassword) -> Result<SessionView> {
    if !auth::verify_password(&req.current_password, &who.user.password_hash).await {
        return Err(Error::Forbidden("the current password is wrong".into()));
    }
    let hash = auth::hash_password(req.new_password.expose()).await?;
    let mut tx = state.store.begin().await?;
    users::set_password(&mut tx, who.user.id, &hash).await?;
    let ended = users::delete_sessions_of(&mut tx, who.user.id).await?;
    let session = new_session(&mut tx, &who.user, SessionKind::Browser, &who.client).await?;
    let ch = Change::new("user.password_change", "user", who.user.id, None)
        .after(serde_json::json!({"sessions_ended": ended}));
    audit::record(&mut tx, who, ch).await?;
    tx.commit().await?;
    Ok(SessionView {
        csrf_token: auth::csrf_token(&session.0),
        token: session.0,
        expires_at: session.1,
        user: UserView::from(&who.user),
        organizations: membership_views(&who.memberships),
    })
}

/// One of a person's sessions, as they see it.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct SessionInfo {
    pub id: String,
    /// `browser` (expires, idles out) or `token` (a personal API token).
    pub kind: String,
    /// The session this request was made with.
    pub current: bool,
    pub created_at: String,
    pub last_seen_at: Option<String>,
    pub expires_at: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

pub fn me(who: &Principal) -> MeView {
    MeView {
        user: UserView::from(&who.user),
        organizations: membership_views(&who.memberships),
        csrf_token: who.csrf_token.clone(),
    }
}

/// What `portico admin create` prints.
#[derive(Debug)]
pub struct NewAdmin {
    pub email: Email,
    /// Set when the account was created with a generated password.
    pub generated_password: Option<String>,
    pub token: String,
    pub created: bool,
}

/// Creates a platform admin (or promotes an existing account, checking its password when
/// given) and issues a non-expiring API token for scripts and the CLI.
pub async fn create_admin(store: &Store, email: &Email, password: Option<&str>) -> Result<NewAdmin> {
    let mut tx = store.begin().await?;
    let existing = users::by_email(&mut tx, email).await?;
    let (user, generated, created) = match existing {
        Some(u) => {
            if let Some(p) = password
                && !auth::verify_password(p, &u.password_hash).await
            {
                return Err(Error::Unauthenticated(format!(
                    "{email} already has an account and that is not its password; leave --password out to promote it"
                )));
            }
            users::set_admin(&mut tx, u.id, true).await?;
            (u, None, false)
        }
        None => {
            let (pw, generated) = match password {
                Some(p) => (Password::parse(p)?.expose().to_owned(), None),
                None => {
                    let p = auth::new_token()[4..24].to_owned();
                    (p.clone(), Some(p))
                }
            };
            let name = Name::parse(email.as_str().split('@').next().unwrap_or("admin"))?;
            let u = users::insert(&mut tx, email, &name, &auth::hash_password(&pw).await?, true).await?;
            let platform = match orgs::by_slug(&mut tx, PLATFORM_SLUG).await? {
                Some(o) if o.kind == OrgKind::Platform => o,
                Some(_) => {
                    return Err(Error::Conflict(format!(
                        "an ordinary organization took the slug `{PLATFORM_SLUG}`; rename it before creating admins"
                    )));
                }
                None => {
                    orgs::insert(&mut tx, &Slug::parse(PLATFORM_SLUG)?, &Name::parse("Platform")?, OrgKind::Platform)
                        .await?
                }
            };
            orgs::add_member(&mut tx, platform.id, u.id, MemberRole::Owner).await?;
            (u, generated, true)
        }
    };
    let (token, _) = new_session(&mut tx, &user, SessionKind::Token, &ClientInfo::default()).await?;
    let ch = Change::new("admin.create", "user", user.id, None).after(serde_json::json!({"created": created}));
    audit::record_as(&mut tx, None, "system (portico admin create)", &ClientInfo::default(), ch).await?;
    tx.commit().await?;
    Ok(NewAdmin { email: email.clone(), generated_password: generated, token, created })
}

pub async fn admin_count(store: &Store) -> Result<i64> {
    let mut c = store.conn().await?;
    Ok(users::count_admins(&mut c).await?)
}

/// Makes sure an account exists for `email` (created with `password` if not) and is a member
/// of the organization `org_slug` with `role`. Used to seed users (the demo, first runs).
pub async fn ensure_member(
    store: &Store,
    email: &Email,
    name: &Name,
    password: &Password,
    org_slug: &str,
    role: MemberRole,
) -> Result<users::User> {
    let mut tx = store.begin().await?;
    let org = orgs::by_slug(&mut tx, org_slug)
        .await?
        .ok_or_else(|| Error::not_found(format_args!("organization `{org_slug}`")))?;
    let user = match users::by_email(&mut tx, email).await? {
        Some(u) => u,
        None => users::insert(&mut tx, email, name, &auth::hash_password(password.expose()).await?, false).await?,
    };
    if !orgs::memberships(&mut tx, user.id).await?.iter().any(|m| m.org.id == org.id) {
        orgs::add_member(&mut tx, org.id, user.id, role).await?;
    }
    tx.commit().await?;
    Ok(user)
}

/// A session token for an existing user, without a password: for in-process callers that act
/// as a user (the demo seeding). Never exposed over HTTP.
pub async fn issue_token(store: &Store, user: &users::User) -> Result<String> {
    let mut c = store.conn().await?;
    Ok(new_session(&mut c, user, SessionKind::Token, &ClientInfo::default()).await?.0)
}

/// Purposes of single-use e-mail tokens.
const VERIFY_EMAIL: &str = "verify_email";
const PASSWORD_RESET: &str = "password_reset";
/// A verification link works for two days, a reset link for 30 minutes.
const VERIFY_TTL_MS: i64 = 48 * 3600 * 1000;
const RESET_TTL_MS: i64 = 30 * 60 * 1000;

/// A new single-use token for `purpose`; only its SHA-256 is stored.
async fn email_token(
    c: &mut portico_store::Conn,
    user: portico_core::ids::UserId,
    purpose: &str,
    ttl_ms: i64,
) -> Result<String> {
    let token = format!("pte_{}", &auth::new_token()[4..]);
    portico_store::notify::insert_email_token(c, &auth::token_hash(&token), user, purpose, ttl_ms).await?;
    Ok(token)
}

pub(crate) fn link(state: &AppState, page: &str, token: &str) -> String {
    format!("{}/{page}?token={token}", state.config.token_issuer.trim_end_matches('/'))
}

fn send_verification(state: &AppState, user: &users::User, token: &str) {
    let body = format!(
        "Hello {},\n\nconfirm that {} is your address by opening this link within 48 hours:\n\n{}\n\nIf you did not sign up for Portico, ignore this message.\n",
        user.name.as_str(),
        user.email.as_str(),
        link(state, "verify-email", token)
    );
    state.mailer.send(user.email.as_str(), "Confirm your e-mail address", body);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token from the e-mail's link.
    pub token: String,
}

/// Confirms an address with the token from the verification e-mail (single use).
pub async fn verify_email(state: &AppState, req: TokenRequest, client: &ClientInfo) -> Result<()> {
    let mut tx = state.store.begin().await?;
    let user = portico_store::notify::use_email_token(&mut tx, &auth::token_hash(req.token.trim()), VERIFY_EMAIL)
        .await?
        .ok_or_else(|| {
            Error::Invalid("the link is invalid, already used or expired; ask for a new one from your account".into())
        })?;
    portico_store::notify::mark_email_verified(&mut tx, user).await?;
    let u = users::by_id(&mut tx, user).await?.ok_or_else(|| Error::not_found("the account"))?;
    audit::record_as(&mut tx, None, u.email.as_str(), client, Change::new("user.verify_email", "user", user, None))
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Sends a new verification e-mail to the caller (when not verified yet).
pub async fn resend_verification(state: &AppState, who: &Principal) -> Result<()> {
    if who.user.email_verified_at.is_some() {
        return Err(Error::Conflict("your e-mail address is already verified".into()));
    }
    let mut tx = state.store.begin().await?;
    portico_store::notify::void_email_tokens(&mut tx, who.user.id, VERIFY_EMAIL).await?;
    let token = email_token(&mut tx, who.user.id, VERIFY_EMAIL, VERIFY_TTL_MS).await?;
    tx.commit().await?;
    send_verification(state, &who.user, &token);
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    #[schema(value_type = String, example = "ada@example.com")]
    pub email: String,
}

/// Starts a password reset. The answer is the same whether or not the account exists (so it
/// tells nobody which addresses have accounts); the link goes to the address only.
pub async fn request_reset(state: &AppState, req: ResetRequest, client: &ClientInfo) -> Result<()> {
    let Ok(email) = Email::parse(&req.email) else { return Ok(()) };
    // Every request counts, so one mailbox cannot be flooded with reset mails.
    if let Err(wait) = state.throttle.attempt(&format!("reset:{}", email.as_str()), client.ip) {
        return Err(Error::TooManyRequests(
            format!("too many reset requests; try again in {} minutes", wait.div_ceil(60)),
            wait,
        ));
    }
    let mut tx = state.store.begin().await?;
    let Some(user) = users::by_email(&mut tx, &email).await? else { return Ok(()) };
    portico_store::notify::void_email_tokens(&mut tx, user.id, PASSWORD_RESET).await?;
    let token = email_token(&mut tx, user.id, PASSWORD_RESET, RESET_TTL_MS).await?;
    audit::record_as(
        &mut tx,
        None,
        user.email.as_str(),
        client,
        Change::new("user.password_reset_request", "user", user.id, None),
    )
    .await?;
    tx.commit().await?;
    let body = format!(
        "Hello {},\n\nsomeone (hopefully you) asked to reset the password of your Portico account. Choose a new one within 30 minutes here:\n\n{}\n\nThe link works once. If you did not ask, ignore this message: your password stays as it is.\n",
        user.name.as_str(),
        link(state, "reset-password", &token)
    );
    state.mailer.send(user.email.as_str(), "Reset your Portico password", body);
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    pub token: String,
    /// At least 8 characters, not a common password.
    #[schema(value_type = String, format = Password)]
    pub new_password: Password,
}

/// Sets a new password with the reset token (single use); every session of the account ends.
pub async fn confirm_reset(state: &AppState, req: ResetConfirm, client: &ClientInfo) -> Result<()> {
    let hash = auth::hash_password(req.new_password.expose()).await?;
    let mut tx = state.store.begin().await?;
    let user = portico_store::notify::use_email_token(&mut tx, &auth::token_hash(req.token.trim()), PASSWORD_RESET)
        .await?
        .ok_or_else(|| {
            Error::Invalid("the reset link is invalid, already used or expired; ask for a new one".into())
        })?;
    users::set_password(&mut tx, user, &hash).await?;
    let ended = users::delete_sessions_of(&mut tx, user).await?;
    // The link proved the address too.
    portico_store::notify::mark_email_verified(&mut tx, user).await?;
    let u = users::by_id(&mut tx, user).await?.ok_or_else(|| Error::not_found("the account"))?;
    let ch = Change::new("user.password_reset", "user", user, None).after(serde_json::json!({"sessions_ended": ended}));
    audit::record_as(&mut tx, None, u.email.as_str(), client, ch).await?;
    tx.commit().await?;
    Ok(())
}
