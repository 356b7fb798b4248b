//! Rewriting a consumer's request for the upstream and the upstream's response for the
//! consumer: hop-by-hop headers and credentials out, Portico's headers in.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use std::net::IpAddr;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, which also names
/// the obsolete `Proxy-Connection`).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_PORTICO_REQUEST_ID: HeaderName = HeaderName::from_static("x-portico-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
// Named once: a `&str` name is parsed and hashed again on every use.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_PORTICO_CONSUMER: HeaderName = HeaderName::from_static("x-portico-consumer");
static X_PORTICO_PLAN: HeaderName = HeaderName::from_static("x-portico-plan");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A header value made from a string built for it, without copying it again.
fn owned_value(s: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
}

/// Appends an address as `X-Forwarded-For` writes it (IPv4 without the formatting machinery).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names finds which of them are there: most requests carry none, and an
    // upstream's response usually carries `Connection` alone. Only those are removed (a
    // removal hashes its name).
    let mut present = 0u16;
    for k in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Headers named in `Connection` are hop-by-hop too; the usual `keep-alive` and `close`
    // name none that is there.
    if present & 1 != 0 {
        // Split as bytes: a value with an obs-text byte still names its other options.
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|n| !n.is_empty() && h.keys().any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(n)))
            .filter_map(|n| HeaderName::from_bytes(n).ok())
            .collect();
        for n in &named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
}

/// The protocol a client asks to switch to (`Connection: upgrade` + `Upgrade: websocket`).
pub fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    let wants = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants { h.get(header::UPGRADE).cloned() } else { None }
}

/// Puts back the two headers of an upgrade that hop-by-hop stripping removed.
pub fn keep_upgrade(h: &mut HeaderMap, protocol: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, protocol);
}

/// A random (v4) UUID from the thread-local CSPRNG: `Uuid::new_v4` asks the kernel each time,
/// which shows up in the gateway's profile.
pub fn fast_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// A time-ordered (v7) UUID from the thread-local CSPRNG: Portico's id of a call made at `at`.
/// Ordered ids land at the end of the store's index instead of at random places in it.
pub fn call_uuid(at: time::OffsetDateTime) -> uuid::Uuid {
    let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}

/// The `X-Request-Id` the client sent, if sane (1 to 128 of `[A-Za-z0-9._-]`).
pub fn client_request_id(h: &HeaderMap) -> Option<&HeaderValue> {
    h.get(&X_REQUEST_ID).filter(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
    })
}

/// A UUID as a header value, hyphenated (without the formatting machinery: once per call).
pub fn uuid_header(id: uuid::Uuid) -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)).unwrap_or(HeaderValue::from_static("-"))
}

/// A request id the client sent, if sane; otherwise a new one (for answers made before a call
/// has Portico's id).
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    client_request_id(h).cloned().unwrap_or_else(|| uuid_header(fast_uuid()))
}

/// Whether `s` is a valid W3C `traceparent` (lowercase hex, no all-zero ids, version not ff).
pub(crate) fn valid_traceparent(s: &str) -> bool {
    let mut p = s.split('-');
    let (Some(version), Some(trace), Some(span), Some(flags), None) =
        (p.next(), p.next(), p.next(), p.next(), p.next())
    else {
        return false;
    };
    let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let zeros = |x: &str| x.bytes().all(|b| b == b'0');
    hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && !zeros(trace)
        && hex(span, 16)
        && !zeros(span)
        && hex(flags, 2)
}

/// The W3C `traceparent` the client sent, if valid; otherwise a new trace (used when the
/// gateway exports no traces of its own).
pub fn traceparent(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&TRACEPARENT).filter(|v| v.to_str().is_ok_and(valid_traceparent)) {
        return v.clone();
    }
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    // `00-{trace:032x}-{span:016x}-01`, without the formatting machinery (once per call).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    for (i, b) in trace.to_be_bytes().into_iter().chain(span.to_be_bytes()).enumerate() {
        let at = if i < 16 { 3 + 2 * i } else { 36 + 2 * (i - 16) };
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 15)];
    }
    out[35] = b'-';
    out[52..].copy_from_slice(b"-01");
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("-"))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address
/// in `X-Forwarded-For` that is not itself a trusted proxy (read from the right, so a client
/// cannot forge its way in by prepending).
pub fn client_ip(peer: IpAddr, h: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    if trusted.is_empty() {
        return portico_core::policy::canonical(peer);
    }
    let hops: Vec<&str> = h.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    portico_core::policy::client_ip(peer, hops.into_iter(), trusted)
}

/// What the gateway adds for the upstream.
pub struct Forwarded<'a> {
    /// The connection's peer.
    pub client_ip: IpAddr,
    /// Whether the peer is a trusted proxy, whose `X-Forwarded-*` and `Forwarded` headers are
    /// kept and extended; from anyone else they are replaced.
    pub trusted_peer: bool,
    pub consumer: &'a str,
    pub plan: &'a str,
    pub request_id: HeaderValue,
    /// Portico's own id of the call (`X-Portico-Request-Id`): what usage and the request log
    /// are keyed by.
    pub call_id: HeaderValue,
    pub traceparent: HeaderValue,
    pub key_in_authorization: bool,
    /// The call came over TLS: `X-Forwarded-Proto: https` and `Forwarded: proto=https`.
    pub https: bool,
}

/// Rewrites the consumer's headers in place for the upstream.
pub fn upstream_headers(h: &mut HeaderMap, f: Forwarded<'_>) {
    // Room for what is added below, in one allocation instead of a rehash at each doubling.
    h.reserve(10);
    strip_hop_by_hop(h);
    let original_host = h.remove(header::HOST);
    h.remove(&X_API_KEY);
    // The key, or a Portico session token sent by mistake (a portal's try-it), never leaves.
    let portico_token = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].trim_start()))
        .is_some_and(|t| t.starts_with("pts_") || t.starts_with(portico_core::api_key::PREFIX));
    if f.key_in_authorization || portico_token {
        h.remove(header::AUTHORIZATION);
    }
    strip_session_cookie(h);
    if h.keys().any(|k| k.as_str().starts_with("x-portico-")) {
        let portico: Vec<HeaderName> = h.keys().filter(|k| k.as_str().starts_with("x-portico-")).cloned().collect();
        for k in portico {
            h.remove(k);
        }
    }
    if let Ok(v) = HeaderValue::from_str(f.consumer) {
        h.insert(X_PORTICO_CONSUMER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(f.plan) {
        h.insert(X_PORTICO_PLAN.clone(), v);
    }
    h.insert(X_REQUEST_ID.clone(), f.request_id);
    h.insert(X_PORTICO_REQUEST_ID.clone(), f.call_id);
    h.insert(TRACEPARENT.clone(), f.traceparent);
    // From a trusted proxy, the chain so far (every field line, in order), to be extended.
    let prev = |h: &HeaderMap, name: &HeaderName| -> Option<String> {
        if !f.trusted_peer {
            return None;
        }
        let all: Vec<&str> = h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!all.is_empty()).then(|| all.join(", "))
    };
    let host = original_host.as_ref().and_then(|v| v.to_str().ok()).filter(|v| !v.contains(['"', ';', ',']));
    let proto = if f.https { "https" } else { "http" };
    let mut forwarded = prev(h, &header::FORWARDED).map(|p| p + ", ").unwrap_or_default();
    forwarded.reserve(64);
    forwarded.push_str("for=");
    match f.client_ip {
        IpAddr::V4(_) => push_ip(&mut forwarded, f.client_ip),
        IpAddr::V6(_) => {
            forwarded.push_str("\"[");
            push_ip(&mut forwarded, f.client_ip);
            forwarded.push_str("]\"");
        }
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    if let Some(host) = host {
        forwarded.push_str(";host=\"");
        forwarded.push_str(host);
        forwarded.push('"');
    }
    let mut xff = prev(h, &X_FORWARDED_FOR).map(|p| p + ", ").unwrap_or_default();
    push_ip(&mut xff, f.client_ip);
    // `insert` replaces every value the client sent.
    match owned_value(xff) {
        Some(v) => h.insert(X_FORWARDED_FOR.clone(), v),
        None => h.remove(&X_FORWARDED_FOR),
    };
    match owned_value(forwarded) {
        Some(v) => h.insert(header::FORWARDED, v),
        None => h.remove(header::FORWARDED),
    };
    if !(f.trusted_peer && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    match original_host {
        Some(host) if !(f.trusted_peer && h.contains_key(&X_FORWARDED_HOST)) => {
            h.insert(X_FORWARDED_HOST.clone(), host);
        }
        Some(_) => {}
        None => {
            if !f.trusted_peer {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// The portal's session cookie is Portico's, not the upstream's: removed from `Cookie`.
fn strip_session_cookie(h: &mut HeaderMap) {
    if !h.contains_key(header::COOKIE) {
        return;
    }
    let ours = |c: &str| {
        let name = c.split('=').next().unwrap_or_default().trim();
        name == "portico_session" || name == "__Host-portico_session"
    };
    let all: Vec<String> =
        h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
    if !all.iter().flat_map(|v| v.split(';')).any(ours) {
        return;
    }
    let kept: Vec<&str> =
        all.iter().flat_map(|v| v.split(';')).map(str::trim).filter(|c| !c.is_empty() && !ours(c)).collect();
    h.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        && !kept.is_empty()
    {
        h.insert(header::COOKIE, v);
    }
}

/// A version's header rules (rename → remove → add) applied to a message's headers.
pub fn apply_rules(h: &mut HeaderMap, rules: &portico_core::policy::HeaderRules) {
    for (from, to) in &rules.rename {
        if let (Ok(from), Ok(to)) = (HeaderName::from_bytes(from.as_bytes()), HeaderName::from_bytes(to.as_bytes())) {
            let values: Vec<HeaderValue> = h.get_all(&from).iter().cloned().collect();
            h.remove(&from);
            for v in values {
                h.append(to.clone(), v);
            }
        }
    }
    for name in &rules.remove {
        h.remove(name.as_str());
    }
    for (name, value) in &rules.add {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            h.insert(n, v);
        }
    }
}

/// The provider's credential for the upstream, replacing whatever the consumer sent there.
pub fn inject_credential(h: &mut HeaderMap, auth: &portico_core::policy::UpstreamAuth) {
    use base64::Engine;
    use portico_core::policy::UpstreamAuth;
    let (name, value) = match auth {
        UpstreamAuth::Header { name, value } => (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)),
        UpstreamAuth::Basic { username, password } => {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            (Ok(header::AUTHORIZATION), HeaderValue::from_str(&format!("Basic {token}")))
        }
    };
    if let (Ok(n), Ok(mut v)) = (name, value) {
        v.set_sensitive(true);
        h.insert(n, v);
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers, structured
/// fields): e.g. `"minute";q=100;w=60` and `"minute";r=42;t=17`.
/// The called operation's own windows are named `{operationId}/{period}`.
pub fn rate_limit_headers(h: &mut HeaderMap, a: &crate::limit::Admitted, operation: Option<&str>) {
    // Built by hand (itoa, no `fmt`): this runs on every answer. One window is about 30 bytes.
    let (mut policy, mut state) = (String::with_capacity(64), String::with_capacity(64));
    let mut n = itoa::Buffer::new();
    let mut window = |policy: &mut String, state: &mut String, name: &str, q: u64, w: u64, r: u64, t: u64| {
        if !policy.is_empty() {
            policy.push_str(", ");
            state.push_str(", ");
        }
        for s in [&mut *policy, &mut *state] {
            s.push('"');
            s.push_str(name);
            s.push('"');
        }
        policy.push_str(";q=");
        policy.push_str(n.format(q));
        policy.push_str(";w=");
        policy.push_str(n.format(w));
        state.push_str(";r=");
        state.push_str(n.format(r));
        state.push_str(";t=");
        state.push_str(n.format(t));
    };
    for (limit, left, reset) in a.rates.iter().flatten() {
        let (name, seconds) = (limit.per().as_str(), limit.per().seconds());
        window(&mut policy, &mut state, name, limit.requests().into(), seconds, (*left).into(), *reset);
    }
    if a.op_rates.iter().any(Option::is_some) {
        let op = operation.unwrap_or_default().escape_default().to_string();
        for (limit, left, reset) in a.op_rates.iter().flatten() {
            let (per, seconds) = (limit.per().as_str(), limit.per().seconds());
            let name = format!("{op}/{per}");
            window(&mut policy, &mut state, &name, limit.requests().into(), seconds, (*left).into(), *reset);
        }
    }
    for (period, quota, left, reset) in a.quotas.iter().flatten() {
        window(&mut policy, &mut state, period.as_str(), *quota, period.seconds(), *left, *reset);
    }
    if policy.is_empty() {
        return;
    }
    if let (Some(p), Some(s)) = (owned_value(policy), owned_value(state)) {
        h.insert(RATELIMIT_POLICY.clone(), p);
        h.insert(RATELIMIT.clone(), s);
    }
}

/// Rewrites the upstream's response headers for the consumer.
pub fn downstream_headers(h: &mut HeaderMap, request_id: HeaderValue, call_id: HeaderValue) {
    // The two ids here and the two `RateLimit` headers after.
    h.reserve(4);
    strip_hop_by_hop(h);
    h.insert(X_REQUEST_ID.clone(), request_id);
    h.insert(X_PORTICO_REQUEST_ID.clone(), call_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_forged_headers_do_not_reach_the_upstream() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "ptc_secret".parse().unwrap());
        h.insert("authorization", "Bearer ptc_secret".parse().unwrap());
        h.insert("x-portico-consumer", "forged".parse().unwrap());
        h.insert("X-Portico-Anything", "forged".parse().unwrap());
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("host", "gw.example".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        h.insert("cookie", "theme=dark; __Host-portico_session=pts_abc; lang=en".parse().unwrap());
        upstream_headers(
            &mut h,
            Forwarded {
                client_ip: "127.0.0.1".parse().unwrap(),
                trusted_peer: false,
                consumer: "globex",
                plan: "free",
                request_id: HeaderValue::from_static("r1"),
                call_id: HeaderValue::from_static("c1"),
                traceparent: traceparent(&HeaderMap::new()),
                key_in_authorization: true,
                https: false,
            },
        );
        assert!(h.get("x-api-key").is_none() && h.get("authorization").is_none());
        assert_eq!(h["x-portico-consumer"], "globex");
        assert!(h.get("x-portico-anything").is_none());
        assert!(h.get("connection").is_none() && h.get("x-private").is_none());
        assert!(h.get("host").is_none());
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "an untrusted peer's chain is replaced");
        assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=\"gw.example\"");
        assert_eq!(h["accept"], "application/json");
        assert_eq!(h["cookie"], "theme=dark; lang=en", "the portal's session cookie is not forwarded");
    }

    #[test]
    fn an_upstreams_hop_by_hop_headers_do_not_reach_the_consumer() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("connection", "keep-alive, X-Upstream-Private".parse().unwrap());
        h.append("connection", "close".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-upstream-private", "1".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        // A value with a byte outside ASCII still names its other options.
        h.append("connection", HeaderValue::from_bytes(b"x-other-private, caf\xe9").unwrap());
        h.insert("x-other-private", "1".parse().unwrap());
        downstream_headers(&mut h, HeaderValue::from_static("r1"), HeaderValue::from_static("c1"));
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-portico-request-id", "x-request-id"]);

        // The usual answer: `Connection: keep-alive` alone goes, nothing else.
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive".parse().unwrap());
        h.insert("server", "nginx".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["server"]);
    }

    #[test]
    fn a_portico_session_token_in_authorization_is_not_forwarded() {
        let f = || Forwarded {
            client_ip: "127.0.0.1".parse().unwrap(),
            trusted_peer: false,
            consumer: "c",
            plan: "p",
            request_id: HeaderValue::from_static("r"),
            call_id: HeaderValue::from_static("c"),
            traceparent: traceparent(&HeaderMap::new()),
            key_in_authorization: false,
            https: false,
        };
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer pts_0123456789".parse().unwrap());
        h.insert("cookie", "portico_session=pts_x".parse().unwrap());
        upstream_headers(&mut h, f());
        assert!(h.get("authorization").is_none() && h.get("cookie").is_none());
        h.insert("authorization", "Bearer upstream-own-token".parse().unwrap());
        upstream_headers(&mut h, f());
        assert_eq!(h["authorization"], "Bearer upstream-own-token", "the consumer's own upstream credentials pass");
        assert_eq!(h["x-forwarded-proto"], "http");
        upstream_headers(&mut h, Forwarded { https: true, ..f() });
        assert_eq!(h["x-forwarded-proto"], "https", "a call that came over TLS");
        assert_eq!(h["forwarded"], "for=127.0.0.1;proto=https");
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended_and_read_from_the_right() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.7".parse().unwrap());
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, &h, &[]), peer, "no trusted proxies: the peer");
        let outsider: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(outsider, &h, &trusted), outsider, "an untrusted peer cannot claim an address");
        h.insert("forwarded", "for=203.0.113.9".parse().unwrap());
        upstream_headers(
            &mut h,
            Forwarded {
                client_ip: peer,
                trusted_peer: true,
                consumer: "c",
                plan: "p",
                request_id: HeaderValue::from_static("r"),
                call_id: HeaderValue::from_static("c"),
                traceparent: traceparent(&HeaderMap::new()),
                key_in_authorization: false,
                https: false,
            },
        );
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 203.0.113.9, 10.0.0.7, 10.0.0.2");
        assert_eq!(h["forwarded"], "for=203.0.113.9, for=10.0.0.2;proto=http");
    }

    #[test]
    fn header_rules_and_credentials() {
        let rules: portico_core::policy::HeaderRules = serde_json::from_value(serde_json::json!({
            "rename": {"x-old": "x-new"}, "remove": ["x-drop"], "add": {"x-added": "1"}
        }))
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-old", "v".parse().unwrap());
        h.insert("x-drop", "v".parse().unwrap());
        apply_rules(&mut h, &rules);
        assert_eq!((h["x-new"].to_str().unwrap(), h["x-added"].to_str().unwrap()), ("v", "1"));
        assert!(h.get("x-old").is_none() && h.get("x-drop").is_none());
        let basic = portico_core::policy::UpstreamAuth::Basic { username: "u".into(), password: "p".into() };
        h.insert("authorization", "Bearer consumer-token".parse().unwrap());
        inject_credential(&mut h, &basic);
        assert_eq!(h["authorization"], "Basic dTpw");
    }

    #[test]
    fn request_ids_and_traceparents() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-1.2_3".parse().unwrap());
        assert_eq!(request_id(&h), "abc-1.2_3");
        h.insert("x-request-id", "bad id!".parse().unwrap());
        assert_ne!(request_id(&h), "bad id!");
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", ok.parse().unwrap());
        assert_eq!(traceparent(&h), ok);
        h.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        let fresh = traceparent(&h);
        assert!(fresh.to_str().unwrap().starts_with("00-") && fresh.len() == 55);
    }
}
