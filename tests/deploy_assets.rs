//! The deploy assets agree with the gateway they deploy: every metric the
//! Grafana dashboard, the Prometheus rules and docs/operations.md name is one
//! a running node exports (and every exported metric is documented), every
//! alert is documented, and every configuration the assets hand the gateway
//! (files and `GATEWAY_*` variables in compose, Kubernetes, Docker, systemd)
//! passes `gateway check-config`, which rejects unknown keys and variables.
//! The tools' own checks (promtool, nginx -t, hadolint, ...) live in
//! .ci/deploy-checks.

// Helpers are shared between the modules of one test binary: `pub` is
// their visibility inside it, not an API.
#![allow(unreachable_pub)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

#[path = "support/kit.rs"]
mod kit;
use kit::{Proc, SECRET, TempDir, eventually_blocking, free_port, gateway_command, repo};

const DEADLINE: Duration = Duration::from_secs(20);

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Files in `dir` (relative to the repository) whose names end with `suffix`.
fn files(dir: &str, suffix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    out
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Starts a node on a free port, waits for /healthz, and returns /metrics.
fn scrape_a_running_node() -> String {
    let dir = TempDir::new("gateway-deploy-test");
    let port = free_port();
    let _node = Proc::kill_on_drop(
        gateway_command(&dir.0)
            .arg("serve")
            .env("GATEWAY_SERVER_LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEWAY_AUTH_HS_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "gateway",
    );
    eventually_blocking("gateway to answer /healthz", DEADLINE, || {
        matches!(get(port, "/healthz"), Some((200, _)))
    });
    let (status, body) = get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    body
}

/// Names of the samples in a Prometheus text exposition.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Every `gateway_*` / `process_*` metric name in `text`. A name must start a
/// word: `instance:gateway_...:p99` (a recording rule) is not a metric the
/// gateway exports, and is skipped.
fn referenced(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    // A name preceded by `$` is a variable (nginx, shell), not a metric.
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'$';
    let mut names = BTreeSet::new();
    for prefix in ["gateway_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            if at > 0 && is_name(bytes[at - 1]) {
                continue;
            }
            let len = bytes[at..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
                .count();
            let name = text[at..at + len].trim_end_matches('_');
            // `gateway_*` in prose names a family, not a metric.
            if name.len() > prefix.len() {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// A referenced name is exported as is, or is a histogram's base name
/// (exported as `_bucket`, `_sum` and `_count`).
fn missing(referenced: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    referenced
        .iter()
        .filter(|n| !exported.contains(*n) && !exported.contains(&format!("{n}_bucket")))
        .cloned()
        .collect()
}

#[test]
fn dashboards_and_alert_rules_query_only_exported_metrics() {
    let exported = exported(&scrape_a_running_node());
    let mut sources = files("deploy/grafana", ".json");
    sources.extend(files("deploy/prometheus", ".yml"));
    assert!(
        sources.iter().any(|s| s.ends_with(".json")),
        "no dashboard JSON in deploy/grafana"
    );
    for source in &sources {
        let text = read(source);
        if source.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{source} is not JSON: {e}"));
        }
        let names = referenced(&text);
        let missing = missing(&names, &exported);
        assert!(
            missing.is_empty(),
            "{source} queries metrics the gateway does not export: {missing:?}"
        );
    }
    // Not vacuous: the dashboard covers what the issue asks for.
    let dashboard: BTreeSet<String> = files("deploy/grafana", ".json")
        .iter()
        .flat_map(|f| referenced(&read(f)))
        .collect();
    for name in [
        "gateway_sockets_open",
        "gateway_upgrades_accepted_total",
        "gateway_upgrades_refused_total",
        "gateway_publications_in_total",
        "gateway_deliveries_total",
        "gateway_fanout_latency_seconds_bucket",
        "gateway_slow_consumer_closes_total",
        "gateway_broker_up",
        "gateway_broker_reconnects_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            dashboard.contains(name),
            "the dashboard does not show {name}"
        );
    }
}

#[test]
fn operations_doc_explains_every_exported_metric_and_alert() {
    let exported = exported(&scrape_a_running_node());
    let doc = read("docs/operations.md");
    let documented = referenced(&doc);
    let missing_in_doc: BTreeSet<&str> = exported
        .iter()
        .filter(|n| n.starts_with("gateway_"))
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
        })
        .filter(|base| !documented.contains(*base))
        .collect();
    assert!(
        missing_in_doc.is_empty(),
        "docs/operations.md does not explain: {missing_in_doc:?}"
    );
    let stale = missing(&documented, &exported);
    assert!(
        stale.is_empty(),
        "docs/operations.md names metrics the gateway does not export: {stale:?}"
    );

    let rules = read("deploy/prometheus/gateway.rules.yml");
    for line in rules.lines() {
        if let Some(alert) = line.trim().strip_prefix("- alert: ") {
            assert!(
                doc.contains(alert),
                "docs/operations.md does not explain alert {alert}"
            );
        }
    }
}

/// `GATEWAY_*` variables set by `lines` of the form `NAME: value`,
/// `NAME=value` or `- name: NAME` + `value: ...`, with quotes and compose's
/// `${VAR:-default}` resolved to the default.
fn gateway_env(text: &str) -> Vec<(String, String)> {
    let unquote = |v: &str| {
        let v = v.trim().trim_matches('"').to_owned();
        match v
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .and_then(|r| r.split_once(":-"))
        {
            Some((_, default)) => default.to_owned(),
            None => v,
        }
    };
    let mut out = Vec::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        let t = line
            .trim()
            .trim_start_matches("ENV ")
            .trim_start_matches("Environment=")
            .trim_end_matches(" \\");
        if let Some(name) = t
            .strip_prefix("- name: ")
            .filter(|n| n.starts_with("GATEWAY_"))
        {
            pending = Some(name.to_owned());
            continue;
        }
        if let (Some(name), Some(value)) = (&pending, t.strip_prefix("value: ")) {
            out.push((name.clone(), unquote(value)));
            pending = None;
            continue;
        }
        if t.starts_with("GATEWAY_")
            && let Some((name, value)) = t.split_once([':', '='])
        {
            out.push((name.trim().to_owned(), unquote(value)));
        }
    }
    out
}

fn check_config(file: Option<&str>, env: &[(String, String)]) -> (bool, String) {
    let dir = TempDir::new("gateway-deploy-test");
    let mut cmd = gateway_command(&dir.0);
    cmd.arg("check-config");
    if let Some(file) = file {
        cmd.arg("--config").arg(repo().join(file));
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_configuration_the_deploy_assets_pass_is_valid() {
    // Kubernetes: the ConfigMap's gateway.toml plus the pod's environment (the
    // Secret's keys, the overlay's env patch, the pod name as node id).
    let mut k8s = gateway_env(&read("deploy/k8s/overlays/example/secrets.env"));
    k8s.extend(gateway_env(&read(
        "deploy/k8s/overlays/example/deployment-patch.yaml",
    )));
    k8s.push(("GATEWAY_SERVER_NODE_ID".into(), "gateway-7d9c-abcde".into()));
    assert!(
        k8s.iter().any(|(k, _)| k == "GATEWAY_BROKER_REDIS_NODES"),
        "parsed the overlay's env: {k8s:?}"
    );
    let (ok, out) = check_config(Some("deploy/k8s/base/gateway.toml"), &k8s);
    assert!(ok, "k8s overlay configuration refused:\n{out}");
    let base = gateway_env(&read("deploy/k8s/base/secrets.placeholder.env"));
    let (ok, out) = check_config(Some("deploy/k8s/base/gateway.toml"), &base);
    assert!(ok, "k8s base configuration refused:\n{out}");

    // Compose: built-in defaults (no file in the image) plus the service's
    // environment, the image's ENV lines included.
    let mut compose = gateway_env(&read("Dockerfile"));
    assert!(
        compose.iter().any(|(k, _)| k == "GATEWAY_SERVER_LISTEN"),
        "parsed the Dockerfile's ENV: {compose:?}"
    );
    let compose_env = gateway_env(&read("deploy/compose/docker-compose.yml"));
    assert!(
        compose_env
            .iter()
            .any(|(k, v)| k == "GATEWAY_BROKER_KIND" && v == "redis"),
        "{compose_env:?}"
    );
    compose.extend(compose_env);
    let (ok, out) = check_config(None, &compose);
    assert!(ok, "compose gateway configuration refused:\n{out}");

    // systemd: the unit's Environment= lines, the credential file standing in
    // for %d/hs_secret.
    let dir = TempDir::new("gateway-deploy-test");
    let secret_file = dir.0.join("hs_secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let systemd: Vec<(String, String)> = gateway_env(&read("deploy/systemd/gateway.service"))
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.replace("%d/hs_secret", &secret_file.display().to_string()),
            )
        })
        .collect();
    assert!(
        systemd
            .iter()
            .any(|(k, _)| k == "GATEWAY_AUTH_HS_SECRET_FILE"),
        "{systemd:?}"
    );
    let (ok, out) = check_config(None, &systemd);
    assert!(ok, "systemd unit's configuration refused:\n{out}");
}

#[test]
fn the_checks_above_would_catch_a_mistake() {
    // A metric name that does not exist is reported ...
    let exported: BTreeSet<String> = [
        "gateway_sockets_open",
        "gateway_fanout_latency_seconds_bucket",
    ]
    .map(String::from)
    .into();
    let refs = referenced(
        r#"{"expr": "sum(gateway_sockets_opn) / instance:gateway_x:p99 + $gateway_source + histogram_quantile(0.9, gateway_fanout_latency_seconds_bucket)"}"#,
    );
    assert_eq!(
        refs,
        [
            "gateway_fanout_latency_seconds_bucket",
            "gateway_sockets_opn"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(missing(&refs, &exported), ["gateway_sockets_opn"]);
    assert!(
        missing(
            &["gateway_fanout_latency_seconds".to_owned()].into(),
            &exported
        )
        .is_empty()
    );
    // ... and so is a misspelt environment variable.
    let (ok, out) = check_config(
        None,
        &[
            ("GATEWAY_AUTH_HS_SECRET".into(), SECRET.into()),
            ("GATEWAY_BROKER_KINDS".into(), "redis".into()),
        ],
    );
    assert!(!ok && out.contains("GATEWAY_BROKER_KINDS"), "{out}");
}
