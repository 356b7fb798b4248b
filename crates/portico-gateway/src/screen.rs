//! The cheap checks made on every call before any lookup: credentials in the URL, ambiguous
//! framing, and (after the fact) our own body limit tripping.

/// Query parameters that carry credentials in other gateways; Portico refuses them.
const KEY_PARAMS: [&str; 5] = ["api_key", "apikey", "key", "access_token", "api-key"];

/// A credential parameter by name, or a Portico key under any name (`?q=ptc_…`).
pub(crate) fn key_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            KEY_PARAMS.iter().any(|k| name.eq_ignore_ascii_case(k))
        }) || contains_key_shape(q)
    })
}

/// `ptc_` followed by the key's 28 alphanumerics, not inside a longer word.
fn contains_key_shape(s: &str) -> bool {
    let b = s.as_bytes();
    s.match_indices(portico_core::api_key::PREFIX).any(|(i, _)| {
        let body = &b[i + 4..];
        let before_ok = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let run = body.iter().take_while(|c| c.is_ascii_alphanumeric()).count();
        before_ok && run == portico_core::api_key::KEY_LEN - 4
    })
}

// Named once: a `&str` name is parsed and hashed again on every lookup.
static CL_MARK: http::HeaderName = http::HeaderName::from_static(crate::framing::CL_MARK);
static TE_MARK: http::HeaderName = http::HeaderName::from_static(crate::framing::TE_MARK);

/// Framing that front and back ends may read differently (request smuggling) is refused.
pub(crate) fn smuggling(h: &http::HeaderMap) -> Option<&'static str> {
    let lengths = h.get_all(http::header::CONTENT_LENGTH);
    let mut values = lengths.iter();
    if let Some(first) = values.next()
        && values.any(|v| v != first)
    {
        return Some("the request has two different Content-Length values");
    }
    // hyper keeps one of the two; the connection's framing tracker marks the other.
    if (h.contains_key(http::header::TRANSFER_ENCODING) && h.contains_key(http::header::CONTENT_LENGTH))
        || h.contains_key(&CL_MARK)
        || h.contains_key(&TE_MARK)
    {
        return Some("the request has both Content-Length and Transfer-Encoding; send one");
    }
    None
}

/// An error of the client's own request body (it closed the connection before the declared
/// length, or broke the chunked framing): the client's failure, never the upstream's.
#[derive(Debug)]
pub struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Whether `e`, or an error it was caused by, is a `T`.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether an upstream error was our own body limit tripping.
pub(crate) fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<http_body_util::LengthLimitError>(e)
}

/// Whether an upstream error was the client's request body failing.
pub(crate) fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<ClientBodyError>(e)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_in_the_query_are_spotted() {
        assert!(super::key_in_query(Some("a=1&api_key=ptc_x")));
        assert!(super::key_in_query(Some("APIKEY=x")));
        assert!(!super::key_in_query(Some("keyword=x&monkey=1")));
        assert!(!super::key_in_query(None));
        let key = portico_core::api_key::ApiKey::generate();
        assert!(super::key_in_query(Some(&format!("q={}", key.expose_secret()))));
        assert!(super::key_in_query(Some(&format!("a=1&token={}&b=2", key.expose_secret()))));
        assert!(!super::key_in_query(Some("q=ptc_short&r=xptc_0123456789012345678901234567")));
    }

    #[test]
    fn ambiguous_framing_is_spotted() {
        let mut h = http::HeaderMap::new();
        assert_eq!(super::smuggling(&h), None);
        h.append(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("3"));
        h.append(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("3"));
        assert_eq!(super::smuggling(&h), None);
        h.append(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("4"));
        assert!(super::smuggling(&h).is_some());
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("3"));
        h.insert(http::header::TRANSFER_ENCODING, http::HeaderValue::from_static("chunked"));
        assert!(super::smuggling(&h).is_some());
    }
}

/// Whether a request says its body is JSON (`application/json`, `application/*+json`).
pub(crate) fn is_json(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        portico_core::validation::is_json(&ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
    })
}

/// Whether a JSON text nests arrays and objects deeper than `max`, found by scanning bytes
/// (strings and their escapes skipped) without parsing: cheap, and it cannot be blown up by
/// the nesting it is meant to catch.
pub(crate) fn json_too_deep(body: &[u8], max: u32) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod depth_tests {
    use super::json_too_deep;

    #[test]
    fn depth_counts_nesting_not_brackets_in_strings() {
        assert!(!json_too_deep(br#"{"a": [1, {"b": 2}]}"#, 3));
        assert!(json_too_deep(br#"{"a": [1, {"b": 2}]}"#, 2));
        assert!(!json_too_deep(br#"{"a": "[[[[[[\"[[[["}"#, 1));
        assert!(json_too_deep(&[b'['; 10_000], 64));
        assert!(!json_too_deep(b"", 1));
    }
}
