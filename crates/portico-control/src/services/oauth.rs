//! OAuth2 for API consumers: an app's clients, the client-credentials grant (RFC 6749 §4.4)
//! issuing Portico-signed JWT access tokens (RFC 9068 profile, EdDSA, `kid` from the JWKS),
//! short-lived app tokens for the portal's try-it, and the signing keys with their rotation.
//!
//! Tokens carry `iss` (the API's public URL), `aud` (the gateway's public URL), `exp`, `iat`,
//! `nbf`, `jti`, `sub` (the client id or `app:<id>`), `client_id`, `app_id`, `org_id`,
//! `org` (the consumer's slug) and `scope` (API slugs, space-separated). The gateway trusts
//! them because they are signed; it still refuses tokens of a revoked client at once.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::audit::{self, Change};
use crate::services::{parse_id, publish};
use crate::state::AppState;
use base64::Engine;
use portico_core::ids::{AppId, OrgId};
use portico_core::model::OrgKind;
use portico_store::{Store, apps, oauth, orgs};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Access tokens from the client-credentials grant live this long.
pub const TOKEN_TTL_SECS: i64 = 900;
/// Try-it tokens live this long.
pub const APP_TOKEN_TTL_SECS: i64 = 300;
/// A retired signing key stays in the JWKS this long (longer than any token it signed).
pub const RETIRED_KEY_KEEP_MS: i64 = 24 * 3600 * 1000;
/// The `typ` of Portico's access tokens (RFC 9068): an ID token or any other JWT is refused.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The claims of a Portico access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub app_id: String,
    pub org_id: String,
    pub org: String,
    /// API slugs, space-separated; empty: any API the app subscribes to.
    #[serde(default)]
    pub scope: String,
}

fn random_base62(n: usize) -> String {
    const A: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..n).map(|_| A[rand::random_range(0..62usize)] as char).collect()
}

/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed prefix and the 32 bytes.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(seed);
    der
}

/// Makes a new Ed25519 signing key the active one; the previous ones are retired (kept in the
/// JWKS for a day). Returns the new `kid`.
pub async fn rotate_signing_key(store: &Store, secrets: &portico_core::secret::Keyring) -> Result<String> {
    let seed: [u8; 32] = rand::random();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let kid = format!("ptk_{}", random_base62(16));
    let private = secrets.seal(&base64::engine::general_purpose::STANDARD.encode(ed25519_pkcs8(&seed)));
    let mut tx = store.begin().await?;
    oauth::rotate_signing_key(&mut tx, &kid, "EdDSA", &private, &B64URL.encode(public)).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    Ok(kid)
}

/// Makes sure there is a key to sign with (at start).
pub async fn ensure_signing_key(store: &Store, secrets: &portico_core::secret::Keyring) -> Result<()> {
    let mut c = store.conn().await?;
    let keys = oauth::signing_keys(&mut c, RETIRED_KEY_KEEP_MS).await?;
    drop(c);
    if !keys.iter().any(|k| k.retired_at.is_none()) {
        rotate_signing_key(store, secrets).await?;
    }
    Ok(())
}

/// A stored public key (base64url) as the 32 raw bytes the gateway verifies with.
pub fn raw_public_key(b64url: &str) -> Option<[u8; 32]> {
    B64URL.decode(b64url).ok()?.try_into().ok()
}

/// The JSON Web Key Set (RFC 7517) of the keys tokens may be signed with.
pub async fn jwks(state: &AppState) -> Result<serde_json::Value> {
    let mut c = state.store.conn().await?;
    let keys: Vec<serde_json::Value> = oauth::signing_keys(&mut c, RETIRED_KEY_KEEP_MS)
        .await?
        .into_iter()
        .map(|k| {
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": k.public_key, "kid": k.kid, "use": "sig", "alg": "EdDSA"})
        })
        .collect();
    Ok(serde_json::json!({ "keys": keys }))
}

/// RFC 8414 authorization server metadata.
pub fn metadata(state: &AppState) -> serde_json::Value {
    let iss = state.config.token_issuer.trim_end_matches('/');
    serde_json::json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}/oauth/token"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "response_types_supported": ["token"],
    })
}

async fn sign(state: &AppState, claims: &AccessClaims) -> Result<String> {
    let mut c = state.store.conn().await?;
    let key = oauth::signing_keys(&mut c, 0)
        .await?
        .into_iter()
        .find(|k| k.retired_at.is_none())
        .ok_or_else(|| Error::Unavailable("no token signing key; restart Portico to create one".into()))?;
    let opened = state.secrets.open(&key.private_key)?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(&opened)
        .map_err(|e| Error::Internal(format!("signing key {}: {e}", key.kid)))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid);
    header.typ = Some(ACCESS_TOKEN_TYP.into());
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_ed_der(&der))
        .map_err(|e| Error::Internal(format!("signing a token: {e}")))
}

fn claims(
    state: &AppState,
    sub: String,
    client: Option<String>,
    app: AppId,
    org: OrgId,
    org_slug: &str,
    scope: String,
    ttl: i64,
) -> AccessClaims {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    AccessClaims {
        iss: state.config.token_issuer.trim_end_matches('/').to_owned(),
        aud: state.config.gateway_url.trim_end_matches('/').to_owned(),
        sub,
        exp: now + ttl,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: client,
        app_id: app.to_string(),
        org_id: org.to_string(),
        org: org_slug.to_owned(),
        scope,
    }
}

/// The RFC 6749 §5.1 answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_in: i64,
    /// The API slugs the token may call (space-separated); empty: every subscribed API.
    pub scope: String,
}

/// An RFC 6749 §5.2 error, answered as problem+json with `error` and `error_description`.
#[derive(Debug)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status, error, description: description.into() }
    }
}

/// `grant_type=client_credentials` with the client's id and secret.
pub async fn client_credentials(
    state: &AppState,
    client_id: &str,
    secret: &str,
    requested_scope: Option<&str>,
) -> std::result::Result<TokenResponse, OAuthError> {
    let internal = |e: Error| {
        tracing::error!(error = %e, "token endpoint");
        OAuthError::new(500, "server_error", "something went wrong on our side; try again")
    };
    let invalid = || OAuthError::new(401, "invalid_client", "unknown client or wrong secret");
    let mut c = state.store.conn().await.map_err(|e| internal(e.into()))?;
    let found = oauth::active_client(&mut c, client_id).await.map_err(|e| internal(e.into()))?;
    drop(c);
    // Compare against something even for an unknown client, so timing tells nothing.
    let presented = state.pepper.mac(secret);
    let Some((client, org_id, org_slug)) = found else {
        // As much work as for a known client with a wrong secret.
        let _ = std::hint::black_box(state.pepper.previous_macs(secret).filter(|h| h.ct_eq(&presented)).count());
        return Err(invalid());
    };
    let matches = |h: &portico_core::api_key::KeyHash| h.ct_eq(&client.secret_hash);
    if !matches(&presented) {
        // Issued before a pepper rotation: accepted under the previous pepper it was hashed
        // under, and re-hashed under the current one now.
        let Some(old) = state.pepper.previous_macs(secret).find(|h| matches(h)) else {
            return Err(invalid());
        };
        // The secret is right: a failed re-hash is retried at the next token, not refused now.
        let rehashed = match state.store.conn().await {
            Ok(mut c) => oauth::rehash_client_secret(&mut c, client_id, &old, &presented, &state.pepper.id()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = rehashed {
            tracing::warn!(error = %e, client_id, "re-hashing a client secret under the current pepper failed");
        }
    }
    let scope: Vec<String> = match requested_scope.map(str::trim).filter(|s| !s.is_empty()) {
        None => client.scopes.clone(),
        Some(req) => {
            let asked: Vec<String> = req.split_whitespace().map(str::to_owned).collect();
            if let Some(bad) = asked.iter().find(|s| !client.scopes.is_empty() && !client.scopes.contains(s)) {
                return Err(OAuthError::new(
                    400,
                    "invalid_scope",
                    format!("this client may not ask for `{bad}`; its scopes are: {}", client.scopes.join(" ")),
                ));
            }
            asked
        }
    };
    let scope = scope.join(" ");
    let cl = claims(
        state,
        client.client_id.clone(),
        Some(client.client_id.clone()),
        client.app_id,
        org_id,
        org_slug.as_str(),
        scope.clone(),
        TOKEN_TTL_SECS,
    );
    let token = sign(state, &cl).await.map_err(internal)?;
    Ok(TokenResponse { access_token: token, token_type: "Bearer".into(), expires_in: TOKEN_TTL_SECS, scope })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClient {
    /// 1-60 characters.
    pub name: Option<String>,
    /// API slugs this client may get tokens for; none: every API the app subscribes to.
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub client_id: String,
    pub app_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A new client: its secret is in this answer and nowhere else.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedClient {
    pub client_secret: String,
    #[serde(flatten)]
    pub client: ClientView,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl From<&oauth::Client> for ClientView {
    fn from(c: &oauth::Client) -> Self {
        ClientView {
            client_id: c.client_id.clone(),
            app_id: c.app_id.to_string(),
            name: c.name.clone(),
            scopes: c.scopes.clone(),
            created_at: rfc3339(c.created_at),
            revoked_at: c.revoked_at.map(rfc3339),
        }
    }
}

/// The app, if `who` may see it (another's answers 404).
async fn readable_app(state: &AppState, who: &Principal, id: &str) -> Result<apps::App> {
    let app_id: AppId = parse_id(id, "app")?;
    let mut c = state.store.conn().await?;
    apps::app_by_id(&mut c, app_id)
        .await?
        .filter(|a| who.can_read(a.org_id))
        .ok_or_else(|| Error::not_found(format_args!("app `{id}`")))
}

/// The app, if `who` may manage it (another's answers 404).
async fn managed_app(state: &AppState, who: &Principal, id: &str) -> Result<apps::App> {
    let app = readable_app(state, who, id).await?;
    if !who.can_manage(app.org_id) {
        return Err(Error::Forbidden("your role in this organization cannot manage the app's credentials".into()));
    }
    Ok(app)
}

pub async fn create_client(state: &AppState, who: &Principal, app: &str, req: CreateClient) -> Result<CreatedClient> {
    let app = managed_app(state, who, app).await?;
    let name = req.name.unwrap_or_else(|| "default".into());
    if name.trim().is_empty() || name.len() > 60 {
        return Err(Error::Invalid("name: a client's name needs 1-60 characters".into()));
    }
    if req.scopes.len() > 100 || req.scopes.iter().any(|s| portico_core::values::Slug::parse(s).is_err()) {
        return Err(Error::Invalid("scopes: a list of API slugs (at most 100)".into()));
    }
    let client_id = format!("ptci_{}", random_base62(22));
    let secret = format!("ptcs_{}", random_base62(40));
    let mut tx = state.store.begin().await?;
    let client = oauth::insert_client(
        &mut tx,
        &client_id,
        app.id,
        name.trim(),
        &state.pepper.mac(&secret),
        &state.pepper.id(),
        &req.scopes,
    )
    .await?;
    let view = ClientView::from(&client);
    audit::record(
        &mut tx,
        who,
        Change::new("oauth_client.create", "oauth_client", &client_id, Some(app.org_id)).after(&view),
    )
    .await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(CreatedClient { client_secret: secret, client: view })
}

pub async fn list_clients(state: &AppState, who: &Principal, app: &str) -> Result<Vec<ClientView>> {
    let app = readable_app(state, who, app).await?;
    let mut c = state.store.conn().await?;
    Ok(oauth::clients_of_app(&mut c, app.id).await?.iter().map(ClientView::from).collect())
}

pub async fn revoke_client(state: &AppState, who: &Principal, app: &str, client_id: &str) -> Result<()> {
    let app = managed_app(state, who, app).await?;
    let mut tx = state.store.begin().await?;
    oauth::revoke_client(&mut tx, app.id, client_id).await.map_err(|e| match e {
        portico_store::Error::NotFound => Error::not_found(format_args!("client `{client_id}`")),
        other => other.into(),
    })?;
    audit::record(&mut tx, who, Change::new("oauth_client.revoke", "oauth_client", client_id, Some(app.org_id)))
        .await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(())
}

/// Registers the app's client at an external token issuer that an API trusts: the owner proves
/// the client is theirs with a token the issuer gave it (for that API: its audience).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExternalClient {
    /// The API (slug) whose `policies.token_issuers` trusts the token's issuer.
    pub api: String,
    /// A current access token of the client, from the issuer: proof that the client is yours.
    /// Only its `iss`, signature and client claim are kept (never the token).
    #[schema(format = Password)]
    pub token: String,
    /// 1-60 characters (the client's id when absent).
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExternalClientView {
    pub id: String,
    pub app_id: String,
    pub issuer: String,
    /// Where the issuer's keys are published (an issuer is its `iss` and its keys).
    pub jwks_url: String,
    pub client_id: String,
    pub name: String,
    pub created_at: String,
}

impl From<&oauth::ExternalClient> for ExternalClientView {
    fn from(x: &oauth::ExternalClient) -> Self {
        ExternalClientView {
            id: x.id.to_string(),
            app_id: x.app_id.to_string(),
            issuer: x.issuer.clone(),
            jwks_url: x.jwks_url.clone(),
            client_id: x.client_id.clone(),
            name: x.name.clone(),
            created_at: rfc3339(x.created_at),
        }
    }
}

/// The issuer of `api`'s serving versions that `token` claims to come from.
async fn trusted_issuer(
    state: &AppState,
    who: &Principal,
    api: &str,
    token: &str,
) -> Result<portico_core::policy::TokenIssuer> {
    let api = crate::services::visible_api(state, Some(who), api).await?;
    let mut c = state.store.conn().await?;
    let mut versions = portico_store::catalog::versions(&mut c, api.id).await?;
    drop(c);
    versions.retain(|v| v.state.serves_traffic());
    versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    let iss = portico_core::jwt::unverified_issuer(token)
        .ok_or_else(|| Error::Invalid("token: not a JWT with an `iss` claim".into()))?;
    versions.iter().find_map(|v| v.policies.token_issuer(&iss).cloned()).ok_or_else(|| {
        Error::Invalid(format!(
            "token: API `{}` does not accept tokens of issuer `{}` (see its versions' token_issuers)",
            api.slug,
            iss.chars().take(200).collect::<String>().escape_default()
        ))
    })
}

pub async fn list_external_clients(state: &AppState, who: &Principal, app: &str) -> Result<Vec<ExternalClientView>> {
    let app = readable_app(state, who, app).await?;
    let mut c = state.store.conn().await?;
    Ok(oauth::external_clients_of_app(&mut c, app.id).await?.iter().map(ExternalClientView::from).collect())
}

/// Lets the client's tokens from an external issuer call as the app (on APIs whose policies
/// trust that issuer — its `iss` and its keys — and that the app subscribes to), once the
/// token proves the client: signed by the issuer's published key, for the API's audience,
/// unexpired.
pub async fn create_external_client(
    state: &AppState,
    who: &Principal,
    app: &str,
    req: CreateExternalClient,
) -> Result<ExternalClientView> {
    use portico_core::jwt;
    let app = managed_app(state, who, app).await?;
    let issuer = trusted_issuer(state, who, &req.api, &req.token).await?;
    let proof = |m: String| Error::Invalid(format!("token: it does not prove the client ({m})"));
    let header = jwt::check_header(&issuer, &req.token).map_err(proof)?;
    let body =
        crate::services::outbound::fetch(&state.config.outbound, "the issuer's jwks_url", &issuer.jwks_url, 512 * 1024)
            .await?;
    let keys = jwt::KeySet::parse(&body).map_err(|e| Error::Invalid(format!("the issuer's jwks_url: {e}")))?;
    let key = keys
        .find(header.kid.as_deref(), header.alg)
        .ok_or_else(|| proof("it was signed with a key its issuer does not publish".into()))?;
    let client_id = jwt::verify(&issuer, header.alg, &key.key, &req.token).map_err(proof)?;
    let name = req.name.unwrap_or_else(|| client_id.chars().take(60).collect());
    if name.trim().is_empty() || name.chars().count() > 60 {
        return Err(Error::Invalid("name: 1-60 characters".into()));
    }
    let identity =
        oauth::ExternalIdentity { issuer: &issuer.issuer, jwks_url: &issuer.jwks_url, client_id: &client_id };
    let mut tx = state.store.begin().await?;
    let x = oauth::insert_external_client(&mut tx, app.id, identity, name.trim()).await?;
    let view = ExternalClientView::from(&x);
    audit::record(
        &mut tx,
        who,
        Change::new("external_client.create", "external_client", x.id, Some(app.org_id)).after(&view),
    )
    .await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(view)
}

/// The issuer's tokens for that client are refused from the next snapshot (within a second).
pub async fn delete_external_client(state: &AppState, who: &Principal, app: &str, id: &str) -> Result<()> {
    let app = managed_app(state, who, app).await?;
    let xid: portico_core::ids::ExternalClientId =
        id.parse().map_err(|_| Error::not_found(format_args!("external client `{id}`")))?;
    let mut tx = state.store.begin().await?;
    let x = oauth::delete_external_client(&mut tx, app.id, xid).await.map_err(|e| match e {
        portico_store::Error::NotFound => Error::not_found(format_args!("external client `{id}`")),
        other => other.into(),
    })?;
    audit::record(
        &mut tx,
        who,
        Change::new("external_client.delete", "external_client", x.id, Some(app.org_id))
            .before(ExternalClientView::from(&x)),
    )
    .await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(())
}

/// A short-lived token for one of the caller's apps: how the portal's try-it calls the gateway
/// without ever handling the app's key.
pub async fn app_token(state: &AppState, who: &Principal, app: &str) -> Result<TokenResponse> {
    let app = managed_app(state, who, app).await?;
    let mut c = state.store.conn().await?;
    let org = orgs::by_id(&mut c, app.org_id)
        .await?
        .filter(|o| o.kind == OrgKind::Consumer)
        .ok_or_else(|| Error::not_found(format_args!("app `{}`", app.id)))?;
    drop(c);
    let cl = claims(
        state,
        format!("app:{}", app.id),
        None,
        app.id,
        org.id,
        org.slug.as_str(),
        String::new(),
        APP_TOKEN_TTL_SECS,
    );
    let token = sign(state, &cl).await?;
    Ok(TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: APP_TOKEN_TTL_SECS,
        scope: String::new(),
    })
}

/// Rotates the signing key (platform admins): new tokens are signed with a new key, tokens
/// signed with the old one stay valid until they expire.
pub async fn rotate(state: &AppState, who: &Principal) -> Result<serde_json::Value> {
    if !who.is_admin() {
        return Err(Error::Forbidden("only platform admins rotate the token signing key".into()));
    }
    let kid = rotate_signing_key(&state.store, &state.secrets).await?;
    let mut c = state.store.conn().await?;
    audit::record(&mut c, who, Change::new("signing_key.rotate", "signing_key", &kid, None)).await?;
    drop(c);
    publish(state).await;
    Ok(serde_json::json!({ "kid": kid }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkcs8_wrapping_is_what_ed25519_dalek_reads() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let seed: [u8; 32] = rand::random();
        let k = ed25519_dalek::SigningKey::from_pkcs8_der(&ed25519_pkcs8(&seed)).unwrap();
        assert_eq!(k.to_bytes(), seed);
    }
}
