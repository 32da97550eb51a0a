//! The Prometheus text exposition format (0.0.4), written from what an OpenTelemetry pull reader collected.
//!
//! `opentelemetry-prometheus` is not used: its README steers new projects to OTLP, and it drags in the
//! `prometheus` crate and its protobuf stack for what is a page of text. The rules followed here are the
//! format's own and OpenTelemetry's Prometheus compatibility spec:
//! - names keep `[a-zA-Z0-9_:]`, anything else becomes `_`; the unit becomes a suffix (`s` → `_seconds`,
//!   `By` → `_bytes`; `{call}`-style annotations add nothing); monotonic sums end in `_total`;
//! - non-monotonic sums and gauges are `gauge`s; histograms are `_bucket{le=…}` (cumulative, ending with
//!   `+Inf`), `_sum` and `_count`;
//! - `HELP` escapes `\` and newlines; label values escape `\`, `"` and newlines;
//! - one `# HELP`/`# TYPE` pair per family, its samples together, series sorted so the output is stable.

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its samples are `(name suffix, labels, value)`.
#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    samples: Vec<(String, String)>,
}

/// Writes every metric in `metrics` as Prometheus text.
pub fn encode(metrics: &ResourceMetrics) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            add_metric(&mut families, metric);
        }
    }
    let mut out = String::with_capacity(4096);
    for (name, family) in &families {
        if !family.help.is_empty() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
        }
        let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
        let mut samples: Vec<&(String, String)> = family.samples.iter().collect();
        // Stable order: by series (name suffix and labels); bucket order within a series is kept.
        samples.sort_by(|a, b| series_key(&a.0).cmp(series_key(&b.0)));
        for (series, value) in samples {
            let _ = writeln!(out, "{series} {value}");
        }
    }
    out
}

/// The part of a sample line that identifies its series, minus the `le` label (so buckets keep their
/// cumulative order, which `sort_by` preserves being stable).
fn series_key(series: &str) -> &str {
    match series.find("le=\"") {
        Some(i) => &series[..i],
        None => series,
    }
}

fn add_metric(families: &mut BTreeMap<String, Family>, metric: &Metric) {
    let base = metric_name(metric.name(), metric.unit());
    match metric.data() {
        AggregatedMetrics::F64(data) => add_data(families, &base, metric.description(), data, fmt_f64),
        AggregatedMetrics::U64(data) => add_data(families, &base, metric.description(), data, |v| v.to_string()),
        AggregatedMetrics::I64(data) => add_data(families, &base, metric.description(), data, |v| v.to_string()),
    }
}

fn add_data<T: Copy>(
    families: &mut BTreeMap<String, Family>,
    base: &str,
    help: &str,
    data: &MetricData<T>,
    fmt: impl Fn(T) -> String,
) {
    fn family<'f>(families: &'f mut BTreeMap<String, Family>, name: String, help: &str, kind: Kind) -> &'f mut Family {
        families.entry(name).or_insert_with(|| Family { help: help.to_owned(), kind, samples: Vec::new() })
    }
    match data {
        MetricData::Gauge(g) => {
            let f = family(families, base.to_owned(), help, Kind::Gauge);
            for p in g.data_points() {
                f.samples.push((format!("{base}{}", labels(p.attributes(), None)), fmt(p.value())));
            }
        }
        MetricData::Sum(s) => {
            let (name, kind) = if s.is_monotonic() {
                (with_suffix(base, "_total"), Kind::Counter)
            } else {
                (base.to_owned(), Kind::Gauge)
            };
            let f = family(families, name.clone(), help, kind);
            for p in s.data_points() {
                f.samples.push((format!("{name}{}", labels(p.attributes(), None)), fmt(p.value())));
            }
        }
        MetricData::Histogram(h) => {
            let f = family(families, base.to_owned(), help, Kind::Histogram);
            for p in h.data_points() {
                let mut cumulative = 0u64;
                let counts: Vec<u64> = p.bucket_counts().collect();
                for (i, bound) in p.bounds().enumerate() {
                    cumulative += counts.get(i).copied().unwrap_or(0);
                    let le = fmt_f64(bound);
                    f.samples
                        .push((format!("{base}_bucket{}", labels(p.attributes(), Some(&le))), cumulative.to_string()));
                }
                f.samples
                    .push((format!("{base}_bucket{}", labels(p.attributes(), Some("+Inf"))), p.count().to_string()));
                f.samples.push((format!("{base}_sum{}", labels(p.attributes(), None)), fmt(p.sum())));
                f.samples.push((format!("{base}_count{}", labels(p.attributes(), None)), p.count().to_string()));
            }
        }
        // Not produced by any instrument this server registers; skipped rather than misrepresented.
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// `{a="x",b="y"}` sorted by name, with `le` last when given; empty when there are no labels.
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> =
        attributes.map(|kv| (sanitize(kv.key.as_str()), kv.value.as_str().into_owned())).collect();
    pairs.sort();
    if let Some(le) = le {
        pairs.push(("le".to_owned(), le.to_owned()));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push('}');
    out
}

/// The Prometheus name of an OpenTelemetry metric: sanitized, with its unit as a suffix.
pub(crate) fn metric_name(name: &str, unit: &str) -> String {
    let name = sanitize(name);
    match unit_suffix(unit) {
        Some(suffix) => with_suffix(&name, &format!("_{suffix}")),
        None => name,
    }
}

fn with_suffix(name: &str, suffix: &str) -> String {
    if name.ends_with(suffix) { name.to_owned() } else { format!("{name}{suffix}") }
}

fn unit_suffix(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "1" => "ratio",
        // `{call}`, `{frame}`: annotations, which Prometheus names leave out; anything else unknown too.
        _ => return None,
    })
}

/// Keeps `[a-zA-Z0-9_:]`, replaces anything else with `_`; a leading digit gets a `_` before it.
fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }));
    out
}

fn escape_help(s: &str) -> String {
    s.replace('\\', r"\\").replace('\n', r"\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// A float as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, or Rust's shortest round-trip decimal.
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".to_owned() } else { "-Inf".to_owned() }
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::reader::MetricReader as _;
    use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
    use std::sync::Arc;

    /// Records through a real SDK pipeline, then encodes what a pull reader collects.
    fn collect(record: impl FnOnce(&opentelemetry::metrics::Meter)) -> String {
        let reader = Arc::new(ManualReader::builder().build());
        let provider =
            SdkMeterProvider::builder().with_reader(super::super::metrics::SharedReader(reader.clone())).build();
        record(&provider.meter("test"));
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).unwrap();
        encode(&rm)
    }

    #[test]
    fn counters_get_total_and_escaped_help_and_labels() {
        let text = collect(|m| {
            let c =
                m.u64_counter("calls.ended").with_unit("{call}").with_description("Calls \\ ended\nby status").build();
            c.add(2, &[KeyValue::new("status", "com\"pleted\\\n")]);
            c.add(1, &[KeyValue::new("status", "busy")]);
        });
        assert_eq!(
            text,
            "# HELP calls_ended_total Calls \\\\ ended\\nby status\n\
             # TYPE calls_ended_total counter\n\
             calls_ended_total{status=\"busy\"} 1\n\
             calls_ended_total{status=\"com\\\"pleted\\\\\\n\"} 2\n"
        );
    }

    #[test]
    fn up_down_counters_and_gauges_are_gauges() {
        let text = collect(|m| {
            let g = m.i64_up_down_counter("calls.active").with_description("Live calls").build();
            g.add(3, &[]);
            g.add(-1, &[]);
            m.f64_gauge("temp-erature").with_unit("s").build().record(1.5, &[KeyValue::new("a.b", "x")]);
        });
        assert_eq!(
            text,
            "# HELP calls_active Live calls\n# TYPE calls_active gauge\ncalls_active 2\n\
             # TYPE temp_erature_seconds gauge\ntemp_erature_seconds{a_b=\"x\"} 1.5\n"
        );
    }

    #[test]
    fn histograms_have_cumulative_buckets_sum_and_count() {
        let text = collect(|m| {
            let h = m.f64_histogram("relay.latency").with_unit("s").with_boundaries(vec![0.25, 1.0]).build();
            for v in [0.125, 0.5, 0.75, 2.0] {
                h.record(v, &[KeyValue::new("direction", "to_ai")]);
            }
        });
        assert_eq!(
            text,
            "# TYPE relay_latency_seconds histogram\n\
             relay_latency_seconds_bucket{direction=\"to_ai\",le=\"0.25\"} 1\n\
             relay_latency_seconds_bucket{direction=\"to_ai\",le=\"1\"} 3\n\
             relay_latency_seconds_bucket{direction=\"to_ai\",le=\"+Inf\"} 4\n\
             relay_latency_seconds_count{direction=\"to_ai\"} 4\n\
             relay_latency_seconds_sum{direction=\"to_ai\"} 3.375\n"
        );
    }

    #[test]
    fn names_are_sanitized_and_suffixed_once() {
        assert_eq!(metric_name("voice_call.relay.latency", "s"), "voice_call_relay_latency_seconds");
        assert_eq!(metric_name("x_seconds", "s"), "x_seconds");
        assert_eq!(metric_name("9lives", "{call}"), "_9lives");
        assert_eq!(fmt_f64(f64::INFINITY), "+Inf");
        assert_eq!(fmt_f64(0.00005), "0.00005");
        assert_eq!(fmt_f64(2.0), "2");
    }
}
