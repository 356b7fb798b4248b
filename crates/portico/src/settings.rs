//! Settings, layered: defaults → config file (TOML) → `PORTICO_*` environment → flags (clap
//! reads the environment and the flags; figment layers them over the file). Validated after
//! load, with messages that say what to fix. Secrets are never printed.

use crate::cli::{ServeArgs, StoreArgs};
use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// `None`: SQLite in the data dir.
    pub database: Option<String>,
    pub gateway_addr: String,
    pub api_addr: String,
    pub public_gateway_url: Option<String>,
    pub public_api_url: Option<String>,
    /// Prometheus `/metrics` listener; `off` disables it.
    pub metrics_addr: String,
    /// PEM file of CA certificates trusted for HTTPS upstreams, besides the webpki roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Networks of proxies in front of the gateway whose `X-Forwarded-For` is believed (CIDR
    /// or single addresses). Empty: the connection's peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Which calls the request log keeps: `all` (default), `errors` or `off`. Rollups (analytics,
    /// quotas, billing) always count every call.
    pub request_log: portico_metering::RequestLog,
    /// How long usage detail is kept.
    pub retention: Retention,
    /// What the gateway accepts from a client: the `[limits]` section.
    pub limits: Limits,
    /// What outbound calls (upstreams, health checks) may reach: the `[outbound]` section.
    pub outbound: Outbound,
    /// The most unshipped usage the local journal may hold (while the database is down); at the
    /// limit the gateway answers 503 rather than serve calls it cannot meter.
    pub journal_max_bytes: u64,
    /// The usage shipper's CPU priority, as a nice value (0 normal … 19 lowest; default 10): under
    /// saturation the gateway's workers come first and the durable journal lags.
    pub shipper_nice: i32,
    /// One log line per gateway call (method, path, status, latency, ids; never a query, a
    /// header or a body).
    pub access_log: bool,
    /// Benchmarks only (`--unmetered`): the gateway records no usage at all.
    pub unmetered: bool,
    /// E-mail: the `[smtp]` section. Without a URL, mail is written to `<data-dir>/outbox/`.
    pub smtp: Smtp,
    /// The gateway's response cache: the most it holds, in bytes, for the whole process.
    pub cache_max_bytes: u64,
    /// TLS listeners and their certificates: the `[tls]` section.
    pub tls: crate::tls::TlsSettings,
    /// Traces over OTLP: the `[tracing]` section (off by default).
    pub tracing: crate::telemetry::TracingSettings,
    /// The portal's single sign-on providers (OpenID Connect): `[[sso]]` tables with `id`,
    /// `name`, `issuer`, `client_id`, `client_secret`, optional `scopes` and `account_type`.
    pub sso: Vec<portico_control::services::sso::SsoProvider>,
    pub demo: bool,
}

/// `[smtp]`: where e-mail goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// `smtp://[user:password@]host[:port][?tls=required]` or `smtps://host`; none: the outbox.
    pub url: Option<String>,
    /// The sender, e.g. `Portico <no-reply@example.com>`.
    pub from: String,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp { url: None, from: "Portico <no-reply@portico.localhost>".into() }
    }
}

/// `[retention]`: days of usage detail kept; older rows are deleted hourly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Per-minute rollups (analytics at minute and hour granularity).
    pub minute_days: u32,
    /// Per-day rollups (analytics at day granularity, quotas).
    pub day_days: u32,
    /// The request log (one row per call).
    pub request_log_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { minute_days: 14, day_days: 400, request_log_days: 14 }
    }
}

/// `[limits]`: what the gateway accepts from a client, checked before any key lookup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest request body (413 beyond it; a declared length is refused before reading).
    pub max_body_bytes: u64,
    /// The most request headers (431 beyond).
    pub max_headers: usize,
    /// The largest request head, request line and headers together (431 beyond).
    pub max_header_bytes: usize,
    /// The longest path and query (414 beyond).
    pub max_url_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let g = portico_gateway::GatewayConfig::default();
        Limits {
            max_body_bytes: g.max_body_bytes,
            max_headers: g.max_headers,
            max_header_bytes: g.max_head_bytes,
            max_url_bytes: g.max_url_bytes,
        }
    }
}

impl Limits {
    fn validate(&self) -> anyhow::Result<()> {
        if !(1..=1 << 40).contains(&self.max_body_bytes) {
            bail!("limits.max_body_bytes must be between 1 and 1 TiB");
        }
        if !(8..=1000).contains(&self.max_headers) {
            bail!("limits.max_headers must be between 8 and 1000");
        }
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            bail!("limits.max_header_bytes must be between 8192 (8 KiB) and 1048576 (1 MiB)");
        }
        if !(256..=self.max_header_bytes).contains(&self.max_url_bytes) {
            bail!(
                "limits.max_url_bytes must be at least 256 and at most limits.max_header_bytes ({})",
                self.max_header_bytes
            );
        }
        Ok(())
    }
}

/// The `[outbound]` section: SSRF protection of every call Portico makes on someone's behalf.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Networks that outbound calls may reach although they are loopback, private,
    /// link-local, metadata or otherwise special-purpose (CIDR or single addresses), e.g.
    /// `["127.0.0.0/8"]` for upstreams on this machine. Empty: only public addresses.
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("portico-data"),
            database: None,
            gateway_addr: "0.0.0.0:8080".into(),
            api_addr: "0.0.0.0:8081".into(),
            public_gateway_url: None,
            public_api_url: None,
            metrics_addr: "0.0.0.0:9464".into(),
            upstream_ca_file: None,
            trusted_proxies: Vec::new(),
            request_log: portico_metering::RequestLog::All,
            retention: Retention::default(),
            limits: Limits::default(),
            outbound: Outbound::default(),
            smtp: Smtp::default(),
            journal_max_bytes: 1 << 30,
            shipper_nice: 10,
            access_log: false,
            unmetered: false,
            cache_max_bytes: 64 * 1024 * 1024,
            tls: crate::tls::TlsSettings::default(),
            tracing: crate::telemetry::TracingSettings::default(),
            sso: Vec::new(),
            demo: false,
        }
    }
}

/// The flags that were given, as a layer over the file (absent flags do not override it).
#[derive(Serialize)]
struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_gateway_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_api_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trusted_proxies: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_log: Option<portico_metering::RequestLog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound: Option<Outbound>,
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp: Option<SmtpOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    journal_max_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shipper_nice: Option<i32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    access_log: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unmetered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_max_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracing: Option<TracingOverrides>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    demo: bool,
}

/// The `[tracing]` keys that flags set.
#[derive(Serialize)]
struct TracingOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_ratio: Option<f64>,
}

/// `--smtp-url` over the file's `[smtp] url` (the sender stays the file's).
#[derive(Serialize)]
struct SmtpOverride {
    url: String,
}

/// The `[tls]` keys that flags set (certificates come from the file only).
#[derive(Serialize)]
struct TlsOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_addr: Option<String>,
}

impl Settings {
    pub fn load(args: &ServeArgs) -> anyhow::Result<Self> {
        // Destructured so that a new flag cannot be forgotten here.
        let ServeArgs {
            store: StoreArgs { config, data_dir, database },
            gateway_addr,
            api_addr,
            public_gateway_url,
            public_api_url,
            metrics_addr,
            upstream_ca_file,
            trusted_proxies,
            request_log,
            outbound_allow_cidrs,
            smtp_url,
            journal_max_bytes,
            shipper_nice,
            access_log,
            unmetered,
            cache_max_bytes,
            tls_gateway_addr,
            tls_api_addr,
            otlp_endpoint,
            trace_sample_ratio,
            demo,
        } = args.clone();
        let request_log = request_log.map(|s| match s.as_str() {
            "errors" => portico_metering::RequestLog::Errors,
            "off" => portico_metering::RequestLog::Off,
            _ => portico_metering::RequestLog::All,
        });
        let overrides = Overrides {
            data_dir,
            database,
            gateway_addr,
            api_addr,
            public_gateway_url,
            public_api_url,
            metrics_addr,
            upstream_ca_file,
            trusted_proxies,
            request_log,
            outbound: outbound_allow_cidrs.map(|allow_cidrs| Outbound { allow_cidrs }),
            smtp: smtp_url.map(|url| SmtpOverride { url }),
            journal_max_bytes,
            shipper_nice,
            access_log,
            unmetered,
            cache_max_bytes,
            tls: (tls_gateway_addr.is_some() || tls_api_addr.is_some())
                .then_some(TlsOverrides { gateway_addr: tls_gateway_addr, api_addr: tls_api_addr }),
            tracing: (otlp_endpoint.is_some() || trace_sample_ratio.is_some())
                .then_some(TracingOverrides { otlp_endpoint, sample_ratio: trace_sample_ratio }),
            demo,
        };
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &config {
            if !path.exists() {
                bail!("config file {} does not exist (set by --config / PORTICO_CONFIG)", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        let settings: Settings =
            fig.merge(Serialized::defaults(overrides)).extract().map_err(|e| anyhow::anyhow!("{e}")).with_context(
                || match &config {
                    Some(p) => format!("reading settings from {}", p.display()),
                    None => "reading settings".into(),
                },
            )?;
        settings.validate()?;
        Ok(settings)
    }

    /// Settings from a TOML file's text alone (no flags, no environment), validated like
    /// [`Settings::load`]'s: what the config fuzz target drives.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Settings for commands that only need the store.
    pub fn for_store(args: &StoreArgs) -> anyhow::Result<Self> {
        Self::load(&ServeArgs { store: args.clone(), ..Default::default() })
    }

    /// `trusted_proxies` as networks (a single address is a /32 or /128).
    pub fn trusted_networks(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        networks("trusted_proxies", &self.trusted_proxies, "10.0.0.0/8")
    }

    /// The outbound policy: `outbound.allow_cidrs`, plus loopback for `serve --demo` (its
    /// upstream runs on this machine).
    pub fn outbound_policy(&self) -> anyhow::Result<portico_core::outbound::OutboundPolicy> {
        let mut allow = networks("outbound.allow_cidrs", &self.outbound.allow_cidrs, "127.0.0.0/8")?;
        let loopback = ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0), 8));
        if self.demo && !allow.contains(&loopback) {
            allow.push(loopback);
        }
        Ok(portico_core::outbound::OutboundPolicy::new(allow))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for (i, p) in self.sso.iter().enumerate() {
            if let Err(e) = p.validate() {
                bail!("{e}");
            }
            if self.sso[..i].iter().any(|o| o.id == p.id) {
                bail!("sso `{}` is declared twice: give each provider its own id", p.id);
            }
        }
        self.trusted_networks()?;
        let r = &self.retention;
        if r.minute_days == 0 || r.day_days == 0 || r.request_log_days == 0 {
            bail!("retention: minute_days, day_days and request_log_days must be at least 1 (days)");
        }
        if r.minute_days > r.day_days {
            bail!("retention: minute_days ({}) cannot exceed day_days ({})", r.minute_days, r.day_days);
        }
        self.outbound_policy()?;
        let mut addrs = vec![("gateway_addr", &self.gateway_addr), ("api_addr", &self.api_addr)];
        if self.metrics_addr != "off" {
            addrs.push(("metrics_addr", &self.metrics_addr));
        }
        if let Some(a) = &self.tls.gateway_addr {
            addrs.push(("tls.gateway_addr", a));
        }
        if let Some(a) = &self.tls.api_addr {
            addrs.push(("tls.api_addr", a));
        }
        for (name, v) in addrs {
            v.parse::<SocketAddr>().map_err(|_| anyhow::anyhow!("{name} `{v}` is not an address like 0.0.0.0:8080"))?;
        }
        for (name, v) in [("public_gateway_url", &self.public_gateway_url), ("public_api_url", &self.public_api_url)] {
            if let Some(u) = v
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                bail!("{name} `{u}` must start with http:// or https://");
            }
        }
        if !(0..=19).contains(&self.shipper_nice) {
            bail!("shipper_nice `{}` must be a nice value from 0 (normal) to 19 (lowest)", self.shipper_nice);
        }
        if !(1024 * 1024..=1 << 40).contains(&self.cache_max_bytes) {
            bail!("cache_max_bytes must be at least 1048576 (1 MiB) and at most 1 TiB");
        }
        self.tls.validate()?;
        self.limits.validate()?;
        self.tracing.validate()?;
        if let Some(db) = &self.database
            && !(db.starts_with("sqlite:") || db.starts_with("postgres://") || db.starts_with("postgresql://"))
        {
            bail!("database `{}` must be sqlite://PATH or postgres://USER@HOST/DB", portico_store::redact(db));
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        match &self.database {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("portico.db").display()),
        }
    }
}

/// A list of networks (a single address is a /32 or /128), or an error naming the setting.
fn networks(setting: &str, list: &[String], example: &str) -> anyhow::Result<Vec<ipnet::IpNet>> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| anyhow::anyhow!("{setting}: `{s}` is not an address or a CIDR network such as {example}"))
        })
        .collect()
}

/// The pepper that API keys and OAuth client secrets are hashed under, with the previous ones
/// after a rotation: `PORTICO_KEY_PEPPER` (64 hex characters; every process of a cluster must
/// share it) plus any `PORTICO_KEY_PEPPER_PREVIOUS` (comma-separated, newest first), or
/// `<data-dir>/key-pepper`, one pepper per line, current first, created on first start.
pub fn load_pepper(data_dir: &Path) -> anyhow::Result<portico_core::api_key::Pepper> {
    use portico_core::api_key::Pepper;
    let parse_all = |text: &str, source: &str| -> anyhow::Result<Vec<Pepper>> {
        text.split([',', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| Pepper::from_hex(l).map_err(|e| anyhow::anyhow!("{source}: {e}")))
            .collect()
    };
    if let Ok(hex) = std::env::var("PORTICO_KEY_PEPPER") {
        let current = Pepper::from_hex(&hex).map_err(|e| anyhow::anyhow!("PORTICO_KEY_PEPPER: {e}"))?;
        let previous = match std::env::var("PORTICO_KEY_PEPPER_PREVIOUS") {
            Ok(list) => parse_all(&list, "PORTICO_KEY_PEPPER_PREVIOUS")?,
            Err(_) => Vec::new(),
        };
        return Ok(current.with_previous(previous));
    }
    if std::env::var_os("PORTICO_KEY_PEPPER_PREVIOUS").is_some() {
        anyhow::bail!(
            "PORTICO_KEY_PEPPER_PREVIOUS is set but PORTICO_KEY_PEPPER is not: set the current pepper there too, or list the previous ones in <data-dir>/key-pepper"
        );
    }
    let path = data_dir.join("key-pepper");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut peppers = parse_all(&text, &path.display().to_string())?.into_iter();
        let current = peppers.next().ok_or_else(|| {
            anyhow::anyhow!(
                "{} holds no pepper: put the current one (64 hex characters) on the first line",
                path.display()
            )
        })?;
        return Ok(current.with_previous(peppers));
    }
    let pepper = Pepper::generate();
    write_private(&path, &pepper.to_hex())?;
    Ok(pepper)
}

/// The master keys that seal secrets at rest (newest first): `PORTICO_MASTER_KEY` (plus any
/// `PORTICO_MASTER_KEY_PREVIOUS`, comma-separated, still needed to open older secrets) — every
/// process of a cluster must share them — or `<data-dir>/master-keys`, one key per line, newest
/// first, created on first start.
pub fn load_keyring(data_dir: &Path) -> anyhow::Result<portico_core::secret::Keyring> {
    use portico_core::secret::{Keyring, parse_key};
    if let Ok(current) = std::env::var("PORTICO_MASTER_KEY") {
        let mut keys = vec![parse_key(&current).map_err(|e| anyhow::anyhow!("PORTICO_MASTER_KEY: {e}"))?];
        if let Ok(prev) = std::env::var("PORTICO_MASTER_KEY_PREVIOUS") {
            for k in prev.split(',').filter(|k| !k.trim().is_empty()) {
                keys.push(parse_key(k).map_err(|e| anyhow::anyhow!("PORTICO_MASTER_KEY_PREVIOUS: {e}"))?);
            }
        }
        return Keyring::new(keys).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let path = data_dir.join("master-keys");
    if !path.exists() {
        write_private(&path, &format!("{}\n", hex::encode(Keyring::generate_key())))?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_key(l).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Keyring::new(keys).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_file_and_nonsense_is_refused() {
        let s = Settings::from_toml("[limits]\nmax_headers = 50\nmax_url_bytes = 2048\n").unwrap();
        assert_eq!((s.limits.max_headers, s.limits.max_url_bytes), (50, 2048));
        assert_eq!(s.limits.max_body_bytes, 10 * 1024 * 1024, "the rest keep their defaults");
        for (bad, says) in [
            ("max_headers = 0", "max_headers"),
            ("max_header_bytes = 100", "max_header_bytes"),
            ("max_url_bytes = 100000", "max_url_bytes"),
            ("max_body_bytes = 0", "max_body_bytes"),
            ("max_hedaers = 5", "max_hedaers"),
        ] {
            let e = Settings::from_toml(&format!("[limits]\n{bad}\n")).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sso_providers_come_from_the_file_and_nonsense_is_refused() {
        let ok = "[[sso]]\nid = \"corp\"\nname = \"Corp\"\nissuer = \"https://login.corp.example\"\n\
                  client_id = \"portico\"\nclient_secret = \"s3cret\"\n";
        let s = Settings::from_toml(ok).unwrap();
        assert_eq!((s.sso.len(), s.sso[0].id.as_str()), (1, "corp"));
        assert_eq!(s.sso[0].account_type, portico_core::model::OrgKind::Consumer);
        assert!(!format!("{s:?}").contains("s3cret"), "the client secret is never printed");
        for (toml, says) in [
            (ok.replace("corp\"\nname", "Corp Inc\"\nname"), "id must be a slug"),
            (ok.replace("https://login.corp.example", "login"), "issuer"),
            (ok.replace("https://login.corp.example", "http://login.corp.example"), "must be an https:// URL"),
            (ok.replace("s3cret", ""), "client_secret are required"),
            (format!("{ok}{ok}"), "declared twice"),
            (format!("{ok}account_type = \"platform\"\n"), "account_type"),
        ] {
            let e = Settings::from_toml(&toml).unwrap_err().to_string();
            assert!(e.contains(says), "{toml}: {e}");
        }
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portico.toml");
        std::fs::write(&file, "gateway_addr = \"127.0.0.1:9000\"\napi_addr = \"127.0.0.1:9001\"\n").unwrap();
        let mut args =
            ServeArgs { store: StoreArgs { config: Some(file.clone()), ..Default::default() }, ..Default::default() };
        let s = Settings::load(&args).unwrap();
        assert_eq!(s.gateway_addr, "127.0.0.1:9000");
        args.gateway_addr = Some("127.0.0.1:9100".into());
        assert_eq!(Settings::load(&args).unwrap().gateway_addr, "127.0.0.1:9100", "a flag beats the file");
        assert_eq!(Settings::load(&args).unwrap().api_addr, "127.0.0.1:9001");
    }

    #[test]
    fn outbound_allow_cidrs_from_the_file_the_flag_and_the_demo() {
        use std::net::IpAddr;
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let private: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(!Settings::load(&ServeArgs::default()).unwrap().outbound_policy().unwrap().permits(loopback));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portico.toml");
        std::fs::write(&file, "[outbound]\nallow_cidrs = [\"127.0.0.0/8\"]\n").unwrap();
        let mut args =
            ServeArgs { store: StoreArgs { config: Some(file.clone()), ..Default::default() }, ..Default::default() };
        let p = Settings::load(&args).unwrap().outbound_policy().unwrap();
        assert!(p.permits(loopback) && !p.permits(private));
        args.outbound_allow_cidrs = Some(vec!["10.0.0.0/8".into(), "192.168.1.7".into()]);
        let p = Settings::load(&args).unwrap().outbound_policy().unwrap();
        assert!(p.permits(private) && !p.permits(loopback), "the flag replaces the file's list");
        let demo = ServeArgs { demo: true, ..Default::default() };
        assert!(Settings::load(&demo).unwrap().outbound_policy().unwrap().permits(loopback), "--demo allows loopback");

        let args = ServeArgs { outbound_allow_cidrs: Some(vec!["localhost".into()]), ..Default::default() };
        let e = format!("{:#}", Settings::load(&args).unwrap_err());
        assert!(e.contains("outbound.allow_cidrs: `localhost`") && e.contains("127.0.0.0/8"), "{e}");
        std::fs::write(&file, "[outbound]\nallow = [\"127.0.0.0/8\"]\n").unwrap();
        let args = ServeArgs { store: StoreArgs { config: Some(file), ..Default::default() }, ..Default::default() };
        let e = format!("{:#}", Settings::load(&args).unwrap_err());
        assert!(e.contains("allow"), "an unknown key in [outbound] is refused: {e}");
    }

    #[test]
    fn bad_settings_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portico.toml");
        std::fs::write(&file, "gateway_adr = \"x\"\n").unwrap();
        let args = ServeArgs { store: StoreArgs { config: Some(file), ..Default::default() }, ..Default::default() };
        let e = format!("{:#}", Settings::load(&args).unwrap_err());
        assert!(e.contains("gateway_adr"), "{e}");
        let args = ServeArgs { gateway_addr: Some("nowhere".into()), ..Default::default() };
        assert!(format!("{:#}", Settings::load(&args).unwrap_err()).contains("not an address"));
        let args = ServeArgs {
            store: StoreArgs { database: Some("mysql://x".into()), ..Default::default() },
            ..Default::default()
        };
        assert!(format!("{:#}", Settings::load(&args).unwrap_err()).contains("sqlite://"));
        let args = ServeArgs { tls_gateway_addr: Some("127.0.0.1:0".into()), ..Default::default() };
        assert!(format!("{:#}", Settings::load(&args).unwrap_err()).contains("[[tls.certificates]]"));
        let args = ServeArgs { cache_max_bytes: Some(10), ..Default::default() };
        assert!(format!("{:#}", Settings::load(&args).unwrap_err()).contains("cache_max_bytes"));
        std::fs::write(dir.path().join("nice.toml"), "shipper_nice = 20\n").unwrap();
        let args = ServeArgs {
            store: StoreArgs { config: Some(dir.path().join("nice.toml")), ..Default::default() },
            ..Default::default()
        };
        assert!(format!("{:#}", Settings::load(&args).unwrap_err()).contains("shipper_nice"));
        let args = ServeArgs { shipper_nice: Some(19), ..Default::default() };
        assert_eq!(Settings::load(&args).unwrap().shipper_nice, 19);
    }

    #[test]
    fn tls_from_the_file_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["api.example.com".into()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        let file = dir.path().join("portico.toml");
        let d = dir.path().display();
        std::fs::write(
            &file,
            format!(
                "[tls]\napi_addr = \"127.0.0.1:0\"\nreload_secs = 2\n[[tls.certificates]]\ncert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\nhosts = [\"api.example.com\"]\n"
            ),
        )
        .unwrap();
        let mut args =
            ServeArgs { store: StoreArgs { config: Some(file), ..Default::default() }, ..Default::default() };
        let s = Settings::load(&args).unwrap();
        assert_eq!((s.tls.api_addr.as_deref(), s.tls.gateway_addr.as_deref()), (Some("127.0.0.1:0"), None));
        assert_eq!((s.tls.certificates.len(), s.tls.reload_secs), (1, 2));
        args.tls_gateway_addr = Some("127.0.0.1:0".into());
        let s = Settings::load(&args).unwrap();
        assert_eq!(s.tls.gateway_addr.as_deref(), Some("127.0.0.1:0"), "a flag adds to the file's [tls]");
        assert_eq!(s.tls.certificates.len(), 1, "and keeps its certificates");
    }
}
