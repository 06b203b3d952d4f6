//! Telemetry for every reco binary: a `tracing` subscriber writing plain or JSON logs, and OpenTelemetry traces and
//! metrics (counters such as `reco.dynamodb.read_units`) exported over OTLP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; a collector can turn the metrics into Prometheus or CloudWatch. W3C trace context crosses process
//! boundaries in HTTP/2 headers: [`inject`] on the way out, [`extract`] on the way in.
//!
//! ```text
//!   gateway span ──inject──▶ traceparent header ──extract──▶ feature span (child)
//! ```

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags, flattened into every binary's command line.
#[derive(Clone, Debug, clap::Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "RECO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax (e.g. `info,reco_gateway=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

/// Set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built (bad endpoint, ...).
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps telemetry alive; dropping it flushes and shuts down the exporters.
#[must_use = "dropping the handle shuts telemetry down"]
pub struct TelemetryHandle {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryHandle {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown failed: {error}");
        }
        if let Some(meters) = self.meters.take()
            && let Err(error) = meters.shutdown()
        {
            eprintln!("metric exporter shutdown failed: {error}");
        }
    }
}

/// Installs the global subscriber and propagator. A second call in one process (tests, `reco up`) keeps the first
/// subscriber and returns a handle that does nothing.
pub fn init(
    service_name: &'static str,
    args: &TelemetryArgs,
) -> Result<TelemetryHandle, TelemetryError> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&args.log_filter).map_err(|source| TelemetryError::Filter {
        filter: args.log_filter.clone(),
        source,
    })?;

    let (provider, meters) = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let resource = Resource::builder().with_service_name(service_name).build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()?;
        (
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(spans)
                    .with_resource(resource.clone())
                    .build(),
            ),
            Some(
                SdkMeterProvider::builder()
                    .with_periodic_exporter(metrics)
                    .with_resource(resource)
                    .build(),
            ),
        )
    } else {
        (None, None)
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)));

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let installed = match args.log_format {
        LogFormat::Plain => registry.with(tracing_subscriber::fmt::layer()).try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init(),
    };
    if installed.is_err() {
        // Already set up by an earlier call in this process: keep that one.
        if let Some(p) = provider {
            let _ = p.shutdown();
        }
        if let Some(m) = meters {
            let _ = m.shutdown();
        }
        return Ok(TelemetryHandle {
            provider: None,
            meters: None,
        });
    }
    if let Some(p) = &provider {
        global::set_tracer_provider(p.clone());
    }
    if let Some(m) = &meters {
        global::set_meter_provider(m.clone());
    }
    Ok(TelemetryHandle { provider, meters })
}

/// Writes the current span's trace context into outgoing headers (`traceparent`, `tracestate`) through `set`.
pub fn inject(set: impl FnMut(&str, String)) {
    let cx = tracing::Span::current().context();
    let mut injector = FnInjector(set);
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut injector));
}

struct FnInjector<F>(F);

impl<F: FnMut(&str, String)> Injector for FnInjector<F> {
    fn set(&mut self, key: &str, value: String) {
        (self.0)(key, value)
    }
}

/// Makes `span` a child of the trace context found in incoming headers, if any.
pub fn extract_into(headers: &http::HeaderMap, span: &tracing::Span) {
    let cx = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_survives_a_hop() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let mut incoming = http::HeaderMap::new();
        incoming.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&incoming)));
        let mut out = std::collections::HashMap::new();
        global::get_text_map_propagator(|p| {
            p.inject_context(
                &cx,
                &mut FnInjector(|k: &str, v: String| {
                    out.insert(k.to_string(), v);
                }),
            )
        });
        assert_eq!(
            out.get("traceparent").map(String::as_str),
            incoming.get("traceparent").and_then(|v| v.to_str().ok())
        );
    }
}
