//! The per-second series behind the charts, bucketed by when each worker cut
//! its interval, not by when its line arrived (a busy process would otherwise
//! show an empty second, then a double one). A bucket closes two seconds
//! after it ends; a worker silent for a bucket keeps its last gauges.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::report::Sample;
use crate::stats::{self, Percentiles, Progress};

/// One worker's gauges at some moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Sockets open.
    pub open: u64,
    /// Connected so far.
    pub connected: u64,
    /// Connect errors so far.
    pub connect_errors: u64,
    /// Disconnects so far.
    pub disconnects: u64,
    /// Resident memory, KiB.
    pub rss_kb: u64,
    /// Sockets resumed after a close so far.
    pub reconnects: u64,
    /// Sockets down now (between a close and their resume).
    pub down: u64,
    /// CPU time so far, milliseconds.
    pub cpu_ms: u64,
}

impl Gauges {
    fn of(p: &Progress) -> Gauges {
        Gauges {
            open: p.open,
            connected: p.connected,
            connect_errors: p.connect_errors,
            disconnects: p.disconnects,
            rss_kb: p.rss_kb,
            reconnects: p.reconnects,
            down: p.down,
            cpu_ms: (p.cpu_s * 1000.0) as u64,
        }
    }

    fn add(&mut self, o: &Gauges) {
        self.open += o.open;
        self.connected += o.connected;
        self.connect_errors += o.connect_errors;
        self.disconnects += o.disconnects;
        self.rss_kb += o.rss_kb;
        self.reconnects += o.reconnects;
        self.down += o.down;
        self.cpu_ms += o.cpu_ms;
    }
}

struct Bucket {
    hist: Histogram<u64>,
    gauges: Vec<Option<Gauges>>,
}

/// Seconds a bucket stays open for late lines.
const LAG_S: u64 = 2;

/// Per-second samples of a run.
pub struct Timeline {
    start_us: u64,
    buckets: BTreeMap<u64, Bucket>,
    /// Last known gauges per worker, carried into buckets it skipped.
    carried: Vec<Gauges>,
    /// Latest gauges per worker, for the live line.
    latest: Vec<Gauges>,
    /// `(first bucket, phase name)`, ascending.
    phases: Vec<(u64, String)>,
    /// Sum of the gauges at the last closed bucket (for per-second deltas).
    prev: Gauges,
    next: u64,
    samples: Vec<Sample>,
}

impl Timeline {
    /// A timeline starting at `start_us` (unix micros) for `workers` workers.
    pub fn new(start_us: u64, workers: usize) -> Timeline {
        Timeline {
            start_us,
            buckets: BTreeMap::new(),
            carried: vec![Gauges::default(); workers],
            latest: vec![Gauges::default(); workers],
            phases: vec![(0, "ramp".into())],
            prev: Gauges::default(),
            next: 0,
            samples: Vec::new(),
        }
    }

    fn bucket_of(&self, at_us: u64) -> u64 {
        at_us.saturating_sub(self.start_us) / 1_000_000
    }

    /// Marks the start of a phase at `now_us`.
    pub fn phase(&mut self, name: &str, now_us: u64) {
        let b = self.bucket_of(now_us);
        if self.phases.last().is_some_and(|(at, _)| *at == b) {
            self.phases.pop();
        }
        self.phases.push((b, name.to_owned()));
    }

    /// Adds a worker's progress line.
    pub fn progress(&mut self, p: &Progress) {
        let w = p.worker as usize;
        if w >= self.latest.len() {
            return;
        }
        let gauges = Gauges::of(p);
        self.latest[w] = gauges;
        // The interval ends at `at_us`; its middle decides the bucket. A line
        // for an already closed bucket goes into the oldest open one.
        let b = self
            .bucket_of(p.at_us.saturating_sub(500_000))
            .max(self.next);
        let workers = self.latest.len();
        let bucket = self.buckets.entry(b).or_insert_with(|| Bucket {
            hist: stats::new_hist(),
            gauges: vec![None; workers],
        });
        p.interval.add_to(&mut bucket.hist);
        bucket.gauges[w] = Some(gauges);
    }

    fn phase_at(&self, b: u64) -> String {
        self.phases
            .iter()
            .rev()
            .find(|(at, _)| *at <= b)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    }

    fn close(&mut self, b: u64) {
        let bucket = self.buckets.remove(&b);
        let mut sum = Gauges::default();
        for (w, carried) in self.carried.iter_mut().enumerate() {
            if let Some(Some(g)) = bucket.as_ref().map(|bk| bk.gauges[w]) {
                *carried = g;
            }
            sum.add(carried);
        }
        let p = bucket
            .as_ref()
            .map(|bk| Percentiles::of(&bk.hist))
            .unwrap_or_default();
        self.samples.push(Sample {
            t_s: (b + 1) as f64,
            phase: self.phase_at(b),
            open: sum.open,
            connected: sum.connected,
            connect_errors: sum.connect_errors,
            disconnects: sum.disconnects,
            events: p.count,
            p50_us: p.p50_us,
            p90_us: p.p90_us,
            p99_us: p.p99_us,
            p999_us: p.p999_us,
            max_us: p.max_us,
            worker_rss_kb: sum.rss_kb,
            reconnects: sum.reconnects.saturating_sub(self.prev.reconnects),
            down: sum.down,
            worker_cpu_cores: sum.cpu_ms.saturating_sub(self.prev.cpu_ms) as f64 / 1000.0,
        });
        self.prev = sum;
    }

    /// Closes every bucket that ended at least [`LAG_S`] seconds before
    /// `now_us`; returns the newest closed sample.
    pub fn tick(&mut self, now_us: u64) -> Option<&Sample> {
        let now_b = self.bucket_of(now_us);
        while self.next + LAG_S <= now_b {
            self.close(self.next);
            self.next += 1;
        }
        self.samples.last()
    }

    /// Sum of every worker's latest gauges.
    pub fn live(&self) -> Gauges {
        let mut g = Gauges::default();
        for l in &self.latest {
            g.add(l);
        }
        g
    }

    /// Closes the remaining buckets and returns the series.
    pub fn finish(mut self, now_us: u64) -> Vec<Sample> {
        // The bucket `now_us` falls in is partial: kept only if it has lines.
        let last = self
            .buckets
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.bucket_of(now_us).saturating_sub(1));
        while self.next <= last {
            self.close(self.next);
            self.next += 1;
        }
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::HistWire;

    fn line(worker: u64, at_s: f64, open: u64, latencies: &[u64]) -> Progress {
        let mut h = stats::new_hist();
        for &l in latencies {
            stats::record(&mut h, l);
        }
        Progress {
            worker,
            at_us: 1_000_000_000 + (at_s * 1e6) as u64,
            open,
            interval: HistWire::from_hist(&h),
            ..Progress::default()
        }
    }

    #[test]
    fn lines_land_in_the_second_they_describe_even_when_late() {
        let start = 1_000_000_000;
        let mut t = Timeline::new(start, 2);
        // Worker 0 reports seconds 1 and 2 on time; worker 1's line for
        // second 1 arrives after worker 0's line for second 2.
        t.progress(&line(0, 1.0, 10, &[100, 200]));
        t.progress(&line(0, 2.0, 20, &[300]));
        t.progress(&line(1, 1.05, 5, &[400]));
        t.phase("load", start + 1_500_000);
        // Worker 1 says nothing about second 2: its gauges carry over.
        let s = t.finish(start + 2_000_000);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].events, s[0].open, s[0].phase.as_str()),
            (3, 15, "ramp")
        );
        assert_eq!(
            (s[1].events, s[1].open, s[1].phase.as_str()),
            (1, 25, "load")
        );
        assert_eq!(s[1].t_s, 2.0);
    }

    #[test]
    fn reconnects_and_cpu_become_per_second_deltas() {
        let start = 1_000_000_000;
        let mut t = Timeline::new(start, 2);
        let mut a = line(0, 1.0, 10, &[]);
        (a.reconnects, a.down, a.cpu_s) = (5, 2, 0.5);
        let mut b = line(1, 1.0, 10, &[]);
        (b.reconnects, b.down, b.cpu_s) = (1, 0, 0.25);
        t.progress(&a);
        t.progress(&b);
        let mut a2 = line(0, 2.0, 12, &[]);
        (a2.reconnects, a2.down, a2.cpu_s) = (9, 0, 1.5);
        t.progress(&a2);
        let s = t.finish(start + 2_000_000);
        assert_eq!((s[0].reconnects, s[0].down), (6, 2));
        assert_eq!((s[1].reconnects, s[1].down), (4, 0));
        assert!((s[0].worker_cpu_cores - 0.75).abs() < 1e-9);
        assert!((s[1].worker_cpu_cores - 1.0).abs() < 1e-9);
    }

    #[test]
    fn buckets_close_after_the_lag_and_gaps_become_zero_samples() {
        let start = 1_000_000_000;
        let mut t = Timeline::new(start, 1);
        t.progress(&line(0, 1.0, 1, &[10]));
        assert!(
            t.tick(start + 1_500_000).is_none(),
            "second 0 is still open for late lines"
        );
        assert_eq!(t.tick(start + 2_000_000).map(|s| s.events), Some(1));
        let s = t.tick(start + 5_000_000).unwrap();
        assert_eq!((s.events, s.open, s.t_s), (0, 1, 4.0));
        assert_eq!(t.live().open, 1);
    }
}
