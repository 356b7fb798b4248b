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

/// The process's Prometheus recorder, installed on first use (the `metrics` facade is the one
/// global Portico keeps, like the tracing subscriber).
pub fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                .expect("non-empty buckets");
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (an embedding program): render ours, unused.
                Err(_) => metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
