//! `/{api-slug}/v{major}/{rest}` → slug, major and the rest of the path (with its leading `/`,
//! possibly empty); on a host name an API claims, `/v{major}/{rest}`. Dot segments and encoded NUL or slashes are refused, so no call reaches an
//! upstream path outside the API's prefix.

use portico_core::values::Slug;
use std::collections::HashMap;

/// A parsed gateway path.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub slug: &'a str,
    pub major: u32,
    /// What follows `/v{major}`: empty or starting with `/`.
    pub rest: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not of the form `/{slug}/v{major}/…`.
    NoMatch,
    /// A path trick: dot segments, encoded NUL, slash or backslash, or a broken `%` escape.
    Unsafe,
}

/// Every `%` starts a valid escape of two hex digits.
fn valid_escapes(path: &str) -> bool {
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) || !b.get(i + 2).is_some_and(u8::is_ascii_hexdigit) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

pub fn parse(path: &str) -> Result<Target<'_>, RouteError> {
    if !valid_escapes(path) {
        return Err(RouteError::Unsafe);
    }
    let p = path.strip_prefix('/').ok_or(RouteError::NoMatch)?;
    let (slug, after) = p.split_once('/').ok_or(RouteError::NoMatch)?;
    if slug.is_empty() {
        return Err(RouteError::NoMatch);
    }
    let (major, rest) = version_and_rest(after)?;
    Ok(Target { slug, major, rest })
}

/// `v{major}` and what follows it, checked for path tricks.
fn version_and_rest(after: &str) -> Result<(u32, &str), RouteError> {
    let (ver, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    let digits = ver.strip_prefix('v').ok_or(RouteError::NoMatch)?;
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RouteError::NoMatch);
    }
    let major = digits.parse().map_err(|_| RouteError::NoMatch)?;
    if unsafe_rest(rest) {
        return Err(RouteError::Unsafe);
    }
    Ok((major, rest))
}

/// The name part of a `Host` value or an authority: no port, no trailing dot.
pub fn host_name(host: &str) -> &str {
    let name = if host.starts_with('[') { host } else { host.rsplit_once(':').map_or(host, |(h, _)| h) };
    name.strip_suffix('.').unwrap_or(name)
}

/// Routes a call: on a host that names an API (`hosts`: lowercase name → API slug), the path is
/// `/v{major}/{rest}`; anywhere else it is `/{slug}/v{major}/{rest}`.
pub fn resolve<'a>(
    hosts: &'a HashMap<String, Slug>,
    host: Option<&str>,
    path: &'a str,
) -> Result<Target<'a>, RouteError> {
    if !hosts.is_empty()
        && let Some(host) = host
    {
        let name = host_name(host);
        let api = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            hosts.get(&name.to_ascii_lowercase())
        } else {
            hosts.get(name)
        };
        if let Some(slug) = api {
            if !valid_escapes(path) {
                return Err(RouteError::Unsafe);
            }
            let after = path.strip_prefix('/').ok_or(RouteError::NoMatch)?;
            let (major, rest) = version_and_rest(after)?;
            return Ok(Target { slug: slug.as_str(), major, rest });
        }
    }
    parse(path)
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Whether a segment of `rest` is `.` or `..` (a dot written as `.` or `%2e`), or `rest` holds
/// a backslash or an encoded NUL, slash or backslash. One pass, no allocation; the escapes are
/// known to be valid (`valid_escapes`).
fn unsafe_rest(rest: &str) -> bool {
    let b = rest.as_bytes();
    let (mut dots, mut only_dots) = (0u32, true);
    let mut i = 0;
    loop {
        if i == b.len() || b[i] == b'/' {
            if only_dots && (dots == 1 || dots == 2) {
                return true;
            }
            if i == b.len() {
                return false;
            }
            (dots, only_dots) = (0, true);
            i += 1;
            continue;
        }
        let (byte, escaped) = match b[i] {
            b'%' if i + 2 < b.len() => (hex(b[i + 1]) << 4 | hex(b[i + 2]), true),
            other => (other, false),
        };
        if byte == b'\\' || (escaped && (byte == 0 || byte == b'/')) {
            return true;
        }
        if byte == b'.' {
            dots += 1;
        } else {
            only_dots = false;
        }
        i += if escaped { 3 } else { 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_host_that_names_an_api_routes_without_the_slug() {
        let hosts = HashMap::from([("weather.example.com".to_owned(), Slug::parse("weather").unwrap())]);
        for host in ["weather.example.com", "Weather.Example.com:8443", "weather.example.com."] {
            let t = resolve(&hosts, Some(host), "/v2/forecast?x").unwrap();
            assert_eq!((t.slug, t.major, t.rest), ("weather", 2, "/forecast?x"), "{host}");
        }
        // On that host the slug form is not a route (the first segment must be the version)…
        assert_eq!(resolve(&hosts, Some("weather.example.com"), "/weather/v1/x"), Err(RouteError::NoMatch));
        // …path tricks are refused there too, and other hosts route by slug.
        assert_eq!(resolve(&hosts, Some("weather.example.com"), "/v1/a/../b"), Err(RouteError::Unsafe));
        assert_eq!(resolve(&hosts, Some("weather.example.com"), "/v1/%2e%2e/b"), Err(RouteError::Unsafe));
        let t = resolve(&hosts, Some("gateway.example.com"), "/maps/v1/tiles").unwrap();
        assert_eq!((t.slug, t.major), ("maps", 1));
        assert_eq!(resolve(&hosts, None, "/v1/forecast"), Err(RouteError::NoMatch));
        assert_eq!(host_name("a.example.com:80"), "a.example.com");
    }

    /// The check as it was first written (two strings per segment), kept as the reference.
    fn unsafe_rest_reference(rest: &str) -> bool {
        rest.split('/').any(|seg| {
            let lower = seg.to_ascii_lowercase();
            let decoded_dots = lower.replace("%2e", ".");
            decoded_dots == "."
                || decoded_dots == ".."
                || lower.contains("%00")
                || lower.contains("%2f")
                || lower.contains("%5c")
                || seg.contains('\\')
        })
    }

    proptest! {
        #[test]
        fn the_one_pass_check_agrees_with_the_reference(rest in "(/([a.\\\\]|%2[eEfF]|%00|%5[cC]|%41){0,4}){0,5}") {
            prop_assume!(valid_escapes(&rest));
            prop_assert_eq!(unsafe_rest(&rest), unsafe_rest_reference(&rest), "{}", rest);
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            parse("/weather/v1/forecast/daily"),
            Ok(Target { slug: "weather", major: 1, rest: "/forecast/daily" })
        );
        assert_eq!(parse("/weather/v2"), Ok(Target { slug: "weather", major: 2, rest: "" }));
        assert_eq!(parse("/weather/v2/"), Ok(Target { slug: "weather", major: 2, rest: "/" }));
        for bad in [
            "",
            "/",
            "/weather",
            "/weather/",
            "/weather/vx/a",
            "/weather/1/a",
            "//v1/a",
            "/weather/v/a",
            "/w/v12345678/a",
        ] {
            assert_eq!(parse(bad), Err(RouteError::NoMatch), "{bad}");
        }
        for trick in
            ["/w/v1/../admin", "/w/v1/a/%2e%2E/b", "/w/v1/./a", "/w/v1/a%00b", "/w/v1/a%2Fb", "/w/v1/a\\b", "/w/v1/%2e"]
        {
            assert_eq!(parse(trick), Err(RouteError::Unsafe), "{trick}");
        }
    }
}
