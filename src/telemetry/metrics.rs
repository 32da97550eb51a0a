//! The server's metrics: OpenTelemetry instruments, read on demand for `GET /metrics` and pushed over OTLP
//! when an endpoint is configured.
//!
//! The SDK's synchronous instruments take a lock per attribute set on every `add`/`record`, shared by
//! every call. So nothing on the audio path touches them per frame: the bridge counts frames and keeps
//! its latencies in its own fields ([`super::relay::RelayMeter`]) and flushes them here about once a
//! second, and `events.published` — bumped under the event bus's lock on every event — is one relaxed
//! atomic read by an observable counter when metrics are collected.
//!
//! `runtime.tasks` (tokio's count of live tasks) is read when metrics are collected on the server's
//! runtime, as `GET /metrics` is; the OTLP push collects on its own thread, outside any runtime, and so
//! leaves it out. It is there to tell a task leak from a busy moment (the soak benchmark samples it).

use super::prometheus;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    Counter, Histogram, Meter, MeterProvider as _, ObservableCounter, ObservableGauge, UpDownCounter,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Latency buckets, seconds: a loopback relay sits around 0.1 ms, a loaded one at a few ms.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

/// Events appended to the log. A plain atomic: the bus bumps it under its own lock, once per event.
static EVENTS_PUBLISHED: AtomicU64 = AtomicU64::new(0);

/// Called by the event bus for every event it publishes. One relaxed increment.
#[inline]
pub fn event_published() {
    EVENTS_PUBLISHED.fetch_add(1, Ordering::Relaxed);
}

/// Every instrument the server records into.
#[derive(Debug)]
pub struct Metrics {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    pub(crate) calls_active: UpDownCounter<i64>,
    pub(crate) calls_ended: Counter<u64>,
    pub(crate) sse_subscribers: UpDownCounter<i64>,
    pub(crate) events_dropped: Counter<u64>,
    pub(crate) store_rows_lost: Counter<u64>,
    pub(crate) frames: Counter<u64>,
    pub(crate) latency: Histogram<f64>,
    pub(crate) webhook_rejections: Counter<u64>,
    _events_published: ObservableCounter<u64>,
    _runtime_tasks: ObservableGauge<u64>,
}

/// The pull reader shared between the provider (which owns its readers) and `/metrics` (which collects).
#[derive(Debug, Clone)]
pub(crate) struct SharedReader(pub(crate) Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics. Before [`super::init`] (tests, the library used on its own) they are still
/// counted and served at `/metrics`, just not pushed anywhere.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(SdkMeterProvider::builder(), Arc::new(ManualReader::builder().build())))
}

/// Installs the process's metrics with `builder`'s readers (the OTLP push) added to the pull reader.
/// Called first thing in `main`; if metrics were already in use, those stay and `builder` is dropped.
pub(crate) fn install(builder: opentelemetry_sdk::metrics::MeterProviderBuilder) -> &'static Metrics {
    let mut builder = Some(builder);
    METRICS.get_or_init(|| {
        let builder = builder.take().unwrap_or_else(SdkMeterProvider::builder);
        Metrics::new(builder, Arc::new(ManualReader::builder().build()))
    })
}

impl Metrics {
    pub(crate) fn new(builder: opentelemetry_sdk::metrics::MeterProviderBuilder, reader: Arc<ManualReader>) -> Self {
        let provider = builder.with_reader(SharedReader(reader.clone())).build();
        let meter = provider.meter("voice-call-mcp");
        Self::with_meter(provider, reader, &meter)
    }

    fn with_meter(provider: SdkMeterProvider, reader: Arc<ManualReader>, m: &Meter) -> Self {
        Self {
            calls_active: m
                .i64_up_down_counter("voice_call.calls.active")
                .with_unit("{call}")
                .with_description("Calls placed and not yet ended.")
                .build(),
            calls_ended: m
                .u64_counter("voice_call.calls.ended")
                .with_unit("{call}")
                .with_description("Calls that ended, by final status.")
                .build(),
            sse_subscribers: m
                .i64_up_down_counter("voice_call.sse.subscribers")
                .with_unit("{subscriber}")
                .with_description("Open /events streams.")
                .build(),
            events_dropped: m
                .u64_counter("voice_call.events.dropped")
                .with_unit("{event}")
                .with_description("Events a follower (SSE stream or MCP session) lost by falling behind.")
                .build(),
            store_rows_lost: m
                .u64_counter("voice_call.store.rows_lost")
                .with_unit("{row}")
                .with_description(
                    "Events, call records and transcript lines the database could not save (a full disk, an I/O error).",
                )
                .build(),
            frames: m
                .u64_counter("voice_call.relay.frames")
                .with_unit("{frame}")
                .with_description("Audio frames relayed, by direction (to_ai, to_caller).")
                .build(),
            latency: m
                .f64_histogram("voice_call.relay.latency")
                .with_unit("s")
                .with_description("Time from an audio frame read off one socket to its write to the other.")
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build(),
            webhook_rejections: m
                .u64_counter("voice_call.webhook.rejections")
                .with_unit("{request}")
                .with_description("Twilio webhook and media-stream requests refused, by route and reason.")
                .build(),
            _events_published: m
                .u64_observable_counter("voice_call.events.published")
                .with_unit("{event}")
                .with_description("Events appended to the event log.")
                .with_callback(|o| o.observe(EVENTS_PUBLISHED.load(Ordering::Relaxed), &[]))
                .build(),
            _runtime_tasks: m
                .u64_observable_gauge("voice_call.runtime.tasks")
                .with_unit("{task}")
                .with_description("Tasks alive on the server's async runtime (observed when collected on it).")
                .with_callback(|o| {
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let tasks = u64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(u64::MAX);
                        o.observe(tasks, &[]);
                    }
                })
                .build(),
            provider,
            reader,
        }
    }

    /// Everything, as Prometheus text.
    pub fn prometheus_text(&self) -> String {
        let mut rm = ResourceMetrics::default();
        if let Err(e) = self.reader.collect(&mut rm) {
            tracing::warn!(error = %e, "metrics could not be collected");
        }
        prometheus::encode(&rm)
    }

    pub(crate) fn provider(&self) -> &SdkMeterProvider {
        &self.provider
    }

    pub(crate) fn call_started(&self) {
        self.calls_active.add(1, &[]);
    }

    pub(crate) fn call_ended(&self, status: &str) {
        self.calls_active.add(-1, &[]);
        self.calls_ended.add(1, &[KeyValue::new("status", status.to_owned())]);
    }

    pub fn sse_subscriber_opened(&self) {
        self.sse_subscribers.add(1, &[]);
    }

    pub fn sse_subscriber_closed(&self) {
        self.sse_subscribers.add(-1, &[]);
    }

    pub fn events_dropped(&self, n: u64) {
        self.events_dropped.add(n, &[]);
    }

    pub fn store_rows_lost(&self, n: u64) {
        self.store_rows_lost.add(n, &[]);
    }

    pub(crate) fn webhook_rejected(&self, route: &str, reason: &'static str) {
        self.webhook_rejections.add(1, &[KeyValue::new("route", route.to_owned()), KeyValue::new("reason", reason)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Metrics {
        Metrics::new(SdkMeterProvider::builder(), Arc::new(ManualReader::builder().build()))
    }

    #[tokio::test]
    async fn the_runtime_s_live_tasks_are_a_gauge_when_collected_on_the_runtime() {
        let metrics = fresh();
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks: Vec<_> = (0..3).map(|_| tokio::spawn(stop.clone().cancelled_owned())).collect();
        let text = metrics.prometheus_text();
        assert!(text.contains("# TYPE voice_call_runtime_tasks gauge\n"), "{text}");
        assert!(text.contains("\nvoice_call_runtime_tasks 3\n"), "{text}");
        stop.cancel();
        for t in tasks {
            let _ = t.await;
        }
        assert!(metrics.prometheus_text().contains("\nvoice_call_runtime_tasks 0\n"));
    }

    #[test]
    fn outside_a_runtime_the_task_gauge_is_left_out() {
        assert!(!fresh().prometheus_text().contains("voice_call_runtime_tasks"));
    }
}
