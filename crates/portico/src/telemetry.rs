//! Logs: human-readable by default, JSON with `--log-format json`; level from `RUST_LOG`
//! (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init(format: Option<&str>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        Some("json") => builder.json().try_init(),
        _ => builder.try_init(),
    };
}
