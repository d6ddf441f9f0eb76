//! Aggregation of several workers' results into one report: histograms merge
//! bucket by bucket, loss / duplicate / order counts and error kinds add up,
//! and the report lists what went wrong and writes its files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gateway_loadtest::publish::PublishOutcome;
use gateway_loadtest::report::{self, Inputs, Sample};
use gateway_loadtest::scenario::{Plan, Scenario, Settings};
use gateway_loadtest::stats::{
    self, ChannelContinuity, Continuity, Delivery, HistWire, ReconnectStats, WorkerResult,
    aggregate,
};
use gateway_loadtest::track::{OffsetTracker, PositionKind, SeqTracker};

fn hist_of(values: impl IntoIterator<Item = u64>) -> HistWire {
    let mut h = stats::new_hist();
    for v in values {
        stats::record(&mut h, v);
    }
    HistWire::from_hist(&h)
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A worker whose sockets saw the given sequences on one channel each,
/// with the channel's last published sequence `last`.
fn worker(id: u64, latencies: std::ops::Range<u64>, sockets: &[&[u64]], last: u64) -> WorkerResult {
    let mut d = Delivery::default();
    for seqs in sockets {
        let mut t = SeqTracker::default();
        for &s in *seqs {
            t.observe(s);
        }
        let lost = t.lost(Some(1), Some(last), &[]);
        d.delivered += seqs.len() as u64;
        d.unique += t.unique();
        d.duplicates += t.duplicates();
        d.out_of_order += t.out_of_order();
        d.lost += lost;
        d.sockets_with_loss += u64::from(lost > 0);
    }
    WorkerResult {
        worker: id,
        planned: sockets.len() as u64,
        connected: sockets.len() as u64,
        latency: hist_of(latencies),
        connect_latency: hist_of([1000, 2000]),
        delivery: d,
        ramp_first_us: 1_000_000 + id,
        ramp_last_us: 2_000_000 + id,
        peak_open: sockets.len() as u64,
        peak_rss_kb: 1024,
        stopped_by: "coordinator".into(),
        ..WorkerResult::default()
    }
}

#[test]
fn histograms_merge_exactly_across_workers() {
    let a = worker(0, 1..1001, &[], 0); // 1..=1000 us
    let b = worker(1, 1001..2001, &[], 0); // 1001..=2000 us
    let agg = aggregate(&[a, b]);
    assert_eq!(agg.latency.len(), 2000);
    assert_eq!(agg.latency.max(), agg.latency.highest_equivalent(2000));
    // The median of 1..=2000 is 1000, within the histogram's 3 digits.
    let p50 = agg.latency.value_at_quantile(0.5);
    assert!((999..=1001).contains(&p50), "p50 {p50}");
    let p99 = agg.latency.value_at_quantile(0.99);
    assert!((1979..=1981).contains(&p99), "p99 {p99}");
    assert_eq!(agg.connect_latency.len(), 4);
}

#[test]
fn loss_duplicates_and_order_add_up() {
    // Worker 0: one clean socket, one that missed 3 and saw 2 twice.
    let w0 = worker(0, 1..10, &[&[1, 2, 3, 4, 5], &[1, 2, 2, 4, 5]], 5);
    // Worker 1: one socket got 4 before 3 and never saw 5 (tail loss).
    let w1 = worker(1, 1..10, &[&[1, 2, 4, 3]], 5);
    let agg = aggregate(&[w0, w1]);
    assert_eq!(agg.delivery.delivered, 14);
    assert_eq!(agg.delivery.unique, 5 + 4 + 4);
    assert_eq!(agg.delivery.duplicates, 1);
    assert_eq!(agg.delivery.out_of_order, 1);
    assert_eq!(agg.delivery.lost, 2);
    assert_eq!(agg.delivery.sockets_with_loss, 2);
    assert_eq!(agg.connected, 3);
    assert_eq!(agg.ramp_first_us, 1_000_000);
    assert_eq!(agg.ramp_last_us, 2_000_001);
}

#[test]
fn error_kinds_and_step_histograms_merge_by_name_and_index() {
    let mut a = worker(0, 1..2, &[], 0);
    a.connect_errors = counts(&[("http_429", 3), ("timeout_tcp", 1)]);
    a.disconnects = counts(&[("close_4008", 2)]);
    a.step_latency = vec![hist_of([10, 20]), hist_of([30])];
    a.slow.endings = counts(&[("close_4008", 5)]);
    let mut b = worker(1, 1..2, &[], 0);
    b.connect_errors = counts(&[("http_429", 2), ("close_1013", 1)]);
    b.step_latency = vec![hist_of([40]), hist_of([50]), hist_of([60, 70, 80])];
    b.slow.endings = counts(&[("close_4008", 1), ("still_open", 1)]);
    let agg = aggregate(&[a, b]);
    assert_eq!(
        agg.connect_errors,
        counts(&[("close_1013", 1), ("http_429", 5), ("timeout_tcp", 1)])
    );
    assert_eq!(agg.connect_error_total(), 7);
    assert_eq!(agg.disconnects, counts(&[("close_4008", 2)]));
    assert_eq!(
        agg.step_latency.iter().map(|h| h.len()).collect::<Vec<_>>(),
        vec![3, 2, 3]
    );
    assert_eq!(
        agg.slow.endings,
        counts(&[("close_4008", 6), ("still_open", 1)])
    );
}

fn test_plan(out: PathBuf) -> Plan {
    let s = Settings {
        secret: Some("s".into()),
        api_key: Some("k".into()),
        sockets: Some(3),
        out: Some(out),
        ..Settings::default()
    };
    Plan::build(Some(Scenario::Fanout), s, false, &|_| None).unwrap()
}

#[test]
fn the_report_names_problems_and_writes_its_files() {
    let dir = std::env::temp_dir().join(format!("lt-report-{}", std::process::id()));
    let plan = test_plan(dir.clone());
    let mut w0 = worker(0, 100..200, &[&[1, 2, 3, 4, 5], &[1, 2, 2, 4, 5]], 5);
    w0.connect_errors = counts(&[("http_503", 1)]);
    let w1 = worker(1, 150..250, &[&[1, 2, 3, 4, 5]], 5);
    let publish = PublishOutcome {
        sent: 5,
        seconds: 1.0,
        ..PublishOutcome::default()
    };
    let series: Vec<Sample> = (1..=3)
        .map(|i| Sample {
            t_s: i as f64,
            phase: "load".into(),
            open: 3,
            events: 5,
            p50_us: 150,
            p99_us: 240,
            ..Sample::default()
        })
        .collect();
    let r = report::build(Inputs {
        plan: &plan,
        command: "gateway-loadtest fanout".into(),
        started_unix: 1,
        wall_s: 3.0,
        ramp_s: 0.1,
        load_s: 1.0,
        grace_s: 0.5,
        interrupted: false,
        ramp_timed_out: false,
        notes: vec![],
        results: &[w0, w1],
        publish: Some(&publish),
        series,
        coordinator_cpu_s: 0.5,
    });
    assert_eq!(r.sockets.failed, 1);
    assert_eq!(r.events.delivery.lost, 1);
    assert_eq!(r.events.delivery.duplicates, 1);
    assert_eq!(r.events.delivery.unique, 14);
    // result.json keeps the delivery counts directly under "events" (scripts read them there).
    let json = serde_json::to_value(&r.events).unwrap();
    assert_eq!(
        (json["lost"].as_u64(), json["unique"].as_u64()),
        (Some(1), Some(14))
    );
    let back: gateway_loadtest::report::EventsReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, r.events);
    assert_eq!(r.latency.count, 200);
    assert!(
        r.outcome
            .problems
            .iter()
            .any(|p| p.contains("connects failed"))
    );
    assert!(r.outcome.problems.iter().any(|p| p.contains("lost")));
    assert!(r.outcome.problems.iter().any(|p| p.contains("duplicate")));

    report::write_all(&r, &dir).unwrap();
    for f in [
        "result.json",
        "summary.md",
        "latency.svg",
        "sockets.svg",
        "throughput.svg",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let back: report::Report =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(back.events, r.events);
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("problems found") && md.contains("`http_503` 1"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One worker whose sockets resumed across a reconnect: socket A recovered
/// (replayed 4..6), socket B was told recovered:false after 2, then resynced.
fn resuming_worker(id: u64) -> WorkerResult {
    let mut a = OffsetTracker::default();
    a.position(0, Some("e"), PositionKind::Start);
    for o in 1..=3 {
        a.event(o);
    }
    a.position(6, Some("e"), PositionKind::Resumed(Some(true)));
    for o in 4..=8 {
        a.event(o);
    }
    let mut b = OffsetTracker::default();
    b.position(0, Some("e"), PositionKind::Start);
    b.event(1);
    b.event(2);
    b.position(5, Some("e"), PositionKind::Resumed(Some(false)));
    b.event(6);
    b.resync(7, Some("e"));
    b.event(8);
    let mut c = Continuity::default();
    let room = c.by_kind.entry("room".into()).or_default();
    room.add(&a.finish(Some(8)));
    room.add(&b.finish(Some(8)));
    let mut notice = ChannelContinuity {
        resync_frames: 1,
        not_recovered: 1,
        ..ChannelContinuity::default()
    };
    notice.resync_offsets.insert(7, 1);
    c.add_channel("room:lt-0", &notice);
    let mut w = worker(id, 1..100, &[&[1, 2, 3, 4, 5, 6, 7, 8]], 8);
    w.delivery.delivered = 1000;
    w.continuity = c;
    w.disconnects = counts(&[("close_1012", 2)]);
    w.reconnect = ReconnectStats {
        attempts: 3,
        resumed: 2,
        failures: counts(&[("tcp_econnrefused", 1)]),
        down_at_end: 0,
        close_to_resumed: hist_of([100_000, 300_000]),
    };
    w.replay_latency = hist_of([200_000, 250_000, 400_000]);
    w.cpu_s = 0.75;
    w
}

#[test]
fn resume_runs_report_continuity_reconnects_and_client_cpu() {
    let dir = std::env::temp_dir().join(format!("lt-resume-report-{}", std::process::id()));
    let s = Settings {
        secret: Some("s".into()),
        api_key: Some("k".into()),
        sockets: Some(2),
        resume: Some(true),
        out: Some(dir.clone()),
        ..Settings::default()
    };
    let plan = Plan::build(Some(Scenario::Fanout), s, false, &|_| None).unwrap();
    let series: Vec<Sample> = [0u64, 3, 1, 0]
        .iter()
        .enumerate()
        .map(|(i, &r)| Sample {
            t_s: i as f64 + 1.0,
            phase: "load".into(),
            reconnects: r,
            worker_cpu_cores: 0.1 * i as f64,
            ..Sample::default()
        })
        .collect();
    let publish = PublishOutcome {
        sent: 8,
        offsets: 8,
        seconds: 1.0,
        ..PublishOutcome::default()
    };
    let r = report::build(Inputs {
        plan: &plan,
        command: "gateway-loadtest fanout --resume".into(),
        started_unix: 1,
        wall_s: 4.0,
        ramp_s: 0.1,
        load_s: 1.0,
        grace_s: 0.5,
        interrupted: false,
        ramp_timed_out: false,
        notes: vec![],
        results: &[resuming_worker(0), resuming_worker(1)],
        publish: Some(&publish),
        series,
        coordinator_cpu_s: 0.5,
    });
    let c = r.continuity.as_ref().expect("continuity section");
    // Per worker: A lost nothing; B lost 3, 4, 5 (announced by recovered:false)
    // and 7 (announced by the resync).
    assert_eq!(
        (c.totals.lost, c.totals.lost_announced, c.lost_silent),
        (8, 8, 0)
    );
    assert_eq!(
        (c.totals.recovered, c.totals.not_recovered, c.totals.resyncs),
        (2, 2, 2)
    );
    assert_eq!(c.totals.replayed, 6);
    assert_eq!(c.channels["room:lt-0"].resync_offsets[&7], 2);
    assert_eq!(c.replay_latency.count, 6);
    let rc = r.reconnect.as_ref().expect("reconnect section");
    assert_eq!(
        (
            rc.attempts,
            rc.resumed,
            rc.peak_per_s,
            rc.seconds_with_reconnects
        ),
        (6, 4, 3, 2)
    );
    assert_eq!(rc.closes, counts(&[("close_1012", 4)]));
    assert_eq!(rc.failures, counts(&[("tcp_econnrefused", 2)]));
    assert_eq!(rc.close_to_resumed.count, 4);
    // Closes are expected in resume mode; announced loss and recovered:false are not.
    let problems = r.outcome.problems.join("; ");
    assert!(!problems.contains("disconnected"), "{problems}");
    assert!(problems.contains("announced"), "{problems}");
    assert!(problems.contains("recovered:false"), "{problems}");
    assert!(!problems.contains("without a resync"), "{problems}");
    // CPU: 2 x 0.75 s workers + 0.5 s coordinator over 2000 event frames.
    assert!((r.client.cpu_s - 2.0).abs() < 1e-9);
    assert!((r.client.cpu_us_per_event - 1000.0).abs() < 1e-6);
    assert!((r.client.workers_cpu_us_per_event - 750.0).abs() < 1e-6);
    assert!((r.client.cores_avg - 0.5).abs() < 1e-9);
    assert!((r.client.workers_cores_peak - 0.3).abs() < 1e-9);

    report::write_all(&r, &dir).unwrap();
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for want in [
        "Continuity by offset",
        "Reconnects (resume mode)",
        "`room:lt-0`",
        "µs per event received",
    ] {
        assert!(md.contains(want), "{want} missing:\n{md}");
    }
    assert!(dir.join("reconnects.svg").is_file());
    let back: report::Report =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(back.continuity, r.continuity);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_without_offsets_has_no_continuity_section() {
    let dir = std::env::temp_dir().join(format!("lt-v1-report-{}", std::process::id()));
    let plan = test_plan(dir.clone());
    let r = report::build(Inputs {
        plan: &plan,
        command: "gateway-loadtest fanout".into(),
        started_unix: 1,
        wall_s: 1.0,
        ramp_s: 0.1,
        load_s: 1.0,
        grace_s: 0.5,
        interrupted: false,
        ramp_timed_out: false,
        notes: vec![],
        results: &[worker(0, 1..10, &[&[1, 2, 3]], 3)],
        publish: None,
        series: vec![],
        coordinator_cpu_s: 0.0,
    });
    assert!(r.continuity.is_none() && r.reconnect.is_none());
    assert!(r.outcome.problems.is_empty(), "{:?}", r.outcome.problems);
}
