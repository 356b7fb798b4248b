//! The request policies of an API version, declared by its provider beside the upstream policy:
//! who may call (IP allow / deny lists), what a call may carry (JSON depth), what an operation
//! costs against the plan's limits, how the request and response are rewritten (headers, path,
//! `Host`), what the gateway adds for the upstream (the provider's own credential, a signature
//! proving the call came through Portico) and which browser origins may call.
//!
//! Every field has a default that changes nothing, so a version without `policies` behaves as
//! before. The gateway reads these from the snapshot; nothing here touches a request.

use crate::{Error, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Header rewriting, applied in the order rename → remove → add.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// `old-name: new-name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Set (replacing any value the message had).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.rename.is_empty() && self.remove.is_empty() && self.add.is_empty()
    }
}

/// The provider's credential, added by the gateway to every call it forwards. Consumers never
/// see it: it is not in the portal, not in API answers (shown as `"<secret>"`), only in the
/// provider's `export`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum UpstreamAuth {
    /// A header such as `Authorization: Bearer …` or `X-Upstream-Key: …`.
    Header { name: String, value: String },
    /// HTTP Basic (RFC 7617).
    Basic { username: String, password: String },
}

/// Which `Host` the upstream sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHeader {
    /// The target's own host (from its URL).
    #[default]
    Upstream,
    /// The host the consumer called (the gateway's).
    Preserve,
}

/// A path prefix replaced before the call goes upstream: the first rule whose `from` is a
/// prefix of the path (at a segment boundary) applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRewrite {
    pub from: String,
    pub to: String,
}

/// Which browser origins may call the API (`*` for any). Without it, any origin may call
/// without credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    /// Request headers a browser may send besides the safelisted ones; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default = "default_max_age")]
    pub max_age_secs: u32,
}

fn default_max_age() -> u32 {
    600
}

/// The response cache of a version: `GET` and `HEAD` calls answered `200` are kept in the
/// gateway's memory and answered from there (`X-Cache: HIT`) until they expire. A cached
/// answer still takes the caller's key, subscription and rate limit, and is billed like a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// How long an answer is kept when the upstream gives no `max-age` / `s-maxage`, and the
    /// most it is kept when it does.
    #[serde(default = "default_cache_ttl")]
    pub ttl_secs: u32,
    /// An answer the upstream marks `Cache-Control: public` is shared by every consumer;
    /// otherwise (and always without this) each app has its own entries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Request headers whose values are part of the cache key (e.g. `accept`,
    /// `accept-language`). An answer whose `Vary` names another header is not cached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary_headers: Vec<String>,
    /// Larger answers are not cached.
    #[serde(default = "default_cache_body")]
    pub max_body_bytes: u64,
}

fn default_cache_ttl() -> u32 {
    60
}

fn default_cache_body() -> u64 {
    1024 * 1024
}

/// The most a cached answer may weigh.
pub const MAX_CACHE_BODY_BYTES: u64 = 16 * 1024 * 1024;

impl CachePolicy {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("policies", format!("cache: {m}")));
        if !(1..=86_400).contains(&self.ttl_secs) {
            return bad("ttl_secs must be between 1 and 86400".into());
        }
        if !(1..=MAX_CACHE_BODY_BYTES).contains(&self.max_body_bytes) {
            return bad(format!("max_body_bytes must be between 1 and {MAX_CACHE_BODY_BYTES}"));
        }
        if self.vary_headers.len() > 16 {
            return bad("at most 16 vary_headers".into());
        }
        for h in &self.vary_headers {
            if !header_name_ok(h) {
                return bad(format!("vary_headers: `{h}` is not a header name (letters, digits, `-`, `_`)"));
            }
            if h.eq_ignore_ascii_case("x-api-key") {
                return bad("vary_headers: `x-api-key` is never a cache key (entries are per app already)".into());
            }
        }
        Ok(())
    }
}

/// The policies of one API version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// Only these client networks may call (checked before the key, so a refused flood costs
    /// no lookup). Empty: everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<IpNet>,
    /// These client networks may not call; wins over `ip_allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_deny: Vec<IpNet>,
    /// A JSON request body nested deeper than this is refused with 400 (the body is read
    /// before it is forwarded when this is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_json_depth: Option<u32>,
    /// Check each call against its operation in the version's OpenAPI document before it is
    /// forwarded: path, query and header parameters, and JSON bodies against their schemas
    /// (400 naming each field), bodies the operation requires (400) and media types it
    /// declares (415). A JSON body is read whole before it is forwarded when this is on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validate_requests: bool,
    /// Operation name (`operationId`, or `METHOD /template`) → units it costs against the
    /// plan's rate limit and quota (1 when absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operation_weights: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub request_headers: HeaderRules,
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub response_headers: HeaderRules,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_rewrite: Vec<PathRewrite>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub host_header: HostHeader,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_auth: Option<UpstreamAuth>,
    /// When set, every call carries `Portico-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`
    /// over `"{t}.{METHOD}.{path?query}.{consumer}"` as sent upstream, so the upstream can
    /// tell a call came through Portico. At least 16 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Answers of `GET` / `HEAD` kept by the gateway; none without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
    /// Identity providers besides Portico whose access tokens the gateway accepts for this
    /// version (at most 4). A token is matched to an issuer by its `iss`, verified with a key
    /// from the issuer's JWKS, and its client claim names a Portico app: the app's owner
    /// registers that client (`/api/v1/apps/{app_id}/external-clients`), and the app still
    /// needs a subscription.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_issuers: Vec<TokenIssuer>,
}

/// An external issuer of access tokens (an OpenID provider, Auth0, Keycloak, Okta…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuer {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry for this API.
    pub audience: String,
    /// Where its signing keys are published (`https://…`; `http://` only on loopback). Fetched by the gateway through the outbound policy,
    /// kept in memory, fetched again (once, for every waiting call) on an unknown `kid` at most
    /// every `refresh_cooldown_secs`, and in the background when older than `max_age_secs`.
    pub jwks_url: String,
    /// Signature algorithms accepted: `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`,
    /// `ES256`, `ES384`, `EdDSA`. Never `HS*` (a shared secret is not a public key) or `none`.
    pub algorithms: Vec<String>,
    /// The claim that names the client (`client_id`; Keycloak and Auth0 use `azp`, Okta `cid`).
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    #[serde(default = "default_jwks_cooldown")]
    pub refresh_cooldown_secs: u32,
    #[serde(default = "default_jwks_max_age")]
    pub max_age_secs: u32,
}

fn default_client_claim() -> String {
    "client_id".into()
}

fn default_jwks_cooldown() -> u32 {
    30
}

fn default_jwks_max_age() -> u32 {
    600
}

/// The signature algorithms an external issuer may be trusted with (asymmetric only).
pub const TOKEN_ALGORITHMS: &[&str] =
    &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

impl TokenIssuer {
    fn validate(&self) -> Result<()> {
        let at = format!("token_issuers `{}`", self.issuer.escape_default());
        let bad = |m: String| Err(Error::invalid("policies", format!("{at}: {m}")));
        let printable = |s: &str| !s.is_empty() && s.len() <= 512 && header_value_ok(s) && !s.contains(' ');
        if !printable(&self.issuer) {
            return bad("issuer must be the issuer's `iss` (1-512 printable characters, no spaces)".into());
        }
        if !printable(&self.audience) {
            return bad("audience must be 1-512 printable characters, no spaces".into());
        }
        let u = &self.jwks_url;
        let authority = u
            .strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"))
            .map(|r| r.split(['/', '?']).next().unwrap_or_default());
        let url_ok = authority.is_some_and(|a| !a.is_empty() && !a.contains('@'))
            && u.len() <= 2048
            && header_value_ok(u)
            && !u.contains([' ', '#']);
        if !url_ok {
            return bad(format!("jwks_url `{}` must be an http(s) URL", self.jwks_url.escape_default()));
        }
        if u.starts_with("http://") && !crate::outbound::plain_http_allowed(u) {
            return bad(format!(
                "jwks_url `{}` must be https:// (plain http only on loopback): keys fetched in the clear can be swapped",
                u.escape_default()
            ));
        }
        if self.algorithms.is_empty() {
            return bad(format!("algorithms: name at least one of {}", TOKEN_ALGORITHMS.join(", ")));
        }
        if let Some(a) = self.algorithms.iter().find(|a| !TOKEN_ALGORITHMS.contains(&a.as_str())) {
            return bad(format!(
                "algorithm `{}` is not accepted (only {}; HS* and none never are)",
                a.escape_default(),
                TOKEN_ALGORITHMS.join(", ")
            ));
        }
        if !header_name_ok(&self.client_claim) {
            return bad("client_claim must be a claim name (letters, digits, `-`, `_`)".into());
        }
        if !(1..=86_400).contains(&self.refresh_cooldown_secs) {
            return bad("refresh_cooldown_secs must be between 1 and 86400".into());
        }
        if !(10..=604_800).contains(&self.max_age_secs) {
            return bad("max_age_secs must be between 10 and 604800".into());
        }
        Ok(())
    }
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// What API answers show in place of a secret.
pub const REDACTED: &str = "<secret>";

fn header_name_ok(n: &str) -> bool {
    !n.is_empty() && n.len() <= 128 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

fn header_value_ok(v: &str) -> bool {
    v.len() <= 4096 && v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Headers a provider's rules may not touch: framing, hop-by-hop, and Portico's own.
fn protected(n: &str) -> bool {
    let n = n.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection" | "upgrade" | "te" | "trailer" | "keep-alive"
    ) || n.starts_with("x-portico-")
        || n == "portico-signature"
}

fn path_ok(p: &str) -> bool {
    p.starts_with('/') && !p.contains(['?', '#', ' ', '\\']) && !p.split('/').any(|s| s == "..") && p.len() <= 512
}

impl HeaderRules {
    fn validate(&self, at: &str) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("policies", format!("{at}: {m}")));
        let names = self.rename.iter().flat_map(|(a, b)| [a, b]).chain(&self.remove).chain(self.add.keys());
        for n in names {
            if !header_name_ok(n) {
                return bad(format!("`{n}` is not a header name (letters, digits, `-`, `_`)"));
            }
            if protected(n) {
                return bad(format!("`{n}` is managed by the gateway and cannot be changed"));
            }
        }
        if let Some((n, _)) = self.add.iter().find(|(_, v)| !header_value_ok(v)) {
            return bad(format!("the value of `{n}` must be printable ASCII, at most 4096 bytes"));
        }
        if self.rename.len() + self.remove.len() + self.add.len() > 64 {
            return bad("at most 64 header rules".into());
        }
        Ok(())
    }
}

impl Policies {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid("policies", m.to_owned()));
        if self.ip_allow.len() + self.ip_deny.len() > 1024 {
            return bad("at most 1024 networks in ip_allow and ip_deny together");
        }
        if let Some(d) = self.max_json_depth
            && !(1..=1000).contains(&d)
        {
            return bad("max_json_depth must be between 1 and 1000");
        }
        if self.operation_weights.values().any(|w| !(1..=1_000_000).contains(w)) {
            return bad("operation_weights: each weight must be between 1 and 1000000");
        }
        self.request_headers.validate("request_headers")?;
        self.response_headers.validate("response_headers")?;
        if self.path_rewrite.len() > 32 {
            return bad("at most 32 path_rewrite rules");
        }
        if let Some(r) = self.path_rewrite.iter().find(|r| !path_ok(&r.from) || !path_ok(&r.to)) {
            return Err(Error::invalid(
                "policies",
                format!(
                    "path_rewrite `{}` → `{}`: both must be paths starting with `/`, without `..`, `?` or `#`",
                    r.from, r.to
                ),
            ));
        }
        match &self.upstream_auth {
            Some(UpstreamAuth::Header { name, value }) => {
                if !header_name_ok(name) || protected(name) {
                    return bad("upstream_auth.name must be a header name the gateway does not manage");
                }
                if value.is_empty() || !header_value_ok(value) || value == REDACTED {
                    return bad("upstream_auth.value must be the credential itself (printable ASCII)");
                }
            }
            Some(UpstreamAuth::Basic { username, password }) => {
                if username.contains(':') || !header_value_ok(username) || !header_value_ok(password) {
                    return bad("upstream_auth: the username may not contain `:`; both printable ASCII");
                }
                if password == REDACTED {
                    return bad("upstream_auth.password must be the credential itself");
                }
            }
            None => {}
        }
        if let Some(s) = &self.signing_secret
            && (s.len() < 16 || s.len() > 256 || s == REDACTED)
        {
            return bad("signing_secret must be 16 to 256 characters");
        }
        if let Some(c) = &self.cors {
            if c.allow_origins.is_empty() || c.allow_origins.len() > 100 {
                return bad("cors.allow_origins: 1 to 100 origins, or [\"*\"]");
            }
            for o in &c.allow_origins {
                let ok = o == "*"
                    || ((o.starts_with("https://") || o.starts_with("http://"))
                        && !o.ends_with('/')
                        && header_value_ok(o)
                        && !o.contains(['*', ',', ' ']));
                if !ok {
                    return Err(Error::invalid(
                        "policies",
                        format!("cors.allow_origins: `{o}` must be `*` or an origin such as https://app.example.com"),
                    ));
                }
            }
            if c.allow_headers.iter().any(|h| !header_name_ok(h)) {
                return bad("cors.allow_headers: header names only");
            }
            if c.max_age_secs > 86_400 {
                return bad("cors.max_age_secs must be at most 86400");
            }
        }
        if let Some(c) = &self.cache {
            c.validate()?;
        }
        if self.token_issuers.len() > 4 {
            return bad("at most 4 token_issuers");
        }
        for (i, t) in self.token_issuers.iter().enumerate() {
            t.validate()?;
            if self.token_issuers[..i].iter().any(|o| o.issuer == t.issuer) {
                return bad("token_issuers: each issuer once");
            }
        }
        Ok(())
    }

    /// The external issuer whose tokens carry this `iss`.
    pub fn token_issuer(&self, iss: &str) -> Option<&TokenIssuer> {
        self.token_issuers.iter().find(|t| t.issuer == iss)
    }

    pub fn is_default(&self) -> bool {
        *self == Policies::default()
    }

    /// A copy safe to show: the credential and the signing secret replaced by [`REDACTED`].
    pub fn redacted(&self) -> Policies {
        let mut p = self.clone();
        match &mut p.upstream_auth {
            Some(UpstreamAuth::Header { value, .. }) => *value = REDACTED.into(),
            Some(UpstreamAuth::Basic { password, .. }) => *password = REDACTED.into(),
            None => {}
        }
        if let Some(s) = &mut p.signing_secret {
            *s = REDACTED.into();
        }
        p
    }

    /// Checks everything but secrets, which may be [`REDACTED`] (an exported document applied
    /// back keeps the stored ones).
    pub fn validate_shape(&self) -> Result<()> {
        let mut p = self.clone();
        let stand_in = "x".repeat(16);
        match &mut p.upstream_auth {
            Some(UpstreamAuth::Header { value, .. }) if value == REDACTED => *value = stand_in.clone(),
            Some(UpstreamAuth::Basic { password, .. }) if password == REDACTED => *password = stand_in.clone(),
            _ => {}
        }
        if p.signing_secret.as_deref() == Some(REDACTED) {
            p.signing_secret = Some(stand_in);
        }
        p.validate()
    }

    /// This, with each secret given as [`REDACTED`] taken from `stored` where it has one of the
    /// same kind (what remains redacted fails [`Policies::validate`]).
    pub fn keeping_secrets_of(&self, stored: &Policies) -> Policies {
        let mut p = self.clone();
        match (&mut p.upstream_auth, &stored.upstream_auth) {
            (Some(UpstreamAuth::Header { value, .. }), Some(UpstreamAuth::Header { value: old, .. }))
                if value == REDACTED =>
            {
                value.clone_from(old)
            }
            (Some(UpstreamAuth::Basic { password, .. }), Some(UpstreamAuth::Basic { password: old, .. }))
                if password == REDACTED =>
            {
                password.clone_from(old)
            }
            _ => {}
        }
        if p.signing_secret.as_deref() == Some(REDACTED) && stored.signing_secret.is_some() {
            p.signing_secret.clone_from(&stored.signing_secret);
        }
        p
    }

    /// This with every secret (the upstream credential, the signing secret) passed through `f`:
    /// how secrets are sealed before they are stored and opened after.
    pub fn map_secrets(&self, f: impl Fn(&str) -> Result<String>) -> Result<Policies> {
        let mut p = self.clone();
        match &mut p.upstream_auth {
            Some(UpstreamAuth::Header { value, .. }) => *value = f(value)?,
            Some(UpstreamAuth::Basic { password, .. }) => *password = f(password)?,
            None => {}
        }
        if let Some(s) = &mut p.signing_secret {
            *s = f(s)?;
        }
        Ok(p)
    }

    /// Whether a client address may call: not denied, and allowed when there is an allow list.
    pub fn ip_permitted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.ip_deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.ip_allow.is_empty() || self.ip_allow.iter().any(|n| n.contains(&ip))
    }

    /// The units a call of `operation` costs.
    pub fn weight(&self, operation: Option<&str>) -> u32 {
        if self.operation_weights.is_empty() {
            return 1;
        }
        operation.and_then(|o| self.operation_weights.get(o)).copied().unwrap_or(1)
    }

    /// The path sent upstream for `rest` (the part after `/v{major}`).
    pub fn rewrite_path<'a>(&self, rest: &'a str) -> std::borrow::Cow<'a, str> {
        for r in &self.path_rewrite {
            if let Some(tail) = rest.strip_prefix(r.from.trim_end_matches('/'))
                && (tail.is_empty() || tail.starts_with('/'))
            {
                return format!("{}{tail}", r.to.trim_end_matches('/')).into();
            }
        }
        rest.into()
    }
}

/// The `Portico-Signature` value of a call: `t={unix_secs},v1={hex HMAC-SHA256(secret,
/// "{t}.{METHOD}.{path?query}.{consumer}")}`, the path as the upstream receives it.
pub fn signature(secret: &str, unix_secs: i64, method: &str, path_and_query: &str, consumer: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    for part in [unix_secs.to_string().as_str(), ".", method, ".", path_and_query, ".", consumer] {
        mac.update(part.as_bytes());
    }
    format!("t={unix_secs},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What an upstream does with `Portico-Signature`: recompute it in constant time and refuse a
/// timestamp more than `tolerance_secs` from `now_secs` (replays).
pub fn verify_signature(
    secret: &str,
    header: &str,
    method: &str,
    path_and_query: &str,
    consumer: &str,
    now_secs: i64,
    tolerance_secs: i64,
) -> bool {
    use subtle::ConstantTimeEq;
    let Some(t) = header.split(',').find_map(|p| p.strip_prefix("t=")).and_then(|t| t.parse::<i64>().ok()) else {
        return false;
    };
    if (now_secs - t).abs() > tolerance_secs {
        return false;
    }
    let expected = signature(secret, t, method, path_and_query, consumer);
    expected.as_bytes().ct_eq(header.as_bytes()).into()
}

/// The client's address: the connection's `peer`, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` (all its values, in order) that is not itself a
/// trusted proxy, read from the right so that a client cannot forge its way in by prepending.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.rev().flat_map(|v| v.rsplit(',')) {
        match hop.trim().parse::<IpAddr>().map(canonical) {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// `::ffff:10.0.0.1` is `10.0.0.1`: a v4-mapped address must not slip past a v4 rule.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: serde_json::Value) -> Policies {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn ip_lists_deny_wins_and_mapped_addresses_count() {
        let pol = p(serde_json::json!({"ip_allow": ["10.0.0.0/8", "2001:db8::/32"], "ip_deny": ["10.9.0.0/16"]}));
        pol.validate().unwrap();
        assert!(pol.ip_permitted("10.1.2.3".parse().unwrap()));
        assert!(pol.ip_permitted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!pol.ip_permitted("10.9.0.1".parse().unwrap()));
        assert!(!pol.ip_permitted("::ffff:10.9.0.1".parse().unwrap()));
        assert!(!pol.ip_permitted("192.168.1.1".parse().unwrap()));
        assert!(pol.ip_permitted("2001:db8::1".parse().unwrap()));
        assert!(Policies::default().ip_permitted("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn path_rewrites_at_segment_boundaries() {
        let pol =
            p(serde_json::json!({"path_rewrite": [{"from": "/users", "to": "/people"}, {"from": "/", "to": "/api/"}]}));
        pol.validate().unwrap();
        assert_eq!(pol.rewrite_path("/users/7"), "/people/7");
        assert_eq!(pol.rewrite_path("/users"), "/people");
        assert_eq!(pol.rewrite_path("/usersx"), "/api/usersx");
        assert_eq!(pol.rewrite_path("/other"), "/api/other");
        assert_eq!(Policies::default().rewrite_path("/x"), "/x");
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        for (json, says) in [
            (serde_json::json!({"request_headers": {"add": {"Host": "x"}}}), "managed by the gateway"),
            (serde_json::json!({"request_headers": {"add": {"bad name": "x"}}}), "not a header name"),
            (serde_json::json!({"response_headers": {"add": {"x-a": "line\nbreak"}}}), "printable ASCII"),
            (serde_json::json!({"max_json_depth": 0}), "max_json_depth"),
            (serde_json::json!({"operation_weights": {"search": 0}}), "weight"),
            (serde_json::json!({"signing_secret": "short"}), "16 to 256"),
            (serde_json::json!({"path_rewrite": [{"from": "/a", "to": "/../etc"}]}), "without `..`"),
            (serde_json::json!({"cors": {"allow_origins": ["https://a.example/"]}}), "origin such as"),
            (serde_json::json!({"cache": {"ttl_secs": 0}}), "cache: ttl_secs"),
            (serde_json::json!({"cache": {"ttl_secs": 86_401}}), "cache: ttl_secs"),
            (serde_json::json!({"cache": {"max_body_bytes": 0}}), "cache: max_body_bytes"),
            (serde_json::json!({"cache": {"max_body_bytes": 17 * 1024 * 1024}}), "cache: max_body_bytes"),
            (serde_json::json!({"cache": {"vary_headers": ["accept lang"]}}), "not a header name"),
            (
                serde_json::json!({"token_issuers": [{"issuer": "https://idp.example", "audience": "a",
                    "jwks_url": "https://idp.example/jwks", "algorithms": ["HS256"]}]}),
                "HS* and none never are",
            ),
            (
                serde_json::json!({"token_issuers": [{"issuer": "https://idp.example", "audience": "a",
                    "jwks_url": "https://idp.example/jwks", "algorithms": []}]}),
                "name at least one",
            ),
            (
                serde_json::json!({"token_issuers": [{"issuer": "https://idp.example", "audience": "a",
                    "jwks_url": "ftp://idp.example/jwks", "algorithms": ["RS256"]}]}),
                "must be an http(s) URL",
            ),
            (
                serde_json::json!({"token_issuers": [{"issuer": "https://idp.example", "audience": "a",
                    "jwks_url": "http://idp.example/jwks", "algorithms": ["RS256"]}]}),
                "must be https://",
            ),
            (
                serde_json::json!({"token_issuers": [{"issuer": "", "audience": "a",
                    "jwks_url": "https://idp.example/jwks", "algorithms": ["RS256"]}]}),
                "issuer must be",
            ),
            (
                serde_json::json!({"token_issuers": [
                    {"issuer": "i", "audience": "a", "jwks_url": "https://i/jwks", "algorithms": ["RS256"]},
                    {"issuer": "i", "audience": "b", "jwks_url": "https://i/jwks", "algorithms": ["ES256"]}]}),
                "each issuer once",
            ),
            (serde_json::json!({"cache": {"vary_headers": ["X-Api-Key"]}}), "never a cache key"),
            (
                serde_json::json!({"upstream_auth": {"type": "header", "name": "X-Portico-Key", "value": "v"}}),
                "does not manage",
            ),
            (
                serde_json::json!({"upstream_auth": {"type": "header", "name": "X-Key", "value": "<secret>"}}),
                "credential itself",
            ),
        ] {
            let e = p(json.clone()).validate().unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
        assert!(serde_json::from_value::<Policies>(serde_json::json!({"ip_allow": ["10.0.0.0/33"]})).is_err());
        assert!(serde_json::from_value::<Policies>(serde_json::json!({"unknown": 1})).is_err());
    }

    #[test]
    fn secrets_are_redacted_for_display() {
        let pol = p(serde_json::json!({
            "upstream_auth": {"type": "basic", "username": "u", "password": "hunter2hunter2"},
            "signing_secret": "0123456789abcdef0123"
        }));
        pol.validate().unwrap();
        let shown = serde_json::to_string(&pol.redacted()).unwrap();
        assert!(!shown.contains("hunter2") && !shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("\"username\":\"u\""));
        assert!(pol.redacted().validate().is_err(), "a redacted copy cannot be stored as it is");
        pol.redacted().validate_shape().unwrap();
        assert_eq!(pol.redacted().keeping_secrets_of(&pol), pol, "but it keeps the stored secrets");
        assert!(pol.redacted().keeping_secrets_of(&Policies::default()).validate().is_err());
    }

    #[test]
    fn signatures_verify_and_expire() {
        let s = signature("0123456789abcdef", 1_700_000_000, "GET", "/base/x?y=1", "globex");
        assert!(s.starts_with("t=1700000000,v1=") && s.len() == 16 + 64, "{s}");
        let ok =
            |h: &str, path: &str, now: i64| verify_signature("0123456789abcdef", h, "GET", path, "globex", now, 300);
        assert!(ok(&s, "/base/x?y=1", 1_700_000_100));
        assert!(!ok(&s, "/base/x?y=2", 1_700_000_100), "another path");
        assert!(!ok(&s, "/base/x?y=1", 1_700_001_000), "too old");
        assert!(!ok("t=1700000000,v1=00", "/base/x?y=1", 1_700_000_000));
        assert!(!ok("garbage", "/", 0));
    }

    #[test]
    fn cache_defaults_and_round_trip() {
        let pol = p(serde_json::json!({"cache": {}}));
        pol.validate().unwrap();
        let c = pol.cache.clone().unwrap();
        assert_eq!((c.ttl_secs, c.shared, c.max_body_bytes), (60, false, 1024 * 1024));
        assert!(c.vary_headers.is_empty());
        let pol = p(serde_json::json!({"cache": {"ttl_secs": 5, "shared": true, "vary_headers": ["Accept"]}}));
        pol.validate().unwrap();
        let back: Policies = serde_json::from_str(&serde_json::to_string(&pol).unwrap()).unwrap();
        assert_eq!(back, pol);
        assert!(serde_json::from_value::<Policies>(serde_json::json!({"cache": {"ttl": 5}})).is_err());
    }

    #[test]
    fn weights_default_to_one() {
        let pol = p(serde_json::json!({"operation_weights": {"search": 5}}));
        assert_eq!(pol.weight(Some("search")), 5);
        assert_eq!(pol.weight(Some("get")), 1);
        assert_eq!(pol.weight(None), 1);
        assert!(Policies::default().is_default());
    }
}
