//! Sign-up, sign-in, sessions and platform admins.

use crate::auth::{self, Principal};
use crate::error::{Error, Result};
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

pub async fn signup(state: &AppState, req: SignupRequest) -> Result<SessionView> {
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
    let session = new_session(&mut tx, &user, SessionKind::Browser).await?;
    tx.commit().await?;
    let ms = {
        let mut c = state.store.conn().await?;
        orgs::memberships(&mut c, user.id).await?
    };
    Ok(SessionView {
        token: session.0,
        expires_at: session.1,
        user: UserView::from(&user),
        organizations: membership_views(&ms),
    })
}

async fn new_session(
    c: &mut portico_store::Conn,
    user: &users::User,
    kind: SessionKind,
) -> Result<(String, Option<String>)> {
    let token = auth::new_token();
    let expires = match kind {
        SessionKind::Browser => Some(now_millis() + auth::SESSION_TTL_SECS * 1000),
        SessionKind::Token => None,
    };
    users::insert_session(c, user.id, &auth::token_hash(&token), kind, expires).await?;
    let expires_at = expires.map(|ms| {
        portico_store::from_millis(ms).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    });
    Ok((token, expires_at))
}

pub async fn login(state: &AppState, req: LoginRequest) -> Result<SessionView> {
    let wrong = || Error::Unauthenticated("wrong e-mail or password".into());
    let email = Email::parse(&req.email).map_err(|_| wrong())?;
    let mut c = state.store.conn().await?;
    let user = users::by_email(&mut c, &email).await?;
    drop(c);
    // Verify against a dummy hash when the account does not exist, so timing does not tell.
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0YbmHt7kOonkQSvF8v2tm5mNXv5V0d6oGE/3oHBwL0Q";
    let ok = auth::verify_password(&req.password, user.as_ref().map_or(DUMMY, |u| u.password_hash.as_str())).await;
    let user = match user {
        Some(u) if ok => u,
        _ => return Err(wrong()),
    };
    let mut c = state.store.conn().await?;
    let session = new_session(&mut c, &user, SessionKind::Browser).await?;
    let ms = orgs::memberships(&mut c, user.id).await?;
    Ok(SessionView {
        token: session.0,
        expires_at: session.1,
        user: UserView::from(&user),
        organizations: membership_views(&ms),
    })
}

pub async fn logout(state: &AppState, who: &Principal) -> Result<()> {
    let mut c = state.store.conn().await?;
    users::delete_session(&mut c, who.session_id).await?;
    Ok(())
}

pub fn me(who: &Principal) -> MeView {
    MeView { user: UserView::from(&who.user), organizations: membership_views(&who.memberships) }
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
    let (token, _) = new_session(&mut tx, &user, SessionKind::Token).await?;
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
    Ok(new_session(&mut c, user, SessionKind::Token).await?.0)
}
