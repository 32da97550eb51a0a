//! Observability: logs (text or JSON), traces and metrics, exported over OTLP when configured.
//!
//! - Logs go to stderr through `tracing-subscriber`, filtered by `RUST_LOG`, as text or (with
//!   `LOG_FORMAT=json`) one JSON object per line.
//! - Traces: every HTTP request has a span (MCP requests and Twilio webhooks included, its URI redacted);
//!   every call has one span for its whole life ([`calls`]). With `OTEL_EXPORTER_OTLP_ENDPOINT` set they
//!   are batched and sent over OTLP/HTTP (protobuf), whatever `RUST_LOG` says about the logs.
//! - Metrics ([`metrics`]): served as Prometheus text at `GET /metrics` ([`route`]) and, with the endpoint
//!   set, pushed over OTLP every `OTEL_METRIC_EXPORT_INTERVAL` ms (60 s by default).
//!
//! `main` calls [`init`] first thing and [`Telemetry::shutdown`] last, after the runtime has stopped, so
//! the final spans and metrics are exported (the exporters' HTTP client is a blocking one on its own
//! thread, which must not be dropped inside the async runtime).

pub mod calls;
pub mod metrics;
pub mod prometheus;
pub mod relay;
pub mod route;

pub use metrics::{Metrics, event_published, metrics};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// The providers `main` owns; flushed and shut down by [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

/// What [`init`] failed at (the process then runs without exporting; the caller logs it).
#[derive(Debug, thiserror::Error)]
#[error("OTEL_EXPORTER_OTLP_ENDPOINT: the OTLP exporter could not be built: {0}")]
pub struct InitError(String);

/// The `service.name` resource: `OTEL_SERVICE_NAME`, else `voice-call-mcp`.
fn resource() -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "voice-call-mcp".to_owned());
    Resource::builder().with_service_name(name).build()
}

/// `base/v1/traces`, unless the signal's own variable names a full URL (the exporter then uses it).
fn signal_endpoint(base: &url::Url, signal_var: &str, path: &str) -> Option<String> {
    if std::env::var(signal_var).is_ok_and(|v| !v.trim().is_empty()) {
        return None;
    }
    Some(format!("{}{path}", base.as_str().trim_end_matches('/')))
}

/// Installs the log subscriber and, with `otlp` set, the trace and metric exporters. Call once, before
/// the async runtime starts. On an exporter error, logging still works and the error is returned
/// alongside, for the caller to report.
/// Whether a log record may be written whatever `RUST_LOG` says: tungstenite's `trace` records print
/// secrets and call content — the WebSocket handshake request (`Authorization: Bearer <OpenAI key>`) and
/// every message (Twilio's `start` with the per-call token, the audio). A cap, not a level: `RUST_LOG=warn`
/// still hides tungstenite's debug lines, `RUST_LOG=trace` still shows everything else. The secrets test
/// runs the server at `trace` to keep this honest.
fn secret_safe(record: &tracing::Metadata<'_>) -> bool {
    let tungstenite = record.target().starts_with("tungstenite") || record.target().starts_with("tokio_tungstenite");
    !(tungstenite && *record.level() == tracing::Level::TRACE)
}

/// `RUST_LOG`'s filter with the [`secret_safe`] cap. The cap declares that it lets every level through,
/// so the combination keeps `RUST_LOG`'s most verbose level as its hint: without a hint the subscriber
/// would admit TRACE globally, and the `log` crate's max level (set from it at init) with it, so every
/// `trace!` that tungstenite writes per WebSocket frame would be built and offered to the subscriber —
/// about a tenth of the relay's CPU at 400 calls, for records the filter then throws away.
fn log_filter(
    env: tracing_subscriber::EnvFilter,
) -> impl tracing_subscriber::layer::Filter<tracing_subscriber::Registry> + Send + Sync {
    use tracing_subscriber::filter::FilterExt;
    env.and(tracing_subscriber::filter::filter_fn(secret_safe).with_max_level_hint(tracing::Level::TRACE))
}

pub fn init(format: LogFormat, otlp: Option<&url::Url>) -> (Telemetry, Option<InitError>) {
    let filter = log_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let (exporters, error) = match otlp.map(build_exporters).transpose() {
        Ok(e) => (e, None),
        Err(e) => (None, Some(e)),
    };
    let (tracer, meter_builder) = match exporters {
        Some((t, m)) => (Some(t), Some(m)),
        None => (None, None),
    };
    // Spans are exported at INFO and above whatever RUST_LOG keeps in the logs: `RUST_LOG=warn` must not
    // switch traces off.
    let otel = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("voice-call-mcp"))
            // No clock reads on every poll of every span's future (the call's voice task is polled per frame).
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init();
    let meter = meter_builder.map(|builder| metrics::install(builder).provider().clone());
    (Telemetry { tracer, meter }, error)
}

fn build_exporters(
    base: &url::Url,
) -> Result<(SdkTracerProvider, opentelemetry_sdk::metrics::MeterProviderBuilder), InitError> {
    let mut spans =
        opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if let Some(url) = signal_endpoint(base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/v1/traces") {
        spans = spans.with_endpoint(url);
    }
    let spans = spans.build().map_err(|e| InitError(e.to_string()))?;
    let mut points = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if let Some(url) = signal_endpoint(base, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "/v1/metrics") {
        points = points.with_endpoint(url);
    }
    let points = points.build().map_err(|e| InitError(e.to_string()))?;
    let tracer = SdkTracerProvider::builder().with_batch_exporter(spans).with_resource(resource()).build();
    // The interval comes from OTEL_METRIC_EXPORT_INTERVAL (ms), 60 s by default.
    let reader = PeriodicReader::builder(points).build();
    let meter = SdkMeterProvider::builder().with_reader(reader).with_resource(resource());
    Ok((tracer, meter))
}

impl Telemetry {
    /// Exports what is still buffered (the last spans, a final metrics push) and stops the exporters.
    /// Call after the async runtime has been dropped.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            if let Err(e) = tracer.force_flush() {
                tracing::warn!(error = %e, "the last spans could not be exported");
            }
            let _ = tracer.shutdown();
        }
        if let Some(meter) = self.meter
            && let Err(e) = meter.shutdown()
        {
            tracing::warn!(error = %e, "the last metrics could not be exported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Subscriber as _;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;

    /// The subscriber `init` builds (no OTLP), with `RUST_LOG` set to `directives`.
    fn subscriber(directives: &str) -> impl tracing::Subscriber {
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::sink).boxed();
        tracing_subscriber::registry()
            .with(fmt.with_filter(log_filter(EnvFilter::new(directives))))
            .with(None::<LevelFilter>)
    }

    #[test]
    fn the_subscriber_admits_no_more_than_rust_log_asks_for() {
        // The `log` crate's max level comes from this hint: tungstenite's per-frame `trace!` records must
        // stop at its atomic check, not be built and filtered out one by one.
        assert_eq!(subscriber("info").max_level_hint(), Some(LevelFilter::INFO));
        assert_eq!(subscriber("warn,voice_call_mcp=debug").max_level_hint(), Some(LevelFilter::DEBUG));
        assert_eq!(subscriber("trace").max_level_hint(), Some(LevelFilter::TRACE));
    }
}
