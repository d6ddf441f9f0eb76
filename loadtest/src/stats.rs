//! Measurements and their merging: HDR histograms (µs, 3 digits, up to an
//! hour), the bucket-list form workers ship them in, worker results, and
//! [`aggregate`]. Re-recording a bucket's highest equivalent value lands in
//! the same bucket, so merging shipped histograms is exact.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::track::OffsetTotals;

/// Highest recordable latency, microseconds (one hour); larger values saturate.
pub const HIST_HIGH_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_HIGH_US, 3).expect("static histogram bounds are valid")
}

/// Records `us` (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, HIST_HIGH_US));
}

/// A histogram as its non-empty buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistWire(pub Vec<(u64, u64)>);

impl HistWire {
    /// The buckets of `h`.
    pub fn from_hist(h: &Histogram<u64>) -> HistWire {
        HistWire(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these buckets into `h`.
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(v, c) in &self.0 {
            // In range by construction; a foreign value saturates instead of failing.
            if h.record_n(v.clamp(1, HIST_HIGH_US), c).is_err() {
                h.saturating_record(HIST_HIGH_US);
            }
        }
    }

    /// A fresh histogram holding these buckets.
    pub fn to_hist(&self) -> Histogram<u64> {
        let mut h = new_hist();
        self.add_to(&mut h);
        h
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|&(_, c)| c).sum()
    }
}

/// Summary of a latency histogram, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Smallest.
    pub min_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest (p100).
    pub max_us: u64,
}

impl Percentiles {
    /// Summarises `h` (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean_us: h.mean(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Delivery accounting over the measured (reading) sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Event frames received.
    pub delivered: u64,
    /// Distinct (channel, sequence) per socket received.
    pub unique: u64,
    /// Repeats.
    pub duplicates: u64,
    /// Late arrivals.
    pub out_of_order: u64,
    /// Expected but never received.
    pub lost: u64,
    /// Events whose payload was not the tool's (another publisher).
    pub foreign: u64,
    /// Sockets with at least one lost event.
    pub sockets_with_loss: u64,
}

impl Delivery {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Delivery) {
        self.delivered += o.delivered;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.lost += o.lost;
        self.foreign += o.foreign;
        self.sockets_with_loss += o.sockets_with_loss;
    }
}

/// What happened to the sockets that stopped reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowStats {
    /// Slow sockets that connected.
    pub sockets: u64,
    /// Events they had buffered when read at the end.
    pub events_read: u64,
    /// How each ended: `close_4008`, `still_open`, `reset`, ...
    pub endings: BTreeMap<String, u64>,
}

/// Most channels listed by name in [`Continuity::channels`]; the rest are
/// counted in `channels_unlisted` (their numbers are still in the totals).
pub const MAX_LISTED_CHANNELS: usize = 1000;
/// Most distinct resync offsets listed per channel.
pub const MAX_RESYNC_OFFSETS: usize = 32;

/// What one channel's sockets were told about continuity: `resync` frames
/// (how many, at which offsets) and resumes answered `recovered: false`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelContinuity {
    /// `resync` frames received on this channel (all sockets).
    pub resync_frames: u64,
    /// Frames per resync offset (the last offset declared lost).
    pub resync_offsets: BTreeMap<u64, u64>,
    /// Resumes of this channel answered `recovered: false`.
    pub not_recovered: u64,
}

impl ChannelContinuity {
    /// Adds `o` into `self`, keeping at most [`MAX_RESYNC_OFFSETS`] offsets
    /// (the frames of the others still count in `resync_frames`).
    pub fn add(&mut self, o: &ChannelContinuity) {
        self.resync_frames += o.resync_frames;
        self.not_recovered += o.not_recovered;
        for (&off, &n) in &o.resync_offsets {
            if self.resync_offsets.len() < MAX_RESYNC_OFFSETS
                || self.resync_offsets.contains_key(&off)
            {
                *self.resync_offsets.entry(off).or_default() += n;
            }
        }
    }
}

/// Continuity by offset (contract section 6), per kind of channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuity {
    /// `room`, `user`, `broadcast` -> totals over sockets.
    pub by_kind: BTreeMap<String, OffsetTotals>,
    /// Channels that got a `resync` or a `recovered: false`, by wire name.
    pub channels: BTreeMap<String, ChannelContinuity>,
    /// Such channels not listed (past [`MAX_LISTED_CHANNELS`]).
    pub channels_unlisted: u64,
}

impl Continuity {
    /// Sum over every kind.
    pub fn totals(&self) -> OffsetTotals {
        let mut t = OffsetTotals::default();
        for v in self.by_kind.values() {
            t.add(v);
        }
        t
    }

    /// Adds one channel's notice.
    pub fn add_channel(&mut self, name: &str, c: &ChannelContinuity) {
        if let Some(e) = self.channels.get_mut(name) {
            e.add(c);
        } else if self.channels.len() < MAX_LISTED_CHANNELS {
            let mut e = ChannelContinuity::default();
            e.add(c);
            self.channels.insert(name.to_owned(), e);
        } else {
            self.channels_unlisted += 1;
        }
    }

    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Continuity) {
        for (k, v) in &o.by_kind {
            self.by_kind.entry(k.clone()).or_default().add(v);
        }
        for (k, v) in &o.channels {
            self.add_channel(k, v);
        }
        self.channels_unlisted += o.channels_unlisted;
    }
}

/// Reconnects of resume mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconnectStats {
    /// Reconnect attempts (each TCP + upgrade + welcome + subscribe).
    pub attempts: u64,
    /// Attempts that resumed the socket (welcome and room `ok` read).
    pub resumed: u64,
    /// Failed attempts by kind (`tcp_econnrefused`, `http_503`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Sockets still down (between a close and a resume) when the run stopped.
    pub down_at_end: u64,
    /// Time from a socket's close to its resume, microseconds.
    pub close_to_resumed: HistWire,
}

impl ReconnectStats {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &ReconnectStats) {
        self.attempts += o.attempts;
        self.resumed += o.resumed;
        merge_counts(&mut self.failures, &o.failures);
        self.down_at_end += o.down_at_end;
        let mut h = self.close_to_resumed.to_hist();
        o.close_to_resumed.add_to(&mut h);
        self.close_to_resumed = HistWire::from_hist(&h);
    }
}

/// Adds counts of `b` into `a`.
pub fn merge_counts(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// One worker's final numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Worker index.
    pub worker: u64,
    /// Base sockets assigned to it.
    pub planned: u64,
    /// Sockets that completed connect (+ subscribe), churn included.
    pub connected: u64,
    /// Failed connects by kind (`http_429`, `close_4001`, `timeout_tcp`, ...).
    pub connect_errors: BTreeMap<String, u64>,
    /// Sockets lost during the run by kind (`close_4008`, `reset`, ...).
    pub disconnects: BTreeMap<String, u64>,
    /// Time from TCP connect start to `welcome`.
    pub connect_latency: HistWire,
    /// Time from `subscribe` sent to `ok`.
    pub subscribe_latency: HistWire,
    /// End-to-end event latency (publisher send to socket receive).
    pub latency: HistWire,
    /// End-to-end latency per rate step.
    pub step_latency: Vec<HistWire>,
    /// Loss, duplicate and order accounting.
    pub delivery: Delivery,
    /// The non-reading sockets.
    pub slow: SlowStats,
    /// Churning sockets opened.
    pub churn_opened: u64,
    /// Churning sockets closed by the tool after their hold time.
    pub churn_closed: u64,
    /// Most sockets open at once.
    pub peak_open: u64,
    /// Unix micros when the first base socket started connecting (0 = none).
    pub ramp_first_us: u64,
    /// Unix micros when the last base socket finished connecting.
    pub ramp_last_us: u64,
    /// Peak resident memory of the worker process, KiB.
    pub peak_rss_kb: u64,
    /// Why the worker stopped: `coordinator`, `deadline` or `stdin_closed`.
    pub stopped_by: String,
    /// Continuity by offset: loss, duplicates, order, resyncs, recoveries.
    #[serde(default)]
    pub continuity: Continuity,
    /// Reconnects (resume mode).
    #[serde(default)]
    pub reconnect: ReconnectStats,
    /// End-to-end latency of the events replayed after a recovered resume.
    #[serde(default)]
    pub replay_latency: HistWire,
    /// CPU time (user + system) of the worker process, seconds.
    #[serde(default)]
    pub cpu_s: f64,
}

/// A worker's one-second report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Worker index.
    pub worker: u64,
    /// When the interval was cut, unix micros (the worker's clock).
    pub at_us: u64,
    /// Sockets open now.
    pub open: u64,
    /// Sockets connected so far.
    pub connected: u64,
    /// Base sockets that finished connecting, either way.
    pub settled: u64,
    /// Connect errors so far.
    pub connect_errors: u64,
    /// Disconnects so far.
    pub disconnects: u64,
    /// Latency of events received in this interval.
    pub interval: HistWire,
    /// Resident memory now, KiB.
    pub rss_kb: u64,
    /// Sockets resumed after a close so far (resume mode).
    #[serde(default)]
    pub reconnects: u64,
    /// Sockets down now, between a close and their resume.
    #[serde(default)]
    pub down: u64,
    /// CPU time of the worker so far, seconds.
    #[serde(default)]
    pub cpu_s: f64,
}

/// All workers' results folded into one.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Workers that reported.
    pub workers: usize,
    /// Base sockets planned.
    pub planned: u64,
    /// Sockets connected.
    pub connected: u64,
    /// Connect errors by kind.
    pub connect_errors: BTreeMap<String, u64>,
    /// Disconnects by kind.
    pub disconnects: BTreeMap<String, u64>,
    /// Connect latency.
    pub connect_latency: Histogram<u64>,
    /// Subscribe latency.
    pub subscribe_latency: Histogram<u64>,
    /// Event latency.
    pub latency: Histogram<u64>,
    /// Event latency per step.
    pub step_latency: Vec<Histogram<u64>>,
    /// Delivery accounting.
    pub delivery: Delivery,
    /// Slow sockets.
    pub slow: SlowStats,
    /// Churn sockets opened.
    pub churn_opened: u64,
    /// Churn sockets closed.
    pub churn_closed: u64,
    /// Sum of per-worker peaks (an upper bound of the global peak).
    pub peak_open: u64,
    /// Earliest ramp start, unix micros (0 = none).
    pub ramp_first_us: u64,
    /// Latest ramp end, unix micros.
    pub ramp_last_us: u64,
    /// Sum of worker peak resident memory, KiB.
    pub peak_rss_kb: u64,
    /// Continuity by offset.
    pub continuity: Continuity,
    /// Reconnects.
    pub reconnect: ReconnectStats,
    /// Latency of replayed events.
    pub replay_latency: Histogram<u64>,
    /// CPU seconds of all workers.
    pub cpu_s: f64,
}

impl Aggregate {
    /// Connects completed per second over the ramp.
    pub fn connect_rate(&self) -> f64 {
        let span = self.ramp_last_us.saturating_sub(self.ramp_first_us) as f64 / 1e6;
        if span <= 0.0 {
            0.0
        } else {
            self.connected.saturating_sub(self.churn_opened) as f64 / span
        }
    }

    /// Total connect errors.
    pub fn connect_error_total(&self) -> u64 {
        self.connect_errors.values().sum()
    }
}

/// Folds worker results into one: histograms merged bucket by bucket,
/// counters summed, error kinds merged by name.
pub fn aggregate(results: &[WorkerResult]) -> Aggregate {
    let mut a = Aggregate {
        workers: results.len(),
        planned: 0,
        connected: 0,
        connect_errors: BTreeMap::new(),
        disconnects: BTreeMap::new(),
        connect_latency: new_hist(),
        subscribe_latency: new_hist(),
        latency: new_hist(),
        step_latency: Vec::new(),
        delivery: Delivery::default(),
        slow: SlowStats::default(),
        churn_opened: 0,
        churn_closed: 0,
        peak_open: 0,
        ramp_first_us: 0,
        ramp_last_us: 0,
        peak_rss_kb: 0,
        continuity: Continuity::default(),
        reconnect: ReconnectStats::default(),
        replay_latency: new_hist(),
        cpu_s: 0.0,
    };
    for r in results {
        a.planned += r.planned;
        a.connected += r.connected;
        merge_counts(&mut a.connect_errors, &r.connect_errors);
        merge_counts(&mut a.disconnects, &r.disconnects);
        r.connect_latency.add_to(&mut a.connect_latency);
        r.subscribe_latency.add_to(&mut a.subscribe_latency);
        r.latency.add_to(&mut a.latency);
        while a.step_latency.len() < r.step_latency.len() {
            a.step_latency.push(new_hist());
        }
        for (h, w) in a.step_latency.iter_mut().zip(&r.step_latency) {
            w.add_to(h);
        }
        a.delivery.add(&r.delivery);
        a.slow.sockets += r.slow.sockets;
        a.slow.events_read += r.slow.events_read;
        merge_counts(&mut a.slow.endings, &r.slow.endings);
        a.churn_opened += r.churn_opened;
        a.churn_closed += r.churn_closed;
        a.peak_open += r.peak_open;
        if r.ramp_first_us > 0 && (a.ramp_first_us == 0 || r.ramp_first_us < a.ramp_first_us) {
            a.ramp_first_us = r.ramp_first_us;
        }
        a.ramp_last_us = a.ramp_last_us.max(r.ramp_last_us);
        a.peak_rss_kb += r.peak_rss_kb;
        a.continuity.add(&r.continuity);
        a.reconnect.add(&r.reconnect);
        r.replay_latency.add_to(&mut a.replay_latency);
        a.cpu_s += r.cpu_s;
    }
    a
}

/// CPU time (user + system, all threads) of this process, seconds, from
/// `/proc/self/stat` (Linux; 0 elsewhere). Clock ticks are USER_HZ, which
/// Linux fixes at 100 for this interface.
pub fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat_cpu(&s))
        .unwrap_or(0.0)
}

/// utime + stime of a `/proc/PID/stat` line, seconds.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after the last `)`; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Resident memory of this process, KiB (Linux; 0 elsewhere).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_exactly() {
        let mut h = new_hist();
        for v in [1, 10, 100, 1000, 123_456, 9_999_999, 5] {
            record(&mut h, v);
        }
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        let back = HistWire::from_hist(&h).to_hist();
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
    }

    #[test]
    fn cpu_time_comes_from_the_stat_line() {
        let line = "4242 (gate way) (x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100";
        assert_eq!(parse_stat_cpu(line), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
        // This process has run a little by now.
        assert!(cpu_s() >= 0.0);
    }

    #[test]
    fn continuity_merges_kinds_channels_and_bounds_the_list() {
        let mut a = Continuity::default();
        let mut rs = ChannelContinuity {
            resync_frames: 2,
            ..ChannelContinuity::default()
        };
        rs.resync_offsets.insert(57, 2);
        a.add_channel("room:a", &rs);
        a.by_kind.insert(
            "room".into(),
            OffsetTotals {
                lost: 3,
                lost_announced: 1,
                ..OffsetTotals::default()
            },
        );
        let mut b = a.clone();
        b.by_kind.insert(
            "user".into(),
            OffsetTotals {
                lost: 1,
                ..OffsetTotals::default()
            },
        );
        a.add(&b);
        assert_eq!(a.channels["room:a"].resync_frames, 4);
        assert_eq!(a.channels["room:a"].resync_offsets[&57], 4);
        let t = a.totals();
        assert_eq!((t.lost, t.lost_announced, t.lost_silent()), (7, 2, 5));
        for i in 0..(MAX_LISTED_CHANNELS + 5) {
            a.add_channel(&format!("room:x{i}"), &rs);
        }
        assert_eq!(a.channels.len(), MAX_LISTED_CHANNELS);
        assert_eq!(a.channels_unlisted, 6);
    }

    #[test]
    fn percentiles_of_empty_are_zero() {
        assert_eq!(Percentiles::of(&new_hist()), Percentiles::default());
    }
}
