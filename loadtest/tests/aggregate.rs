//! Aggregation of several workers' results into one report: histograms merge
//! bucket by bucket, loss / duplicate / order counts and error kinds add up,
//! and the report lists what went wrong and writes its files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gateway_loadtest::publish::PublishOutcome;
use gateway_loadtest::report::{self, Inputs, Sample};
use gateway_loadtest::scenario::{Plan, Scenario, Settings};
use gateway_loadtest::stats::{self, Delivery, HistWire, WorkerResult, aggregate};
use gateway_loadtest::track::SeqTracker;

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
