//! Validated values: a value of these types that exists is valid ("parse, don't validate").
//! Each deserializes through its parser, so a bad value in a JSON body or a YAML file is refused
//! with a message that says what to fix (and, in YAML, on which line).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        /// Maps keyed by the type are looked up by `&str` without making one (its `Hash` and
        /// `Eq` are the string's); a string that is not a valid value is simply not found.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A URL-safe name: 2–63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit
/// and not ending with `-`. Slugs name providers, APIs, plans and apps in URLs and files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);
string_newtype!(Slug);

impl Slug {
    pub fn parse(s: &str) -> Result<Self> {
        let ok_len = (2..=63).contains(&s.len());
        let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = !s.starts_with('-') && !s.ends_with('-') && !s.contains("--");
        if ok_len && ok_chars && ok_ends {
            Ok(Slug(s.to_owned()))
        } else {
            Err(Error::invalid(
                "slug",
                format!(
                    "`{s}` is not a valid slug: use 2-63 characters of a-z, 0-9 and single dashes, e.g. `weather-api`"
                ),
            ))
        }
    }

    /// Turns a display name into a slug candidate (`"Acme Weather!"` → `"acme-weather"`).
    pub fn slugify(name: &str) -> Result<Self> {
        let mut out = String::new();
        for c in name.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
        }
        let trimmed: String = out.trim_end_matches('-').chars().take(63).collect();
        Slug::parse(trimmed.trim_end_matches('-'))
    }
}

/// A host name an API answers on at the gateway (`weather.example.com`): DNS labels of `a-z`,
/// `0-9` and `-` (1–63 characters each, not starting or ending with `-`), at most 253 in all,
/// at least two labels; no port, no wildcard, no trailing dot. Stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);
string_newtype!(Hostname);

impl Hostname {
    pub fn parse(s: &str) -> Result<Self> {
        let h = s.trim().to_ascii_lowercase();
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        // A last label of digits only is an IPv4 address (or looks like one): not a name.
        let top_level_ok = h.rsplit('.').next().is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()));
        if h.len() <= 253 && h.contains('.') && h.split('.').all(label_ok) && top_level_ok {
            Ok(Hostname(h))
        } else {
            Err(Error::invalid(
                "hosts",
                format!(
                    "`{}` is not a host name: use DNS labels of a-z, 0-9 and dashes, e.g. `weather.example.com` (no port, scheme or wildcard)",
                    s.escape_default()
                ),
            ))
        }
    }
}

/// A display name: 1–100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);
string_newtype!(Name);

impl Name {
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
            return Err(Error::invalid("name", "a name needs 1-100 printable characters"));
        }
        Ok(Name(t.to_owned()))
    }
}

/// An e-mail address, lower-cased. Checked for shape only (one `@`, a dotted domain): whether it
/// receives mail is for e-mail verification to find out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);
string_newtype!(Email);

impl Email {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_lowercase();
        let bad = || Error::invalid("email", format!("`{s}` is not an e-mail address like `ada@example.com`"));
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && !domain.contains("..");
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(bad());
        }
        Ok(Email(s))
    }
}

/// A password as typed: at least 8 and at most 1024 characters. Never stored; only its hash is.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Password(String);

impl Password {
    pub fn parse(s: &str) -> Result<Self> {
        let n = s.chars().count();
        if n < 8 {
            return Err(Error::invalid("password", "a password needs at least 8 characters"));
        }
        if n > 1024 {
            return Err(Error::invalid("password", "a password may have at most 1024 characters"));
        }
        if is_common_password(s) {
            return Err(Error::invalid(
                "password",
                "that password is among the most common ones, which attackers try first; choose another (a few unrelated words make a good one)",
            ));
        }
        Ok(Password(s.to_owned()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

/// Whether a password is on the common-password list (case-insensitively), one character
/// repeated, or a straight run such as `12345678` or `abcdefgh`.
pub fn is_common_password(s: &str) -> bool {
    static LIST: std::sync::OnceLock<std::collections::HashSet<&'static str>> = std::sync::OnceLock::new();
    let list = LIST.get_or_init(|| {
        COMMON_PASSWORDS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
    });
    let lower = s.to_lowercase();
    let b = lower.as_bytes();
    let repeated = b.windows(2).all(|w| w[0] == w[1]);
    let run = |step: i16| b.windows(2).all(|w| i16::from(w[1]) - i16::from(w[0]) == step);
    list.contains(lower.as_str()) || repeated || run(1) || run(-1)
}

impl TryFrom<String> for Password {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// An ISO 4217 currency code such as `USD` or `EUR`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);
string_newtype!(Currency);

impl Currency {
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(s.to_owned()))
        } else {
            Err(Error::invalid(
                "currency",
                format!("`{s}` is not a currency code: use three capital letters such as `USD`"),
            ))
        }
    }
    pub fn usd() -> Self {
        Currency("USD".into())
    }
}

/// An amount of money in minor units (cents) of a currency. Never a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self> {
        if amount_minor < 0 {
            return Err(Error::invalid("amount_minor", "a price cannot be negative"));
        }
        Ok(Money { amount_minor, currency })
    }
    pub fn zero(currency: Currency) -> Self {
        Money { amount_minor: 0, currency }
    }
    pub fn is_zero(&self) -> bool {
        self.amount_minor == 0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let a = self.amount_minor.unsigned_abs();
        write!(f, "{sign}{}.{:02} {}", a / 100, a % 100, self.currency)
    }
}

/// The window of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
}

impl Period {
    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3600,
            Period::Day => 86_400,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "second" => Ok(Period::Second),
            "minute" => Ok(Period::Minute),
            "hour" => Ok(Period::Hour),
            "day" => Ok(Period::Day),
            _ => Err(Error::invalid("per", format!("`{s}` is not a period: use second, minute, hour or day"))),
        }
    }
}

/// A rate limit: at most `requests` calls per `per`, enforced as a GCRA (so bursts up to
/// `requests` are allowed, then calls are spaced evenly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RateLimitRepr", into = "RateLimitRepr")]
pub struct RateLimit {
    requests: u32,
    per: Period,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitRepr {
    requests: u32,
    per: Period,
}

impl RateLimit {
    pub fn new(requests: u32, per: Period) -> Result<Self> {
        if requests == 0 || requests > 1_000_000 {
            return Err(Error::invalid("rate_limit", "requests must be between 1 and 1000000 per period"));
        }
        Ok(RateLimit { requests, per })
    }
    pub fn requests(&self) -> u32 {
        self.requests
    }
    pub fn per(&self) -> Period {
        self.per
    }
}

impl TryFrom<RateLimitRepr> for RateLimit {
    type Error = Error;
    fn try_from(r: RateLimitRepr) -> Result<Self> {
        RateLimit::new(r.requests, r.per)
    }
}
impl From<RateLimit> for RateLimitRepr {
    fn from(r: RateLimit) -> Self {
        RateLimitRepr { requests: r.requests, per: r.per }
    }
}

/// A plan's rate-limit windows (its `rate_limit` and its `rate_limits`): at most four, each with
/// a period of its own.
pub fn check_rate_windows(windows: &[RateLimit]) -> Result<()> {
    if windows.len() > 4 {
        return Err(Error::invalid("rate_limits", "a plan has at most 4 rate-limit windows"));
    }
    for (i, w) in windows.iter().enumerate() {
        if windows[..i].iter().any(|o| o.per == w.per) {
            return Err(Error::invalid(
                "rate_limits",
                format!(
                    "two rate limits per {}: give each window its own period (second, minute, hour, day)",
                    w.per.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// A plan's windows for single operations: at most 50 operations (by operationId, 1–128
/// characters), each with windows as [`check_rate_windows`] allows.
pub fn check_operation_limits(limits: &std::collections::BTreeMap<String, Vec<RateLimit>>) -> Result<()> {
    if limits.len() > 50 {
        return Err(Error::invalid("operation_limits", "a plan limits at most 50 operations"));
    }
    for (op, windows) in limits {
        if op.is_empty() || op.len() > 128 || !op.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
            return Err(Error::invalid(
                "operation_limits",
                "an operation is named by its operationId (1-128 printable ASCII characters, no quotes or backslashes)",
            ));
        }
        if windows.is_empty() {
            return Err(Error::invalid(
                "operation_limits",
                format!("operation `{op}` has no windows; leave it out instead"),
            ));
        }
        check_rate_windows(windows)
            .map_err(|e| Error::invalid("operation_limits", format!("operation `{op}`: {e}")))?;
    }
    Ok(())
}

/// A semantic version of an API: `MAJOR.MINOR.PATCH` (or `MAJOR.MINOR`). The gateway routes
/// `/v{MAJOR}` to the newest published version of that major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VersionNumber {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl VersionNumber {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::invalid("version", format!("`{s}` is not a version: use MAJOR.MINOR.PATCH, e.g. `1.0.0`"));
        let parts: Vec<&str> = s.trim().trim_start_matches('v').split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let num = |p: &str| -> Result<u32> {
            if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        Ok(VersionNumber {
            major: num(parts[0])?,
            minor: num(parts[1])?,
            patch: if parts.len() == 3 { num(parts[2])? } else { 0 },
        })
    }
}

impl fmt::Display for VersionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}
impl TryFrom<String> for VersionNumber {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<VersionNumber> for String {
    fn from(v: VersionNumber) -> String {
        v.to_string()
    }
}

/// Where the gateway forwards an API version's calls: an absolute `http://` or `https://` URL
/// with a host, no query and no fragment. Its path is a prefix for the call's path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpstreamUrl(String);
string_newtype!(UpstreamUrl);

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("upstream_url", format!("`{s}` is not a usable upstream URL: {why}"));
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .ok_or_else(|| bad("it must start with http:// or https://"))?;
        if s.contains('?') || s.contains('#') {
            return Err(bad("it may not have a query or a fragment"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it may not contain spaces"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("it needs a host (and no user:password@)"));
        }
        Ok(UpstreamUrl(s.trim_end_matches('/').to_owned()))
    }
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
    /// Whether the URL has a path after its authority (`http://h/base`), not just `http://h`.
    pub fn has_path(&self) -> bool {
        self.0.split_once("://").is_some_and(|(_, rest)| rest.contains('/'))
    }
    /// The host, without the port and without an IPv6 literal's brackets (`::1`,
    /// `api.example.com`, `10.0.0.1`).
    pub fn host(&self) -> &str {
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some(v6) = authority.strip_prefix('[') {
            return v6.split(']').next().unwrap_or_default();
        }
        authority.split(':').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slug_keyed_maps_are_looked_up_by_str() {
        let m = std::collections::HashMap::from([(Slug::parse("weather").unwrap(), 1)]);
        assert_eq!(m.get("weather"), Some(&1));
        assert_eq!(m.get("Weather"), None, "not a valid slug: not found, no error");
        assert_eq!(m.get("weather-api"), None);
    }

    #[test]
    fn common_and_trivial_passwords_are_refused() {
        for p in ["password", "Password1", "12345678", "QWERTYUIOP", "iloveyou", "zzzzzzzzzz", "abcdefghij", "98765432"]
        {
            let e = Password::parse(p).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("most common"), "{p}: {e}");
        }
        for p in ["long enough password", "correct horse battery", "Tr0ub4dor&3x"] {
            assert!(Password::parse(p).is_ok(), "{p}");
        }
        assert!(Password::parse("short").unwrap_err().to_string().contains("at least 8"));
    }

    #[test]
    fn host_names() {
        assert_eq!(Hostname::parse(" Weather.Example.COM ").unwrap().as_str(), "weather.example.com");
        assert!(Hostname::parse("api.weather-co.io").is_ok());
        for bad in [
            "localhost",
            "weather.example.com:8080",
            "https://weather.example.com",
            "*.example.com",
            "weather.example.com.",
            "10.0.0.5",
            "127.0.0.1",
            "-weather.example.com",
            "weather..example.com",
            "wea_ther.example.com",
            "",
        ] {
            let e = Hostname::parse(bad).unwrap_err().to_string();
            assert!(e.contains("host name"), "{bad}: {e}");
        }
        assert!(Hostname::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn slugs() {
        assert!(Slug::parse("weather-api").is_ok());
        assert!(Slug::parse("a").is_err());
        assert!(Slug::parse("-a").is_err());
        assert!(Slug::parse("a-").is_err());
        assert!(Slug::parse("a--b").is_err());
        assert!(Slug::parse("Weather").is_err());
        assert_eq!(Slug::slugify("Acme Weather, Inc.").unwrap().as_str(), "acme-weather-inc");
    }

    #[test]
    fn emails() {
        assert_eq!(Email::parse(" Ada@Example.com ").unwrap().as_str(), "ada@example.com");
        for bad in ["", "ada", "ada@", "@x.io", "ada@localhost", "a b@x.io", "a@b@c.io", "a@x..io"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(VersionNumber::parse("1.2.3").unwrap().to_string(), "1.2.3");
        assert_eq!(VersionNumber::parse("v2.1").unwrap().to_string(), "2.1.0");
        assert!(VersionNumber::parse("1").is_err());
        assert!(VersionNumber::parse("1.x.0").is_err());
        assert!(VersionNumber::parse("1.2.3.4").is_err());
        assert!(VersionNumber::parse("1.0.0").unwrap() < VersionNumber::parse("1.10.0").unwrap());
    }

    #[test]
    fn upstreams() {
        assert_eq!(UpstreamUrl::parse("http://127.0.0.1:9000/v1/").unwrap().as_str(), "http://127.0.0.1:9000/v1");
        assert!(UpstreamUrl::parse("ftp://x").is_err());
        assert!(UpstreamUrl::parse("http://").is_err());
        assert!(UpstreamUrl::parse("http://u:p@x").is_err());
        assert!(UpstreamUrl::parse("http://x/?a=1").is_err());
        for (url, host) in [
            ("http://127.0.0.1:9000/v1", "127.0.0.1"),
            ("https://api.example.com", "api.example.com"),
            ("http://[::ffff:127.0.0.1]:8080/x", "::ffff:127.0.0.1"),
            ("http://[::1]", "::1"),
            ("http://localhost:1", "localhost"),
        ] {
            assert_eq!(UpstreamUrl::parse(url).unwrap().host(), host, "{url}");
        }
    }

    #[test]
    fn money_and_limits() {
        assert_eq!(Money::new(1999, Currency::usd()).unwrap().to_string(), "19.99 USD");
        assert!(Money::new(-1, Currency::usd()).is_err());
        assert!(Currency::parse("usd").is_err());
        assert!(RateLimit::new(0, Period::Minute).is_err());
        let r: RateLimit = serde_json::from_str(r#"{"requests":5,"per":"second"}"#).unwrap();
        assert_eq!(r.requests(), 5);
        assert!(serde_json::from_str::<RateLimit>(r#"{"requests":5,"per":"week"}"#).is_err());
    }

    proptest! {
        #[test]
        fn slug_parse_never_panics_and_round_trips(s in ".{0,80}") {
            if let Ok(slug) = Slug::parse(&s) {
                prop_assert_eq!(slug.as_str(), s.as_str());
            }
        }

        #[test]
        fn version_round_trips(a in 0u32..100_000, b in 0u32..100_000, c in 0u32..100_000) {
            let v = VersionNumber { major: a, minor: b, patch: c };
            prop_assert_eq!(VersionNumber::parse(&v.to_string()).unwrap(), v);
        }

        #[test]
        fn email_parse_never_panics(s in ".{0,300}") {
            let _ = Email::parse(&s);
        }
    }
}
