//! Logs: human-readable by default, JSON with `--log-format json`; level from `RUST_LOG`
//! (default `info`). Traces: with `[tracing] otlp_endpoint` (or `--otlp-endpoint`), the
//! gateway's spans (target `portico::trace`) are exported over OTLP/HTTP (protobuf) to a
//! collector; off by default, and then the gateway makes no span at all.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Where traces go: the `[tracing]` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// An OTLP/HTTP collector, e.g. `http://otel-collector:4318` (`/v1/traces` is added when the
    /// URL has no path). None: no traces.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0; a call that arrives with a `traceparent`
    /// follows its caller's sampling decision.
    pub sample_ratio: f64,
    /// The `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings { otlp_endpoint: None, sample_ratio: 1.0, service_name: "portico".into() }
    }
}

impl TracingSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            anyhow::bail!("tracing.sample_ratio must be between 0.0 and 1.0 (got {})", self.sample_ratio);
        }
        if let Some(e) = &self.otlp_endpoint {
            let ok = (e.starts_with("http://") || e.starts_with("https://")) && e.parse::<hyper::Uri>().is_ok();
            if !ok {
                anyhow::bail!(
                    "tracing.otlp_endpoint `{e}` must be an http:// or https:// URL such as http://otel-collector:4318"
                );
            }
        }
        if self.service_name.trim().is_empty() {
            anyhow::bail!("tracing.service_name must not be empty");
        }
        Ok(())
    }

    /// The URL spans are posted to: the endpoint as given, or with `/v1/traces` when it has no
    /// path (how OTLP collectors are usually named).
    pub fn traces_url(&self) -> Option<String> {
        let e = self.otlp_endpoint.as_deref()?;
        let uri: hyper::Uri = e.parse().ok()?;
        Some(match uri.path() {
            "" | "/" => format!("{}/v1/traces", e.trim_end_matches('/')),
            _ => e.to_owned(),
        })
    }
}

/// Flushes and stops the trace exporter when dropped (at the end of `serve`).
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: the last traces could not be exported: {e}");
        }
    }
}

impl Telemetry {
    /// Whether spans are being exported (the gateway makes spans only then).
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }
}

/// Installs the process's subscriber: logs, and traces when `tracing` names a collector.
pub fn init(format: Option<&str>, tracing: Option<&TracingSettings>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        Some("json") => fmt.json().with_filter(filter).boxed(),
        _ => fmt.with_filter(filter).boxed(),
    };
    let (provider, traces) = match tracing.and_then(|t| t.traces_url().map(|u| (t, u))) {
        Some((t, url)) => {
            // The exporter's HTTP client is rustls without a default provider.
            crate::install_crypto();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .build()
                .map_err(|e| anyhow::anyhow!("tracing.otlp_endpoint: {e}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(t.sample_ratio))))
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(t.service_name.clone()).build())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("portico"))
                .with_filter(Targets::new().with_target("portico::trace", tracing::Level::INFO));
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    // Another subscriber may already be installed (tests that build several apps): keep it.
    let _ = Registry::default().with(traces).with(logs).try_init();
    Ok(Telemetry { provider })
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
