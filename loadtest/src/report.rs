//! The run's report: one [`Report`] from the aggregated worker results, the
//! publisher's outcome and the per-second series, written as `result.json`
//! (the contract for scripts), `summary.md` and SVG charts (for people) into
//! the output directory. Secrets never reach any of them.

mod markdown;
pub mod svg;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::publish::PublishOutcome;
use crate::scenario::{Plan, Scenario};
use crate::stats::{self, ChannelContinuity, Percentiles, SlowStats, WorkerResult};
use crate::track::OffsetTotals;

/// One second of the run, as seen by the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run began.
    pub t_s: f64,
    /// `ramp`, `load`, `grace` or `stop`.
    pub phase: String,
    /// Sockets open.
    pub open: u64,
    /// Sockets connected so far.
    pub connected: u64,
    /// Connect errors so far.
    pub connect_errors: u64,
    /// Disconnects so far.
    pub disconnects: u64,
    /// Events received in this second.
    pub events: u64,
    /// Latency p50 of this second's events.
    pub p50_us: u64,
    /// p90.
    pub p90_us: u64,
    /// p99.
    pub p99_us: u64,
    /// p99.9.
    pub p999_us: u64,
    /// Max.
    pub max_us: u64,
    /// Resident memory of all workers, KiB.
    pub worker_rss_kb: u64,
    /// Sockets resumed after a close in this second (the reconnect curve).
    #[serde(default)]
    pub reconnects: u64,
    /// Sockets down (between a close and their resume) at the end of it.
    #[serde(default)]
    pub down: u64,
    /// CPU the workers used in this second, in cores.
    #[serde(default)]
    pub worker_cpu_cores: f64,
}

/// The machine the run happened on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// Total memory, KiB.
    pub memory_kib: u64,
    /// Kernel release.
    pub kernel: String,
    /// Soft open-files limit.
    pub open_files_limit: Option<u64>,
}

impl Machine {
    /// Reads this machine's facts.
    pub fn current() -> Machine {
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0);
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_kib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            open_files_limit: crate::scenario::open_files_limit(),
        }
    }
}

/// How the run went overall.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Stopped by Ctrl-C / SIGTERM / a failing worker.
    pub interrupted: bool,
    /// The ramp hit its timeout.
    pub ramp_timed_out: bool,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Ramp (spawn to all-ready), seconds.
    pub ramp_s: f64,
    /// Load phase, seconds.
    pub load_s: f64,
    /// Grace phase, seconds.
    pub grace_s: f64,
    /// Remarks about the run itself.
    pub notes: Vec<String>,
    /// What went wrong under load (errors, loss, ...); empty = clean run.
    pub problems: Vec<String>,
}

/// Socket numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SocketsReport {
    /// Base sockets planned.
    pub planned: u64,
    /// Sockets connected (base + churn).
    pub connected: u64,
    /// Connects that failed.
    pub failed: u64,
    /// Base sockets connected per second over the ramp.
    pub connect_rate_per_s: f64,
    /// Sum of per-worker peaks of open sockets.
    pub peak_open: u64,
    /// TCP connect start to `welcome`.
    pub connect_latency: Percentiles,
    /// `subscribe` to `ok`.
    pub subscribe_latency: Percentiles,
    /// Connect errors by kind.
    pub connect_errors: BTreeMap<String, u64>,
    /// Server-side or network disconnects during the run, by kind.
    pub disconnects: BTreeMap<String, u64>,
}

/// Event numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventsReport {
    /// Events the publisher got accepted.
    pub published: u64,
    /// Events whose publish failed.
    pub publish_failed: u64,
    /// Publish failures by kind.
    pub publish_errors: BTreeMap<String, u64>,
    /// Ticks skipped because the publisher could not keep up.
    pub publish_behind: u64,
    /// Accepted events per second of publishing.
    pub publish_rate: f64,
    /// Publishes answered with an offset (FCALL gw_publish, HTTP 202 `offset`).
    #[serde(default)]
    pub publish_offsets: u64,
    /// FCALL replies of 0: the channel keeps no history.
    #[serde(default)]
    pub publish_no_history: u64,
    /// Sends repeated after Redis refused them for now (MOVED, ASK,
    /// CLUSTERDOWN, a failing-over master); each event is published once.
    #[serde(default)]
    pub publish_retried: u64,
    /// Distinct events received per second of the load phase.
    pub delivered_per_s: f64,
    /// Delivery accounting (received, unique, duplicates, out of order, lost,
    /// foreign, sockets with loss), flattened into this object in JSON.
    #[serde(flatten)]
    pub delivery: stats::Delivery,
}

/// One rate step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Target rate, events/s.
    pub rate: f64,
    /// Seconds the step ran.
    pub seconds: f64,
    /// Events published in the step.
    pub published: u64,
    /// Events of the step the publisher could not send in time.
    pub behind: u64,
    /// Deliveries measured for the step's events.
    pub delivered: u64,
    /// Deliveries per second.
    pub delivered_per_s: f64,
    /// Latency of the step's events.
    pub latency: Percentiles,
}

/// Churn numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChurnReport {
    /// Target connects per second.
    pub target_rate: f64,
    /// Churning sockets opened.
    pub opened: u64,
    /// Churning sockets closed after their hold.
    pub closed: u64,
    /// Opened per second of the load phase.
    pub achieved_rate: f64,
}

/// Continuity by offset (contract section 6): what the gateway numbered,
/// what a socket received, what it was told it lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContinuityReport {
    /// Totals over every socket and channel (flattened into this object).
    #[serde(flatten)]
    pub totals: OffsetTotals,
    /// Lost without a `resync` or `recovered: false` (contract breach).
    pub lost_silent: u64,
    /// The same numbers per kind of channel: `room`, `user`, `broadcast`.
    pub by_kind: BTreeMap<String, OffsetTotals>,
    /// Channels that got a `resync` or a `recovered: false`: frames, the
    /// offsets resynced to, resumes not recovered.
    pub channels: BTreeMap<String, ChannelContinuity>,
    /// Such channels beyond the listed ones.
    pub channels_unlisted: u64,
    /// End-to-end latency of replayed events (publish to receipt, so it
    /// includes the time the socket was down).
    pub replay_latency: Percentiles,
}

/// Reconnects of resume mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconnectReport {
    /// Sockets reconnect after a close (false: accounting only).
    pub reconnect: bool,
    /// Backoff unit, seconds.
    pub backoff_min_s: f64,
    /// Longest backoff window, seconds.
    pub backoff_max_s: f64,
    /// Closes by kind (each close of each socket).
    pub closes: BTreeMap<String, u64>,
    /// Reconnect attempts.
    pub attempts: u64,
    /// Attempts that resumed a socket.
    pub resumed: u64,
    /// Failed attempts by kind.
    pub failures: BTreeMap<String, u64>,
    /// Sockets still down when the run stopped.
    pub down_at_end: u64,
    /// Time from a close to the socket's resume.
    pub close_to_resumed: Percentiles,
    /// Most resumes in one second (the curve is `series[].reconnects`).
    pub peak_per_s: u64,
    /// Seconds with at least one resume.
    pub seconds_with_reconnects: u64,
}

/// The load generator's own footprint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientReport {
    /// Worker processes.
    pub workers: u64,
    /// Threads per worker.
    pub worker_threads: u64,
    /// Sum of worker peak resident memory, KiB.
    pub peak_rss_kib: u64,
    /// That divided by the peak of open sockets, bytes.
    pub rss_per_socket_bytes: u64,
    /// CPU time (user + system, /proc) of the coordinator and every worker, seconds.
    #[serde(default)]
    pub cpu_s: f64,
    /// Of which the workers (the sockets).
    #[serde(default)]
    pub workers_cpu_s: f64,
    /// Of which the coordinator (publisher, progress, report).
    #[serde(default)]
    pub coordinator_cpu_s: f64,
    /// `cpu_s` per event frame received, microseconds.
    #[serde(default)]
    pub cpu_us_per_event: f64,
    /// `workers_cpu_s` per event frame received, microseconds.
    #[serde(default)]
    pub workers_cpu_us_per_event: f64,
    /// `cpu_s` over the wall time: cores the load tester kept busy on average.
    #[serde(default)]
    pub cores_avg: f64,
    /// Busiest second of the workers, cores.
    #[serde(default)]
    pub workers_cores_peak: f64,
}

/// Per-worker summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerBrief {
    /// Index.
    pub worker: u64,
    /// Base sockets.
    pub planned: u64,
    /// Connected.
    pub connected: u64,
    /// Peak open.
    pub peak_open: u64,
    /// Peak RSS, KiB.
    pub peak_rss_kib: u64,
    /// Why it stopped.
    pub stopped_by: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Tool name and version.
    pub tool: String,
    /// Run name.
    pub name: String,
    /// Scenario.
    pub scenario: Scenario,
    /// Command line (secrets redacted).
    pub command: String,
    /// Start time, unix seconds.
    pub started_unix: u64,
    /// Machine facts.
    pub machine: Machine,
    /// The plan (without secrets).
    pub plan: Plan,
    /// Phases, notes, problems.
    pub outcome: Outcome,
    /// Sockets.
    pub sockets: SocketsReport,
    /// Events.
    pub events: EventsReport,
    /// End-to-end latency of all measured events.
    pub latency: Percentiles,
    /// Per rate step (one entry for a constant rate).
    pub steps: Vec<StepReport>,
    /// Churn, when the run churned.
    pub churn: Option<ChurnReport>,
    /// Slow sockets, when there were any.
    pub slow: Option<SlowStats>,
    /// Continuity by offset, when the gateway sent offsets or resume was on.
    #[serde(default)]
    pub continuity: Option<ContinuityReport>,
    /// Reconnects, in resume mode.
    #[serde(default)]
    pub reconnect: Option<ReconnectReport>,
    /// The tool's own footprint.
    pub client: ClientReport,
    /// Per-second series.
    pub series: Vec<Sample>,
    /// Per worker.
    pub workers: Vec<WorkerBrief>,
}

/// What [`build`] needs.
pub struct Inputs<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// Command line.
    pub command: String,
    /// Start, unix seconds.
    pub started_unix: u64,
    /// Wall seconds.
    pub wall_s: f64,
    /// Ramp seconds.
    pub ramp_s: f64,
    /// Load seconds.
    pub load_s: f64,
    /// Grace seconds.
    pub grace_s: f64,
    /// Interrupted.
    pub interrupted: bool,
    /// Ramp timed out.
    pub ramp_timed_out: bool,
    /// Notes so far.
    pub notes: Vec<String>,
    /// Worker results.
    pub results: &'a [WorkerResult],
    /// Publisher outcome.
    pub publish: Option<&'a PublishOutcome>,
    /// Series.
    pub series: Vec<Sample>,
    /// CPU seconds of the coordinator process.
    pub coordinator_cpu_s: f64,
}

fn per_s(n: u64, s: f64) -> f64 {
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

/// Builds the report from a run's pieces.
pub fn build(i: Inputs<'_>) -> Report {
    let agg = stats::aggregate(i.results);
    let plan = i.plan;
    let failed = agg.connect_error_total();
    let load_s = if i.load_s > 0.0 {
        i.load_s
    } else {
        plan.duration.as_secs_f64()
    };

    let events = EventsReport {
        published: i.publish.map_or(0, |p| p.sent),
        publish_failed: i.publish.map_or(0, |p| p.failed),
        publish_errors: i.publish.map(|p| p.errors.clone()).unwrap_or_default(),
        publish_behind: i.publish.map_or(0, |p| p.behind),
        publish_rate: i.publish.map_or(0.0, |p| per_s(p.sent, p.seconds)),
        publish_offsets: i.publish.map_or(0, |p| p.offsets),
        publish_no_history: i.publish.map_or(0, |p| p.no_history),
        publish_retried: i.publish.map_or(0, |p| p.retried),
        delivered_per_s: per_s(agg.delivery.unique, i.publish.map_or(load_s, |p| p.seconds)),
        delivery: agg.delivery.clone(),
    };

    let steps: Vec<StepReport> = match i.publish {
        Some(p) => p
            .steps
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let lat = agg
                    .step_latency
                    .get(k)
                    .map(Percentiles::of)
                    .unwrap_or_default();
                StepReport {
                    rate: s.rate,
                    seconds: s.seconds,
                    published: s.due,
                    behind: s.behind,
                    delivered: lat.count,
                    delivered_per_s: per_s(lat.count, s.seconds),
                    latency: lat,
                }
            })
            .collect(),
        None => Vec::new(),
    };

    let churn = plan.churn.as_ref().map(|c| ChurnReport {
        target_rate: c.rate,
        opened: agg.churn_opened,
        closed: agg.churn_closed,
        // Churn runs from go until the workers stop, grace included.
        achieved_rate: per_s(agg.churn_opened, load_s + i.grace_s),
    });
    let slow = (plan.slow_share > 0.0).then(|| agg.slow.clone());

    let totals = agg.continuity.totals();
    let continuity = (plan.resume.is_some() || totals.socket_channels > 0 || totals.resyncs > 0)
        .then(|| ContinuityReport {
            lost_silent: totals.lost_silent(),
            totals: totals.clone(),
            by_kind: agg.continuity.by_kind.clone(),
            channels: agg.continuity.channels.clone(),
            channels_unlisted: agg.continuity.channels_unlisted,
            replay_latency: Percentiles::of(&agg.replay_latency),
        });
    let reconnecting = plan.resume.as_ref().is_some_and(|r| r.reconnect);
    let reconnect = plan.resume.as_ref().map(|r| ReconnectReport {
        reconnect: r.reconnect,
        backoff_min_s: r.backoff_min.as_secs_f64(),
        backoff_max_s: r.backoff_max.as_secs_f64(),
        closes: agg.disconnects.clone(),
        attempts: agg.reconnect.attempts,
        resumed: agg.reconnect.resumed,
        failures: agg.reconnect.failures.clone(),
        down_at_end: agg.reconnect.down_at_end,
        close_to_resumed: Percentiles::of(&agg.reconnect.close_to_resumed.to_hist()),
        peak_per_s: i.series.iter().map(|s| s.reconnects).max().unwrap_or(0),
        seconds_with_reconnects: i.series.iter().filter(|s| s.reconnects > 0).count() as u64,
    });

    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!("{failed} connects failed"));
    }
    let disconnects: u64 = agg.disconnects.values().sum();
    if disconnects > 0 && !reconnecting {
        problems.push(format!(
            "{disconnects} sockets were disconnected during the run"
        ));
    }
    if agg.reconnect.down_at_end > 0 {
        problems.push(format!(
            "{} sockets were still reconnecting when the run stopped",
            agg.reconnect.down_at_end
        ));
    }
    if let Some(c) = &continuity {
        let t = &c.totals;
        if c.lost_silent > 0 {
            problems.push(format!(
                "{} events lost by offset without a resync or recovered:false",
                c.lost_silent
            ));
        }
        if t.lost_announced > 0 {
            problems.push(format!(
                "{} events lost by offset, announced by resync / recovered:false",
                t.lost_announced
            ));
        }
        if t.duplicates > 0 {
            problems.push(format!("{} duplicate offsets", t.duplicates));
        }
        if t.out_of_order > 0 {
            problems.push(format!("{} out-of-order offsets", t.out_of_order));
        }
        if t.not_recovered > 0 {
            problems.push(format!(
                "{} resumes answered recovered:false",
                t.not_recovered
            ));
        }
        if t.anomalies > 0 {
            problems.push(format!(
                "{} continuity anomalies (recovered into another epoch, offsets going back)",
                t.anomalies
            ));
        }
    }
    if events.delivery.lost > 0 {
        problems.push(format!(
            "{} events lost (on {} sockets)",
            events.delivery.lost, events.delivery.sockets_with_loss
        ));
    }
    if events.delivery.duplicates > 0 {
        problems.push(format!("{} duplicate events", events.delivery.duplicates));
    }
    if events.delivery.out_of_order > 0 {
        problems.push(format!(
            "{} out-of-order events",
            events.delivery.out_of_order
        ));
    }
    if events.publish_failed > 0 {
        problems.push(format!("{} publishes failed", events.publish_failed));
    }
    if events.publish_behind > 0 {
        problems.push(format!(
            "publisher fell behind the target rate by {} events",
            events.publish_behind
        ));
    }
    if i.ramp_timed_out {
        problems.push("ramp timed out".into());
    }
    if i.results.len() < plan.workers as usize {
        problems.push(format!(
            "{} of {} workers reported",
            i.results.len(),
            plan.workers
        ));
    }

    let peak_open = agg.peak_open.max(1);
    let cpu_s = agg.cpu_s + i.coordinator_cpu_s;
    let per_event = |cpu: f64| {
        if agg.delivery.delivered > 0 {
            cpu * 1e6 / agg.delivery.delivered as f64
        } else {
            0.0
        }
    };
    Report {
        tool: format!("gateway-loadtest {}", env!("CARGO_PKG_VERSION")),
        name: plan.name.clone(),
        scenario: plan.scenario,
        command: i.command,
        started_unix: i.started_unix,
        machine: Machine::current(),
        plan: plan.clone(),
        outcome: Outcome {
            interrupted: i.interrupted,
            ramp_timed_out: i.ramp_timed_out,
            wall_s: i.wall_s,
            ramp_s: i.ramp_s,
            load_s: i.load_s,
            grace_s: i.grace_s,
            notes: i.notes,
            problems,
        },
        sockets: SocketsReport {
            planned: agg.planned,
            connected: agg.connected,
            failed,
            connect_rate_per_s: agg.connect_rate(),
            peak_open: agg.peak_open,
            connect_latency: Percentiles::of(&agg.connect_latency),
            subscribe_latency: Percentiles::of(&agg.subscribe_latency),
            connect_errors: agg.connect_errors.clone(),
            disconnects: agg.disconnects.clone(),
        },
        events,
        latency: Percentiles::of(&agg.latency),
        steps,
        churn,
        slow,
        continuity,
        reconnect,
        client: ClientReport {
            workers: plan.workers,
            worker_threads: plan.worker_threads,
            peak_rss_kib: agg.peak_rss_kb,
            rss_per_socket_bytes: agg.peak_rss_kb * 1024 / peak_open,
            cpu_s,
            workers_cpu_s: agg.cpu_s,
            coordinator_cpu_s: i.coordinator_cpu_s,
            cpu_us_per_event: per_event(cpu_s),
            workers_cpu_us_per_event: per_event(agg.cpu_s),
            cores_avg: if i.wall_s > 0.0 {
                cpu_s / i.wall_s
            } else {
                0.0
            },
            workers_cores_peak: i
                .series
                .iter()
                .map(|s| s.worker_cpu_cores)
                .fold(0.0, f64::max),
        },
        series: i.series,
        workers: i
            .results
            .iter()
            .map(|r| WorkerBrief {
                worker: r.worker,
                planned: r.planned,
                connected: r.connected,
                peak_open: r.peak_open,
                peak_rss_kib: r.peak_rss_kb,
                stopped_by: r.stopped_by.clone(),
            })
            .collect(),
    }
}

/// Writes `result.json`, `summary.md` and the charts into `dir`.
pub fn write_all(report: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("result.json"), json)?;
    std::fs::write(dir.join("summary.md"), markdown::render(report))?;
    std::fs::write(dir.join("latency.svg"), svg::latency_chart(&report.series))?;
    std::fs::write(dir.join("sockets.svg"), svg::sockets_chart(&report.series))?;
    std::fs::write(
        dir.join("throughput.svg"),
        svg::throughput_chart(&report.series),
    )?;
    std::fs::write(
        dir.join("reconnects.svg"),
        svg::reconnects_chart(&report.series),
    )?;
    Ok(())
}

/// Human number: 1234567 -> 1.23M.
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Microseconds as a short duration.
pub fn human_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}
