//! OAuth2 clients of apps and the keys access tokens are signed with.

use crate::row::{get, opt_time, parse, time, with};
use crate::{Conn, Error, Result, now_millis};
use portico_core::api_key::KeyHash;
use portico_core::ids::{AppId, ExternalClientId, OrgId};
use portico_core::values::Slug;
use sqlx::any::AnyRow;

#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub app_id: AppId,
    pub name: String,
    pub secret_hash: KeyHash,
    /// API slugs the client may ask tokens for; empty: every API the app subscribes to.
    pub scopes: Vec<String>,
    pub created_at: time::OffsetDateTime,
    pub revoked_at: Option<time::OffsetDateTime>,
}

const CLIENT_COLS: &str = "client_id, app_id, name, secret_hash, scopes, created_at, revoked_at";

fn decode_client(r: &AnyRow) -> Result<Client> {
    let t = "oauth_clients";
    Ok(Client {
        client_id: get(r, t, "client_id")?,
        app_id: parse(r, t, "app_id")?,
        name: get(r, t, "name")?,
        secret_hash: with(r, t, "secret_hash", KeyHash::from_hex)?,
        scopes: with(r, t, "scopes", |s| serde_json::from_str::<Vec<String>>(s))?,
        created_at: time(r, t, "created_at")?,
        revoked_at: opt_time(r, t, "revoked_at")?,
    })
}

pub async fn insert_client(
    c: &mut Conn,
    client_id: &str,
    app: AppId,
    name: &str,
    secret_hash: &KeyHash,
    pepper_id: &str,
    scopes: &[String],
) -> Result<Client> {
    let now = now_millis();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO oauth_clients ({CLIENT_COLS}, pepper_id) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)"
    )))
    .bind(client_id)
    .bind(app.to_string())
    .bind(name)
    .bind(secret_hash.to_hex())
    .bind(serde_json::to_string(scopes).unwrap_or_else(|_| "[]".into()))
    .bind(now)
    .bind(pepper_id)
    .execute(c)
    .await
    .map_err(Error::unique("that client"))?;
    Ok(Client {
        client_id: client_id.into(),
        app_id: app,
        name: name.into(),
        secret_hash: *secret_hash,
        scopes: scopes.to_vec(),
        created_at: crate::from_millis(now),
        revoked_at: None,
    })
}

pub async fn clients_of_app(c: &mut Conn, app: AppId) -> Result<Vec<Client>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CLIENT_COLS} FROM oauth_clients WHERE app_id = $1 ORDER BY created_at"
    )))
    .bind(app.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_client).collect()
}

/// A client that has not been revoked, with its app's organization.
pub async fn active_client(c: &mut Conn, client_id: &str) -> Result<Option<(Client, OrgId, Slug)>> {
    let r = sqlx::query(
        "SELECT k.client_id, k.app_id, k.name, k.secret_hash, k.scopes, k.created_at, k.revoked_at, a.org_id, o.slug \
         FROM oauth_clients k JOIN apps a ON a.id = k.app_id JOIN organizations o ON o.id = a.org_id \
         WHERE k.client_id = $1 AND k.revoked_at IS NULL",
    )
    .bind(client_id)
    .fetch_optional(c)
    .await?;
    match r {
        None => Ok(None),
        Some(r) => Ok(Some((
            decode_client(&r)?,
            parse(&r, "oauth_clients", "org_id")?,
            with(&r, "organizations", "slug", Slug::parse)?,
        ))),
    }
}

/// Replaces a client secret's hash made under a previous pepper by its hash under the current one.
pub async fn rehash_client_secret(
    c: &mut Conn,
    client_id: &str,
    old: &KeyHash,
    new: &KeyHash,
    pepper_id: &str,
) -> Result<()> {
    sqlx::query("UPDATE oauth_clients SET secret_hash = $1, pepper_id = $2 WHERE client_id = $3 AND secret_hash = $4")
        .bind(new.to_hex())
        .bind(pepper_id)
        .bind(client_id)
        .bind(old.to_hex())
        .execute(c)
        .await?;
    Ok(())
}

/// Ids of every client that has not been revoked (the gateway refuses tokens of the others).
pub async fn active_client_ids(c: &mut Conn) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT client_id FROM oauth_clients WHERE revoked_at IS NULL").fetch_all(c).await?;
    rows.iter().map(|r| get(r, "oauth_clients", "client_id")).collect()
}

/// Revokes a client of `app`; `NotFound` when the app has no such live client.
pub async fn revoke_client(c: &mut Conn, app: AppId, client_id: &str) -> Result<()> {
    let n = sqlx::query(
        "UPDATE oauth_clients SET revoked_at = $1 WHERE client_id = $2 AND app_id = $3 AND revoked_at IS NULL",
    )
    .bind(now_millis())
    .bind(client_id)
    .bind(app.to_string())
    .execute(c)
    .await?
    .rows_affected();
    if n == 0 { Err(Error::NotFound) } else { Ok(()) }
}

/// An app's identity at an external token issuer.
#[derive(Debug, Clone)]
pub struct ExternalClient {
    pub id: ExternalClientId,
    pub app_id: AppId,
    pub issuer: String,
    /// Where the issuer's keys that verified the proof are published.
    pub jwks_url: String,
    pub client_id: String,
    pub name: String,
    pub created_at: time::OffsetDateTime,
}

const EXTERNAL_COLS: &str = "id, app_id, issuer, jwks_url, client_id, name, created_at";

fn decode_external(r: &AnyRow) -> Result<ExternalClient> {
    let t = "app_external_clients";
    Ok(ExternalClient {
        id: parse(r, t, "id")?,
        app_id: parse(r, t, "app_id")?,
        issuer: get(r, t, "issuer")?,
        jwks_url: get(r, t, "jwks_url")?,
        client_id: get(r, t, "client_id")?,
        name: get(r, t, "name")?,
        created_at: time(r, t, "created_at")?,
    })
}

/// An identity at an external issuer: its `iss`, its keys' URL, the client.
#[derive(Debug, Clone, Copy)]
pub struct ExternalIdentity<'a> {
    pub issuer: &'a str,
    pub jwks_url: &'a str,
    pub client_id: &'a str,
}

/// Registers an identity as `app`'s; `Conflict` when another app (or this one) has it.
pub async fn insert_external_client(
    c: &mut Conn,
    app: AppId,
    who: ExternalIdentity<'_>,
    name: &str,
) -> Result<ExternalClient> {
    let ExternalIdentity { issuer, jwks_url, client_id } = who;
    let (id, now) = (ExternalClientId::new(), now_millis());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO app_external_clients ({EXTERNAL_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )))
    .bind(id.to_string())
    .bind(app.to_string())
    .bind(issuer)
    .bind(jwks_url)
    .bind(client_id)
    .bind(name)
    .bind(now)
    .execute(c)
    .await
    .map_err(Error::unique("that client of that issuer"))?;
    Ok(ExternalClient {
        id,
        app_id: app,
        issuer: issuer.into(),
        jwks_url: jwks_url.into(),
        client_id: client_id.into(),
        name: name.into(),
        created_at: crate::from_millis(now),
    })
}

pub async fn external_clients_of_app(c: &mut Conn, app: AppId) -> Result<Vec<ExternalClient>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EXTERNAL_COLS} FROM app_external_clients WHERE app_id = $1 ORDER BY created_at, id"
    )))
    .bind(app.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_external).collect()
}

/// Removes an external client of `app`; `NotFound` when the app has no such client.
pub async fn delete_external_client(c: &mut Conn, app: AppId, id: ExternalClientId) -> Result<ExternalClient> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM app_external_clients WHERE id = $1 AND app_id = $2 RETURNING {EXTERNAL_COLS}"
    )))
    .bind(id.to_string())
    .bind(app.to_string())
    .fetch_optional(c)
    .await?;
    r.as_ref().map(decode_external).transpose()?.ok_or(Error::NotFound)
}

/// Every external client with its app's organization (for the snapshot).
pub async fn external_client_grants(c: &mut Conn) -> Result<Vec<(ExternalClient, OrgId, Slug)>> {
    let rows = sqlx::query(
        "SELECT x.id, x.app_id, x.issuer, x.jwks_url, x.client_id, x.name, x.created_at, a.org_id, o.slug \
         FROM app_external_clients x JOIN apps a ON a.id = x.app_id JOIN organizations o ON o.id = a.org_id",
    )
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| Ok((decode_external(r)?, parse(r, "apps", "org_id")?, with(r, "organizations", "slug", Slug::parse)?)))
        .collect()
}

#[derive(Debug, Clone)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: String,
    /// The private key as stored (PKCS#8 DER, base64).
    pub private_key: String,
    /// The raw public key, base64url (a JWK's `x`).
    pub public_key: String,
    pub created_at: time::OffsetDateTime,
    pub retired_at: Option<time::OffsetDateTime>,
}

fn decode_key(r: &AnyRow) -> Result<SigningKey> {
    let t = "signing_keys";
    Ok(SigningKey {
        kid: get(r, t, "kid")?,
        algorithm: get(r, t, "algorithm")?,
        private_key: get(r, t, "private_key")?,
        public_key: get(r, t, "public_key")?,
        created_at: time(r, t, "created_at")?,
        retired_at: opt_time(r, t, "retired_at")?,
    })
}

/// Keys that sign now or signed within `keep_ms`: the JWKS. Newest first; the first one
/// without `retired_at` signs.
pub async fn signing_keys(c: &mut Conn, keep_ms: i64) -> Result<Vec<SigningKey>> {
    let rows = sqlx::query(
        "SELECT kid, algorithm, private_key, public_key, created_at, retired_at FROM signing_keys \
         WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at DESC",
    )
    .bind(now_millis() - keep_ms)
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_key).collect()
}

/// Adds a signing key and retires the ones before it.
pub async fn rotate_signing_key(
    c: &mut Conn,
    kid: &str,
    algorithm: &str,
    private_key: &str,
    public_key: &str,
) -> Result<()> {
    let now = now_millis();
    sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL").bind(now).execute(&mut *c).await?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, retired_at) VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(kid)
    .bind(algorithm)
    .bind(private_key)
    .bind(public_key)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn set_private_key(c: &mut Conn, kid: &str, private_key: &str) -> Result<()> {
    sqlx::query("UPDATE signing_keys SET private_key = $1 WHERE kid = $2")
        .bind(private_key)
        .bind(kid)
        .execute(c)
        .await?;
    Ok(())
}
