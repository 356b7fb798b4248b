//! The command line. Every flag is also an environment variable `PORTICO_…` and, for `serve`,
//! a key of the config file.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "portico", version, about = "Portico: an open-source API marketplace in one binary")]
pub struct Cli {
    /// `text` (default) or `json` logs.
    #[arg(long, global = true, env = "PORTICO_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: boxing `ServeArgs` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway, the REST API and the portal in one process.
    Serve(ServeArgs),
    /// Make a running Portico match a declarative YAML file (like decK for Kong).
    Apply(ApplyArgs),
    /// Print a running Portico's providers, APIs, plans and consumers as YAML.
    Export(ExportArgs),
    /// Platform administrators.
    Admin(AdminArgs),
    /// Run the database migrations and exit (serve runs them too).
    Migrate(StoreArgs),
}

/// Where the data lives (shared by serve, admin and migrate).
#[derive(Debug, Args, Clone, Default)]
pub struct StoreArgs {
    /// A TOML config file; its keys are the long flag names with `_` (e.g. `gateway_addr`).
    #[arg(long, env = "PORTICO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database, the key pepper and demo files [default: ./portico-data]
    #[arg(long, env = "PORTICO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` [default: SQLite in the data dir]
    #[arg(long, env = "PORTICO_DATABASE")]
    pub database: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Gateway listener [default: 0.0.0.0:8080]
    #[arg(long, env = "PORTICO_GATEWAY_ADDR")]
    pub gateway_addr: Option<String>,
    /// REST API and portal listener [default: 0.0.0.0:8081]
    #[arg(long, env = "PORTICO_API_ADDR")]
    pub api_addr: Option<String>,
    /// The gateway's URL as consumers reach it, shown in the portal [default: from gateway_addr]
    #[arg(long, env = "PORTICO_PUBLIC_GATEWAY_URL")]
    pub public_gateway_url: Option<String>,
    /// The portal's URL as people reach it [default: from api_addr]
    #[arg(long, env = "PORTICO_PUBLIC_API_URL")]
    pub public_api_url: Option<String>,
    /// Prometheus `/metrics` listener, or `off` [default: 0.0.0.0:9464]
    #[arg(long, env = "PORTICO_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// PEM file of extra CA certificates to trust for HTTPS upstreams
    #[arg(long, env = "PORTICO_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// Proxies in front of the gateway whose X-Forwarded-For is believed, comma-separated
    /// addresses or CIDR networks (e.g. 10.0.0.0/8)
    #[arg(long, env = "PORTICO_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Which calls the request log keeps: all, errors or off [default: all]
    #[arg(long, env = "PORTICO_REQUEST_LOG", value_parser = ["all", "errors", "off"])]
    pub request_log: Option<String>,
    /// Networks that upstream calls may reach although they are loopback, private,
    /// link-local or cloud metadata (refused otherwise, against SSRF), comma-separated
    /// addresses or CIDR networks (e.g. 127.0.0.0/8). `--demo` adds 127.0.0.0/8. In the config
    /// file: `[outbound]` `allow_cidrs = ["127.0.0.0/8"]`.
    #[arg(long, env = "PORTICO_OUTBOUND_ALLOW_CIDRS", value_delimiter = ',')]
    pub outbound_allow_cidrs: Option<Vec<String>>,
    /// SMTP server for e-mail, e.g. smtp://user:pass@mail.example.com:587?tls=required
    /// [default: none — mail is written to <data-dir>/outbox/ as .eml files]
    #[arg(long, env = "PORTICO_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The most unshipped usage the journal may hold while the database is unreachable, in
    /// bytes; then calls answer 503 rather than go unmetered [default: 1 GiB]
    #[arg(long, env = "PORTICO_JOURNAL_MAX_BYTES")]
    pub journal_max_bytes: Option<u64>,
    /// The usage shipper's CPU priority as a nice value, 0 (normal) to 19 (lowest): under
    /// saturation the gateway comes first and the durable journal lags [default: 10]
    #[arg(long, env = "PORTICO_SHIPPER_NICE", value_parser = clap::value_parser!(i32).range(0..=19))]
    pub shipper_nice: Option<i32>,
    /// Log one line per gateway call (target `portico::access`; JSON with --log-format json)
    #[arg(long, env = "PORTICO_ACCESS_LOG")]
    pub access_log: bool,
    /// For benchmarks only: the gateway meters nothing (no journal, no usage, no billing), to
    /// measure what metering costs against the same binary with it on (bench/gateway.sh)
    #[arg(long, hide = true)]
    pub unmetered: bool,
    /// The gateway's response cache bound, in bytes, for the whole process [default: 64 MiB]
    #[arg(long, env = "PORTICO_CACHE_MAX_BYTES")]
    pub cache_max_bytes: Option<u64>,
    /// The gateway's TLS listener (e.g. 0.0.0.0:8443); certificates come from the config
    /// file's `[[tls.certificates]]`.
    #[arg(long, env = "PORTICO_TLS_GATEWAY_ADDR")]
    pub tls_gateway_addr: Option<String>,
    /// The API and portal's TLS listener (e.g. 0.0.0.0:8444)
    #[arg(long, env = "PORTICO_TLS_API_ADDR")]
    pub tls_api_addr: Option<String>,
    /// Export the gateway's traces over OTLP/HTTP to this collector (e.g.
    /// http://otel-collector:4318; `/v1/traces` is added when the URL has no path) [default: off]
    #[arg(long, env = "PORTICO_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0 (calls with a `traceparent` follow their
    /// caller's decision) [default: 1.0]
    #[arg(long, env = "PORTICO_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Load the demo marketplace (two providers, three APIs, a consumer with a key) and run
    /// its upstream in this process.
    #[arg(long, env = "PORTICO_DEMO")]
    pub demo: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// The running Portico's REST API.
    #[arg(long, env = "PORTICO_SERVER", default_value = "http://127.0.0.1:8081")]
    pub server: String,
    /// A platform admin's token (from `portico admin create`).
    #[arg(long, env = "PORTICO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct ApplyArgs {
    /// The YAML file. `${NAME}` in it is replaced by the environment variable NAME.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ExportArgs {
    /// Write here instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a platform admin (or promote an account) and print an API token.
    Create {
        #[arg(long)]
        email: String,
        /// Leave out to have one generated and printed.
        #[arg(long, env = "PORTICO_ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Start sealing secrets with a new master key: adds one to `<data-dir>/master-keys` (the
    /// old ones stay, to open what they sealed) and re-seals every stored secret with it.
    /// With PORTICO_MASTER_KEY set, set a new key there (the old one in
    /// PORTICO_MASTER_KEY_PREVIOUS) and run `portico admin reseal` instead.
    RotateMasterKey {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-seal every stored secret with the current master key.
    Reseal {
        #[command(flatten)]
        store: StoreArgs,
    },
}
