//! The spans of a call, made only when the binary exports traces ([`GatewayConfig::traces`]):
//! one server span per call (a child of the client's `traceparent` when it sent a valid one)
//! with a span per phase — route, identify, limit, cache, journal, upstream — and the upstream
//! span's id sent upstream in `traceparent`, so the provider's own spans join the same trace.
//! Spans are not entered (the phases are timed from creation to drop), so none is held across
//! an await. Target `portico::trace`: the binary's OTLP layer listens to it alone.
//!
//! [`GatewayConfig::traces`]: crate::GatewayConfig::traces

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The server span of one call, named `name` (low cardinality: `GET /weather/v1`).
pub(crate) fn server(name: &str, method: &http::Method, path: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: "portico::trace",
        parent: None,
        "gateway",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
        portico.api = tracing::field::Empty,
        portico.call_id = tracing::field::Empty,
    );
    if let Some(parent) = remote_parent(headers) {
        let _ = span.set_parent(parent);
    }
    span
}

/// A phase of the current call (a child of the current span: the call's server span).
pub(crate) fn phase(enabled: bool, name: &'static str) -> Span {
    if !enabled {
        return Span::none();
    }
    match name {
        "route" => tracing::info_span!(target: "portico::trace", "route"),
        "identify" => tracing::info_span!(target: "portico::trace", "identify"),
        "limit" => tracing::info_span!(target: "portico::trace", "limit"),
        "cache" => tracing::info_span!(target: "portico::trace", "cache"),
        "journal" => tracing::info_span!(target: "portico::trace", "journal"),
        _ => tracing::info_span!(target: "portico::trace", "phase", otel.name = name),
    }
}

/// The span of the call to the upstream (all its attempts).
pub(crate) fn upstream(enabled: bool, api: &str) -> Span {
    if !enabled {
        return Span::none();
    }
    tracing::info_span!(
        target: "portico::trace",
        "upstream",
        otel.kind = "client",
        portico.api = api,
        http.response.status_code = tracing::field::Empty,
    )
}

/// The `traceparent` that names `span` (trace id, span id, sampling flag), for the upstream;
/// `None` when the span is not exported.
pub(crate) fn traceparent_of(span: &Span) -> Option<HeaderValue> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    HeaderValue::from_str(&format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())).ok()
}

/// The client's trace context from a valid W3C `traceparent`.
fn remote_parent(h: &HeaderMap) -> Option<opentelemetry::Context> {
    let v = h.get("traceparent")?.to_str().ok()?;
    let (trace, span, flags) = parse_traceparent(v)?;
    let sc = SpanContext::new(trace, span, flags, true, TraceState::default());
    Some(opentelemetry::Context::new().with_remote_span_context(sc))
}

/// `00-{32 hex trace id}-{16 hex span id}-{2 hex flags}` (version 00 or a later one read as
/// 00); all-zero ids are invalid.
fn parse_traceparent(v: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    if !crate::proxy::valid_traceparent(v) {
        return None;
    }
    let mut p = v.split('-');
    let _version = p.next()?;
    let trace = TraceId::from_hex(p.next()?).ok()?;
    let span = SpanId::from_hex(p.next()?).ok()?;
    let flags = u8::from_str_radix(p.next()?, 16).ok()?;
    Some((trace, span, TraceFlags::new(flags & 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_strictly() {
        let (t, s, f) = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert!(f.is_sampled());
        let (_, _, f) = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!f.is_sampled());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
            "",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_traces_no_span_is_made() {
        assert!(phase(false, "identify").is_none());
        assert!(traceparent_of(&upstream(false, "x")).is_none());
    }
}
