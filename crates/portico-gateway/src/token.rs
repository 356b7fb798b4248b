//! Portico-signed access tokens (JWT, RFC 9068 profile) as a credential: EdDSA only, `typ`
//! `at+jwt`, a `kid` from the snapshot's keys, `iss` / `aud` / `exp` required and checked, and the
//! client not revoked. Everything else (`alg: none`, HS256 signed with the public key, an ID
//! token, a string `exp`) is refused.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use portico_core::ids::{AppId, OrgId};
use portico_core::snapshot::Snapshot;
use portico_core::values::Slug;
use serde::Deserialize;

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCaller {
    pub app_id: AppId,
    pub consumer_org_id: OrgId,
    pub consumer_slug: Slug,
    /// API slugs the token may call; empty: any API the app subscribes to.
    pub scope: String,
}

impl TokenCaller {
    pub fn allows(&self, api: &str) -> bool {
        self.scope.is_empty() || self.scope.split(' ').any(|s| s == api)
    }
}

/// Where tokens must come from and be meant for.
#[derive(Debug, Clone)]
pub struct TokenTrust {
    pub issuer: String,
    pub audience: String,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    client_id: Option<String>,
    app_id: String,
    org_id: String,
    org: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    iat: Option<i64>,
}

/// Why a token was refused; the text goes into the 401's detail.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub &'static str);

pub fn verify(snapshot: &Snapshot, trust: Option<&TokenTrust>, token: &str) -> Result<TokenCaller, Refused> {
    let Some(trust) = trust else {
        return Err(Refused("this gateway does not accept access tokens"));
    };
    let header = jsonwebtoken::decode_header(token).map_err(|_| Refused("the access token is not a valid JWT"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(Refused("the access token is not signed the way Portico signs (EdDSA)"));
    }
    if !header.typ.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("at+jwt")) {
        return Err(Refused("that is not an access token (typ must be at+jwt; ID tokens are not accepted)"));
    }
    let kid = header.kid.as_deref().ok_or(Refused("the access token names no signing key (kid)"))?;
    let (raw, retired_at) = snapshot
        .token_keys
        .iter()
        .find(|(k, _, _)| k == kid)
        .map(|(_, raw, retired)| (raw, *retired))
        .ok_or(Refused("the access token was signed with a key this gateway does not trust"))?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[trust.issuer.as_str()]);
    v.set_audience(&[trust.audience.as_str()]);
    v.required_spec_claims = ["exp", "iss", "aud"].into_iter().map(String::from).collect();
    v.validate_nbf = true;
    v.leeway = 30;
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_ed_der(raw), &v).map_err(|e| {
        Refused(match e.kind() {
            ErrorKind::ExpiredSignature => "the access token has expired; get a new one from /oauth/token",
            ErrorKind::ImmatureSignature => "the access token is not valid yet",
            ErrorKind::InvalidIssuer => "the access token was issued by someone else",
            ErrorKind::InvalidAudience => "the access token is meant for another audience",
            ErrorKind::InvalidSignature => "the access token's signature does not verify",
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                "the access token lacks a required claim or has one in the wrong format"
            }
            _ => "the access token is invalid",
        })
    })?;
    let c = data.claims;
    // A retired key still verifies the tokens it signed before it was retired, never later ones.
    if let Some(retired) = retired_at
        && c.iat.is_none_or(|iat| iat > retired + 30)
    {
        return Err(Refused("the access token was signed with a key after it was retired"));
    }
    if let Some(id) = &c.client_id
        && !snapshot.oauth_clients.contains(id)
    {
        return Err(Refused("the client this token was issued to has been revoked"));
    }
    let bad = || Refused("the access token's claims are malformed");
    Ok(TokenCaller {
        app_id: c.app_id.parse().map_err(|_| bad())?,
        consumer_org_id: c.org_id.parse().map_err(|_| bad())?,
        consumer_slug: Slug::parse(&c.org).map_err(|_| bad())?,
        scope: c.scope,
    })
}

/// Which of a version's external issuers a token claims to come from: `None` for a version
/// without any, and for tokens that claim Portico as their issuer (Portico's own tokens are
/// never verified with a provider's keys).
pub trait ExternalIssuers {
    fn external_issuer(&self, token: &str, portico: Option<&TokenTrust>) -> Option<&portico_core::policy::TokenIssuer>;
}

impl ExternalIssuers for portico_core::policy::Policies {
    fn external_issuer(&self, token: &str, portico: Option<&TokenTrust>) -> Option<&portico_core::policy::TokenIssuer> {
        if self.token_issuers.is_empty() {
            return None;
        }
        let iss = portico_core::jwt::unverified_issuer(token)?;
        if portico.is_some_and(|p| p.issuer == iss) {
            return None;
        }
        self.token_issuer(&iss)
    }
}

/// Why an external issuer's token was refused: 401, or 503 when the issuer's keys could not be
/// fetched.
#[derive(Debug, PartialEq, Eq)]
pub enum ExternalRefused {
    Invalid(String),
    KeysUnavailable,
}

/// Verifies a token of an external issuer ([`portico_core::jwt`]'s rules, with the keys from
/// the process's JWKS cache) and returns its client (the issuer's `client_claim`).
pub(crate) async fn verify_external(
    jwks: &crate::jwks::Jwks,
    client: &crate::UpstreamClient,
    issuer: &portico_core::policy::TokenIssuer,
    token: &str,
) -> Result<String, ExternalRefused> {
    use portico_core::jwt;
    let header = jwt::check_header(issuer, token).map_err(ExternalRefused::Invalid)?;
    let source = jwks.source(&issuer.jwks_url).ok_or(ExternalRefused::KeysUnavailable)?;
    let cooldown = std::time::Duration::from_secs(issuer.refresh_cooldown_secs.into());
    let max_age = std::time::Duration::from_secs(issuer.max_age_secs.into());
    let (keys, i) =
        source.key(client, header.kid.as_deref(), header.alg, cooldown, max_age).await.map_err(|m| match m {
            crate::jwks::Miss::Unknown => ExternalRefused::Invalid(
                "the access token was signed with a key its issuer does not publish".to_owned(),
            ),
            crate::jwks::Miss::Unreachable => ExternalRefused::KeysUnavailable,
        })?;
    jwt::verify(issuer, header.alg, &keys.key(i).key, token).map_err(ExternalRefused::Invalid)
}
