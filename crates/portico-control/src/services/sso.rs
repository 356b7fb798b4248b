//! OpenID Connect single sign-on for the portal (`openidconnect`): the authorization-code flow
//! with PKCE (S256), a `state` bound to the browser by a cookie and kept (hashed, single use,
//! 10 minutes) in the store, a `nonce` checked in the ID token, and the ID token verified with
//! the provider's published keys (signature, `iss`, `aud`, `exp`). The e-mail comes from the ID
//! token, or from the userinfo endpoint when the ID token leaves it out.
//!
//! Every call to the provider (discovery, JWKS, token, userinfo) goes through the outbound
//! policy like any other outbound call, and follows no redirect.

use crate::auth::ClientInfo;
use crate::error::{Error, Result};
use crate::services::accounts::{self, ExternalIdentity};
use crate::state::AppState;
use crate::views::SessionView;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use portico_core::model::OrgKind;
use portico_core::outbound::{OutboundPolicy, literal_ip};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// How long a sign-in may take at the provider.
const LOGIN_TTL_MS: i64 = 10 * 60 * 1000;
/// The most a provider's answer may weigh.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// One OpenID provider of the portal's sign-in (`[[sso]]` in the settings).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoProvider {
    /// Its name in URLs: `/auth/sso/{id}`.
    pub id: String,
    /// What the sign-in button says ("Sign in with {name}").
    pub name: String,
    /// The provider's issuer URL (its discovery document is `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Scopes asked for besides `openid`; `email` and `profile` when empty.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The kind of organization made for a person who signs in for the first time.
    #[serde(default = "consumer")]
    pub account_type: OrgKind,
    /// Link a first sign-in to the existing account with the same e-mail (when the provider and
    /// Portico have both verified it; never a platform admin's). Off: such a person is asked to
    /// sign in with their password. Turn it on only for a provider that never hands an address
    /// to someone else (a recycled corporate mailbox would reach its former owner's account).
    #[serde(default)]
    pub link_by_email: bool,
}

fn consumer() -> OrgKind {
    OrgKind::Consumer
}

impl std::fmt::Debug for SsoProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoProvider")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<secret>")
            .finish_non_exhaustive()
    }
}

impl SsoProvider {
    /// Checks what can be checked without calling the provider.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let at = format!("sso `{}`", self.id.escape_default());
        if portico_core::values::Slug::parse(&self.id).is_err() {
            return Err(format!("{at}: id must be a slug (lowercase letters, digits, `-`)"));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > 60 {
            return Err(format!("{at}: name needs 1-60 characters"));
        }
        IssuerUrl::new(self.issuer.clone()).map_err(|e| format!("{at}: issuer is not a URL ({e})"))?;
        if !self.issuer.starts_with("https://") && !portico_core::outbound::plain_http_allowed(&self.issuer) {
            return Err(format!(
                "{at}: issuer must be an https:// URL (plain http only on loopback: the client secret and the codes would travel in the clear)"
            ));
        }
        if self.client_id.is_empty() || self.client_secret.is_empty() {
            return Err(format!("{at}: client_id and client_secret are required"));
        }
        if self.account_type == OrgKind::Platform {
            return Err(format!("{at}: account_type must be `consumer` or `provider`"));
        }
        Ok(())
    }
}

/// A sign-in button.
#[derive(Debug, Serialize, ToSchema)]
pub struct SsoProviderView {
    pub id: String,
    pub name: String,
    /// Where the browser goes to sign in.
    pub start_url: String,
}

pub fn providers(state: &AppState) -> Vec<SsoProviderView> {
    state
        .config
        .sso
        .iter()
        .map(|p| SsoProviderView { id: p.id.clone(), name: p.name.clone(), start_url: format!("/auth/sso/{}", p.id) })
        .collect()
}

fn provider<'a>(state: &'a AppState, id: &str) -> Result<&'a SsoProvider> {
    state
        .config
        .sso
        .iter()
        .find(|p| p.id == id)
        .ok_or_else(|| Error::not_found(format_args!("single sign-on provider `{}`", id.escape_default())))
}

/// An error of the HTTP client the OpenID flow calls the provider with.
#[derive(Debug)]
struct HttpError(String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpError {}

/// The HTTP client of the OpenID flow: owned parts, so that its futures are `Send + 'static`.
#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    policy: OutboundPolicy,
}

impl Http {
    fn new(state: &AppState) -> Result<Self> {
        Ok(Http {
            client: crate::services::outbound::client(state.config.outbound.clone())?,
            policy: state.config.outbound.clone(),
        })
    }
}

type Answer = std::result::Result<openidconnect::HttpResponse, HttpError>;

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send + 'c>>;

    fn call(&'c self, req: openidconnect::HttpRequest) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { send(&me.client, &me.policy, req).await })
    }
}

/// One request to the provider, through the outbound policy, no redirects, 10 s, 1 MiB.
async fn send(
    client: &reqwest::Client,
    policy: &OutboundPolicy,
    req: openidconnect::HttpRequest,
) -> std::result::Result<openidconnect::HttpResponse, HttpError> {
    let uri = req.uri().to_string();
    let url = reqwest::Url::parse(&uri).map_err(|e| HttpError(format!("`{uri}` is not a URL ({e})")))?;
    if let Some(ip) = url.host_str().and_then(literal_ip)
        && let Err(why) = policy.check(ip)
    {
        return Err(HttpError(format!("the outbound policy refuses {ip} ({why})")));
    }
    let (parts, body) = req.into_parts();
    let mut resp = client
        .request(parts.method, url)
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(format!("the identity provider could not be reached ({e})")))?;
    let mut out = http::Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| HttpError(format!("reading the answer failed ({e})")))? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(HttpError("the identity provider's answer is larger than 1 MiB".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    out.body(bytes).map_err(|e| HttpError(e.to_string()))
}

fn unavailable(what: &str, e: impl std::error::Error) -> Error {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cur = c.source();
    }
    tracing::warn!(error = %msg, "single sign-on: {what} failed");
    Error::Unavailable(format!("single sign-on is not available right now ({what} failed); try again shortly"))
}

fn redirect_url(state: &AppState, p: &SsoProvider) -> Result<RedirectUrl> {
    let url = format!("{}/auth/sso/{}/callback", state.config.token_issuer.trim_end_matches('/'), p.id);
    RedirectUrl::new(url).map_err(|e| Error::Internal(format!("the portal's public URL is not a URL ({e})")))
}

/// How long a provider's discovery document (and the keys it names) is reused.
const METADATA_TTL: Duration = Duration::from_secs(300);

/// Providers' discovery documents with their keys, by issuer, for [`METADATA_TTL`]: a sign-in
/// (started by anyone) costs no call to the provider while it is fresh.
fn metadata_cache()
-> &'static std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, CoreProviderMetadata)>> {
    static CACHE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, CoreProviderMetadata)>>,
    > = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The provider's discovery document and keys; `fresh`: skip the cache (after a verification
/// failure that newer keys may fix).
async fn metadata(p: &SsoProvider, http: &Http, fresh: bool) -> Result<CoreProviderMetadata> {
    if !fresh
        && let Some((at, m)) = metadata_cache().lock().unwrap_or_else(|e| e.into_inner()).get(&p.issuer)
        && at.elapsed() < METADATA_TTL
    {
        return Ok(m.clone());
    }
    let issuer = IssuerUrl::new(p.issuer.clone()).map_err(|e| Error::Invalid(format!("sso issuer: {e}")))?;
    let meta = CoreProviderMetadata::discover_async(issuer, http).await.map_err(|e| unavailable("discovery", e))?;
    let mut cache = metadata_cache().lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() > 64 {
        cache.clear();
    }
    cache.insert(p.issuer.clone(), (std::time::Instant::now(), meta.clone()));
    Ok(meta)
}

/// ID tokens are accepted only with these (never HS*, whatever the discovery document says).
fn id_token_algorithms() -> Vec<openidconnect::core::CoreJwsSigningAlgorithm> {
    use openidconnect::core::CoreJwsSigningAlgorithm::*;
    vec![
        RsaSsaPkcs1V15Sha256,
        RsaSsaPkcs1V15Sha384,
        RsaSsaPkcs1V15Sha512,
        RsaSsaPssSha256,
        RsaSsaPssSha384,
        RsaSsaPssSha512,
        EcdsaP256Sha256,
        EcdsaP384Sha384,
        EdDsa,
    ]
}

/// Where to send the browser, and the `state` to bind to it (in a cookie).
pub struct Started {
    pub authorize_url: String,
    pub state: String,
}

/// Begins a sign-in: discovers the provider and makes the authorization URL.
pub async fn start(state: &AppState, provider_id: &str) -> Result<Started> {
    let p = provider(state, provider_id)?;
    let http = Http::new(state)?;
    let meta = metadata(p, &http, false).await?;
    let oidc = CoreClient::from_provider_metadata(meta, ClientId::new(p.client_id.clone()), None)
        .set_redirect_uri(redirect_url(state, p)?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = oidc
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .set_pkce_challenge(challenge);
    let scopes = if p.scopes.is_empty() { vec!["email".to_owned(), "profile".to_owned()] } else { p.scopes.clone() };
    for s in scopes.into_iter().filter(|s| s != "openid") {
        req = req.add_scope(Scope::new(s));
    }
    let (url, csrf, nonce) = req.url();
    let pending = portico_store::sso::PendingLogin {
        provider: p.id.clone(),
        nonce: nonce.secret().clone(),
        pkce_verifier: verifier.secret().clone(),
    };
    let mut c = state.store.conn().await?;
    portico_store::sso::begin(&mut c, &crate::auth::token_hash(csrf.secret()), &pending).await?;
    Ok(Started { authorize_url: url.to_string(), state: csrf.secret().clone() })
}

/// What the provider sent the browser back with.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Ends a sign-in: checks the state against the browser's cookie and the store, trades the
/// code for tokens, verifies the ID token and signs the person in.
pub async fn finish(
    state: &AppState,
    provider_id: &str,
    cb: Callback,
    cookie_state: Option<&str>,
    client: &ClientInfo,
    replaces: Option<&str>,
) -> Result<SessionView> {
    let p = provider(state, provider_id)?;
    if let Some(error) = &cb.error {
        // Only the error code, and only if it looks like one: the description is whatever the
        // link's author wrote.
        let code: String = error.chars().filter(|c| c.is_ascii_lowercase() || *c == '_').take(40).collect();
        return Err(Error::Unauthenticated(format!(
            "the identity provider did not sign you in ({}); try again",
            if code.is_empty() { "no reason given" } else { &code }
        )));
    }
    let (Some(code), Some(returned)) = (cb.code, cb.state) else {
        return Err(Error::Invalid("the sign-in answer lacks `code` or `state`; start the sign-in again".into()));
    };
    // The state must be the one this browser was sent off with (login CSRF), and unused.
    let bound = cookie_state.is_some_and(|c| {
        use subtle::ConstantTimeEq;
        c.as_bytes().ct_eq(returned.as_bytes()).into()
    });
    if !bound {
        return Err(Error::Unauthenticated(
            "this sign-in was not started in this browser (or took too long); start it again".into(),
        ));
    }
    let mut c = state.store.conn().await?;
    let pending = portico_store::sso::take(&mut c, &crate::auth::token_hash(&returned), LOGIN_TTL_MS).await?;
    drop(c);
    let pending = pending
        .filter(|l| l.provider == p.id)
        .ok_or_else(|| Error::Unauthenticated("this sign-in expired or was already used; start it again".into()))?;

    let http = Http::new(state)?;
    let meta = metadata(p, &http, false).await?;
    let oidc = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(p.client_id.clone()),
        Some(ClientSecret::new(p.client_secret.clone())),
    )
    .set_redirect_uri(redirect_url(state, p)?);
    let tokens = oidc
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| unavailable("the token endpoint", e))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
        .request_async(&http)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "single sign-on: the provider refused the code");
            Error::Unauthenticated("the identity provider refused the sign-in code; start the sign-in again".into())
        })?;
    let id_token =
        tokens.id_token().ok_or_else(|| Error::Unauthenticated("the identity provider sent no ID token".into()))?;
    let nonce = Nonce::new(pending.nonce);
    let verifier = oidc.id_token_verifier().set_allowed_algs(id_token_algorithms());
    let claims = match id_token.claims(&verifier, &nonce) {
        Ok(c) => c.clone(),
        Err(first) => {
            // Keys rotated since the discovery document was cached: look once more.
            let meta = metadata(p, &http, true).await?;
            let again = CoreClient::from_provider_metadata(meta, ClientId::new(p.client_id.clone()), None);
            let verifier = again.id_token_verifier().set_allowed_algs(id_token_algorithms());
            id_token.claims(&verifier, &nonce).cloned().map_err(|e| {
                tracing::warn!(error = %e, first = %first, "single sign-on: the ID token was refused");
                Error::Unauthenticated(format!("the identity provider's ID token was refused ({e})"))
            })?
        }
    };
    let mut email = claims.email().map(|e| e.as_str().to_owned());
    let mut email_verified = claims.email_verified().unwrap_or(false);
    let mut name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned());
    if email.is_none() {
        // Providers that keep the ID token small give the e-mail at the userinfo endpoint.
        if let Ok(req) = oidc.user_info(tokens.access_token().clone(), Some(claims.subject().clone())) {
            let info: CoreUserInfoClaims = req.request_async(&http).await.map_err(|e| unavailable("userinfo", e))?;
            email = info.email().map(|e| e.as_str().to_owned());
            email_verified = info.email_verified().unwrap_or(false);
            name = name.or_else(|| info.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()));
        }
    }
    let identity = ExternalIdentity {
        provider: p.id.clone(),
        issuer: claims.issuer().as_str().to_owned(),
        subject: claims.subject().as_str().to_owned(),
        email,
        email_verified,
        name,
    };
    accounts::sso_sign_in(state, identity, p.account_type, p.link_by_email, client, replaces).await
}

/// The cookie that binds a sign-in's `state` to the browser that started it: `Lax` so that it
/// comes back with the provider's redirect, 10 minutes, `__Host-` in a secure context.
pub fn state_cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-portico_sso" } else { "portico_sso" }
}

pub fn state_set_cookie(secure: bool, value: &str, max_age: Duration) -> String {
    let name = state_cookie_name(secure);
    let secure_attr = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure_attr}", max_age.as_secs())
}
