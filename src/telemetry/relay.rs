//! Per-call relay counters, kept in the bridge's own state and flushed to the shared instruments about
//! once a second and when the call ends.
//!
//! Every frame is counted (an add in the bridge's own struct). One frame in [`SAMPLE_EVERY`] per
//! direction is timed: a clock read costs ~20 ns here, two per frame would be most of this module's cost,
//! and one in 16 still gives ~190 latency samples per call-minute each way. Nothing here is shared with
//! another call; the flush takes the SDK's locks, about once a second per call.

use super::metrics::Metrics;
use opentelemetry::KeyValue;
use std::time::Duration;
use tokio::time::Instant;

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The caller's audio, Twilio → the voice model.
    ToAi = 0,
    /// The model's audio, the voice model → Twilio.
    ToCaller = 1,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::ToAi => "to_ai",
            Direction::ToCaller => "to_caller",
        }
    }
}

/// How often a call's counts reach the shared instruments (checked on timed frames).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One frame in this many, per direction, has its relay latency measured.
pub const SAMPLE_EVERY: u32 = 16;
/// Latency samples kept between flushes per direction (a flush is due long before).
const MAX_SAMPLES: usize = 1024;

/// One call's frame counts and latencies since the last flush.
#[derive(Debug)]
pub struct RelayMeter {
    frames: [u64; 2],
    /// Frames still to go, per direction, before the next one is timed (0: time the next).
    countdown: [u32; 2],
    /// Seconds from read to write of the timed frames.
    latencies: [Vec<f64>; 2],
    last_flush: Instant,
}

impl Default for RelayMeter {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl RelayMeter {
    pub fn new(now: Instant) -> Self {
        Self { frames: [0; 2], countdown: [0; 2], latencies: [Vec::new(), Vec::new()], last_flush: now }
    }

    /// Call as a message is read from the socket `direction` starts at: the read instant when the next
    /// frame that way is to be timed, else `None` (no clock read).
    #[inline]
    pub fn read(&self, direction: Direction) -> Option<Instant> {
        (self.countdown[direction as usize] == 0).then(Instant::now)
    }

    /// A frame has just been written to the other socket; `read_at` is what [`RelayMeter::read`] gave.
    #[inline]
    pub fn relayed(
        &mut self,
        direction: Direction,
        read_at: Option<Instant>,
        metrics: impl FnOnce() -> &'static Metrics,
    ) {
        let d = direction as usize;
        self.frames[d] += 1;
        let Some(read_at) = read_at else {
            self.countdown[d] = self.countdown[d].saturating_sub(1);
            return;
        };
        self.countdown[d] = SAMPLE_EVERY - 1;
        let now = Instant::now();
        if self.latencies[d].len() < MAX_SAMPLES {
            self.latencies[d].push(now.saturating_duration_since(read_at).as_secs_f64());
        }
        if now.saturating_duration_since(self.last_flush) >= FLUSH_EVERY {
            self.last_flush = now;
            self.flush(metrics());
        }
    }

    /// Frames relayed without a latency of their own (audio held while the model's socket opened).
    pub fn relayed_late(&mut self, direction: Direction, n: u64) {
        self.frames[direction as usize] += n;
    }

    /// Moves everything counted so far to the shared instruments.
    pub fn flush(&mut self, metrics: &Metrics) {
        for direction in [Direction::ToAi, Direction::ToCaller] {
            let d = direction as usize;
            let attributes = [KeyValue::new("direction", direction.label())];
            if self.frames[d] > 0 {
                metrics.frames.add(self.frames[d], &attributes);
                self.frames[d] = 0;
            }
            for &seconds in &self.latencies[d] {
                metrics.latency.record(seconds, &attributes);
            }
            self.latencies[d].clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
    use std::sync::Arc;

    fn local() -> Metrics {
        Metrics::new(SdkMeterProvider::builder(), Arc::new(ManualReader::builder().build()))
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap())
    }

    /// Relays one frame `direction`, `took` long, the way the bridge does.
    async fn frame(meter: &mut RelayMeter, direction: Direction, took: Duration, metrics: &'static Metrics) -> bool {
        let read = meter.read(direction);
        tokio::time::advance(took).await;
        let mut flushed = false;
        meter.relayed(direction, read, || {
            flushed = true;
            metrics
        });
        flushed
    }

    #[tokio::test(start_paused = true)]
    async fn counts_stay_local_until_a_second_has_passed_and_one_frame_in_sample_every_is_timed() {
        let metrics: &'static Metrics = Box::leak(Box::new(local()));
        let mut meter = RelayMeter::new(Instant::now());
        let n = 2 * SAMPLE_EVERY + 1;
        for _ in 0..n {
            assert!(!frame(&mut meter, Direction::ToAi, Duration::from_micros(300), metrics).await);
        }
        let text = metrics.prometheus_text();
        assert_eq!(line(&text, "voice_call_relay_frames_total"), None, "nothing reached the instruments yet");
        // A mark (not a frame) read while a timing was due does not use it up.
        assert!(meter.read(Direction::ToCaller).is_some());

        tokio::time::advance(FLUSH_EVERY).await;
        assert!(frame(&mut meter, Direction::ToCaller, Duration::ZERO, metrics).await, "the timed frame flushes");
        let text = metrics.prometheus_text();
        assert_eq!(line(&text, "voice_call_relay_frames_total{direction=\"to_ai\"}"), Some(&*n.to_string()));
        assert_eq!(line(&text, "voice_call_relay_frames_total{direction=\"to_caller\"}"), Some("1"));
        // Frames 1, 17 and 33 were timed: 300 µs each, in the 0.5 ms bucket, not the 0.25 ms one.
        let bucket = |le: &str| format!("voice_call_relay_latency_seconds_bucket{{direction=\"to_ai\",le=\"{le}\"}}");
        assert_eq!(line(&text, &bucket("0.00025")), Some("0"));
        assert_eq!(line(&text, &bucket("0.0005")), Some("3"));
        assert_eq!(line(&text, "voice_call_relay_latency_seconds_count{direction=\"to_caller\"}"), Some("1"));
        let sum: f64 =
            line(&text, "voice_call_relay_latency_seconds_sum{direction=\"to_ai\"}").unwrap().parse().unwrap();
        assert!((sum - 0.0009).abs() < 1e-9, "{sum}");

        // What is counted after a flush waits for the next one (or the call's end).
        meter.relayed_late(Direction::ToAi, 5);
        assert!(!frame(&mut meter, Direction::ToAi, Duration::ZERO, metrics).await);
        meter.flush(metrics);
        let text = metrics.prometheus_text();
        assert_eq!(line(&text, "voice_call_relay_frames_total{direction=\"to_ai\"}"), Some(&*(n + 6).to_string()));
        assert_eq!(line(&text, "voice_call_relay_latency_seconds_count{direction=\"to_ai\"}"), Some("3"));
    }
}
