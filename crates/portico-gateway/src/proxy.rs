//! Rewriting a consumer's request for the upstream and the upstream's response for the
//! consumer: hop-by-hop headers and credentials out, Portico's headers in.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use std::net::IpAddr;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
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

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
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

/// A time-ordered (v7) UUID from the thread-local CSPRNG: Portico's id of a call. Ordered ids
/// land at the end of the store's index instead of at random places in it.
pub fn call_uuid() -> uuid::Uuid {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}

/// A request id the client sent, if sane; otherwise a new one.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    h.get(&X_REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
        })
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_str(&fast_uuid().to_string()).unwrap_or(HeaderValue::from_static("-")))
}

/// The W3C `traceparent` the client sent, if valid; otherwise a new trace.
pub fn traceparent(h: &HeaderMap) -> HeaderValue {
    let valid = |s: &str| {
        let p: Vec<&str> = s.split('-').collect();
        let hex =
            |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        p.len() == 4
            && hex(p[0], 2)
            && p[0] != "ff"
            && hex(p[1], 32)
            && p[1] != "0".repeat(32)
            && hex(p[2], 16)
            && p[2] != "0".repeat(16)
            && hex(p[3], 2)
    };
    if let Some(v) = h.get(&TRACEPARENT).and_then(|v| v.to_str().ok()).filter(|s| valid(s)) {
        return HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("-"));
    }
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    HeaderValue::from_str(&format!("00-{trace:032x}-{span:016x}-01")).unwrap_or(HeaderValue::from_static("-"))
}

/// What the gateway adds for the upstream.
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    pub consumer: &'a str,
    pub plan: &'a str,
    pub request_id: HeaderValue,
    /// Portico's own id of the call (`X-Portico-Request-Id`): what usage and the request log
    /// are keyed by.
    pub call_id: HeaderValue,
    pub traceparent: HeaderValue,
    pub key_in_authorization: bool,
}

/// Rewrites the consumer's headers in place for the upstream.
pub fn upstream_headers(h: &mut HeaderMap, f: Forwarded<'_>) {
    strip_hop_by_hop(h);
    let original_host = h.remove(header::HOST);
    h.remove("x-api-key");
    if f.key_in_authorization {
        h.remove(header::AUTHORIZATION);
    }
    let portico: Vec<HeaderName> = h.keys().filter(|k| k.as_str().starts_with("x-portico-")).cloned().collect();
    for k in portico {
        h.remove(k);
    }
    if let Ok(v) = HeaderValue::from_str(f.consumer) {
        h.insert("x-portico-consumer", v);
    }
    if let Ok(v) = HeaderValue::from_str(f.plan) {
        h.insert("x-portico-plan", v);
    }
    h.insert(X_REQUEST_ID.clone(), f.request_id);
    h.insert(X_PORTICO_REQUEST_ID.clone(), f.call_id);
    h.insert(TRACEPARENT.clone(), f.traceparent);
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", f.client_ip),
        None => f.client_ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        h.insert("x-forwarded-host", host);
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers, structured
/// fields): e.g. `"minute";q=100;w=60` and `"minute";r=42;t=17`.
pub fn rate_limit_headers(h: &mut HeaderMap, a: &crate::limit::Admitted) {
    let mut policy = Vec::with_capacity(2);
    let mut state = Vec::with_capacity(2);
    if let Some((limit, left, reset)) = a.rate {
        let name = limit.per().as_str();
        policy.push(format!("\"{name}\";q={};w={}", limit.requests(), limit.per().seconds()));
        state.push(format!("\"{name}\";r={left};t={reset}"));
    }
    if let Some((quota, left, reset)) = a.quota {
        policy.push(format!("\"month\";q={quota};w=2592000"));
        state.push(format!("\"month\";r={left};t={reset}"));
    }
    if policy.is_empty() {
        return;
    }
    if let (Ok(p), Ok(s)) = (HeaderValue::from_str(&policy.join(", ")), HeaderValue::from_str(&state.join(", "))) {
        h.insert("ratelimit-policy", p);
        h.insert("ratelimit", s);
    }
}

/// Rewrites the upstream's response headers for the consumer.
pub fn downstream_headers(h: &mut HeaderMap, request_id: HeaderValue, call_id: HeaderValue) {
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
        upstream_headers(
            &mut h,
            Forwarded {
                client_ip: "127.0.0.1".parse().unwrap(),
                consumer: "globex",
                plan: "free",
                request_id: HeaderValue::from_static("r1"),
                call_id: HeaderValue::from_static("c1"),
                traceparent: traceparent(&HeaderMap::new()),
                key_in_authorization: true,
            },
        );
        assert!(h.get("x-api-key").is_none() && h.get("authorization").is_none());
        assert_eq!(h["x-portico-consumer"], "globex");
        assert!(h.get("x-portico-anything").is_none());
        assert!(h.get("connection").is_none() && h.get("x-private").is_none());
        assert!(h.get("host").is_none());
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["accept"], "application/json");
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
