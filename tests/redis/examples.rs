//! The backend publisher examples (`examples/backend/python/publish.py`,
//! `examples/backend/node/publish.mjs`) run as a backend would run them,
//! against a real Redis Cluster and a real gateway node, with a real
//! WebSocket client in a room: each script publishes to the room, the user
//! channel and broadcast, once with `FCALL gw_publish` and once with
//! `POST /api/publish`, then once with a plain SPUBLISH. The client must get
//! every event, with exactly the offsets the scripts printed (contiguous
//! across both scripts and both paths), and the SPUBLISH events without one.
//!
//! The interpreters: `GW_EXAMPLES_PYTHON` (default `target/examples-venv/bin/python`
//! when it exists, else `python3`; `.ci/run` makes that venv) with the
//! `redis` module, and `node` with `npm ci` run in `examples/backend/node`.
//! Where one is missing the test prints why and skips that script, unless
//! `CI` is set (non-empty): then it fails. (Not `GATEWAY_*`: the gateway refuses unknown
//! names of that prefix.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::harness::*;
use crate::require_redis;

/// Longest a script may run (interpreter start-up, cluster discovery, 7 publications).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);

/// One example: how to run it, and how to check that it can run here.
struct Example {
    /// `python` or `node`: what the script puts in `data.from`.
    name: &'static str,
    program: String,
    script: PathBuf,
    /// Arguments that exit 0 only when the Redis client library is importable.
    probe: Vec<String>,
    install: &'static str,
}

fn examples() -> Vec<Example> {
    let dir = repo().join("examples/backend");
    let python = std::env::var("GW_EXAMPLES_PYTHON").unwrap_or_else(|_| {
        let venv = repo().join("target/examples-venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    vec![
        Example {
            name: "python",
            program: python,
            script: dir.join("python/publish.py"),
            probe: vec!["-c".into(), "import redis.cluster".into()],
            install: "python3 -m venv target/examples-venv && \
                      target/examples-venv/bin/pip install -r examples/backend/python/requirements.txt",
        },
        Example {
            name: "node",
            program: "node".into(),
            script: dir.join("node/publish.mjs"),
            probe: vec![
                "--input-type=module".into(),
                "-e".into(),
                "await import('redis')".into(),
            ],
            install: "cd examples/backend/node && npm ci",
        },
    ]
}

/// Whether `example` can run here. Without it: fail under CI, else skip loudly.
async fn available(example: &Example) -> bool {
    let probe = Command::new(&example.program)
        .args(&example.probe)
        .current_dir(example.script.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    let found = tokio::time::timeout(SCRIPT_DEADLINE, probe)
        .await
        .expect("probe in time")
        .is_ok_and(|s| s.success());
    if !found {
        let why = format!(
            "{} cannot load its Redis client ({} {}); install it with: {}",
            example.name,
            example.program,
            example.probe.join(" "),
            example.install
        );
        // `CI=` (empty, as in `CI= cargo test`) counts as unset.
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        assert!(!ci, "{}: {why}", module_path!());
        eprintln!("SKIPPED {} ({}): {why}", module_path!(), example.name);
    }
    found
}

/// Runs `example` like a backend would; its stdout, one JSON value per line.
async fn run(
    example: &Example,
    seed: &str,
    gw: &TestGateway,
    room: &str,
    user: &str,
) -> Vec<Value> {
    let mut cmd = Command::new(&example.program);
    cmd.arg(&example.script)
        .args([room, user])
        .current_dir(example.script.parent().unwrap())
        .env("REDIS_NODES", seed)
        .env("GW_URL", format!("http://{}", gw.addr))
        .env("GW_API_KEY", API_KEY)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SCRIPT_DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} example finished in time", example.name))
        .expect("example starts");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{} example failed ({}):\n{stdout}\n{stderr}",
        example.name,
        out.status
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {l:?}: {e}", example.name)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_examples_publish_with_contiguous_offsets_over_fcall_and_http() {
    require_redis!();
    let mut runnable = Vec::new();
    for example in examples() {
        if available(&example).await {
            runnable.push(example);
        }
    }
    if runnable.is_empty() {
        return;
    }
    let cluster = RedisCluster::start().await;
    let gw = redis_gateway(cluster.seeds(), true, "sharded")
        .config(with_history)
        .ready()
        .await;
    let (room, user) = ("lobby", "alice");
    let channels = [
        format!("room:{room}"),
        format!("user:{user}"),
        "broadcast".to_owned(),
    ];
    let mut client = gw.connect(&token(user, &[room])).await;
    client
        .send(json!({"type": "subscribe", "room": room, "id": 1}))
        .await;
    let ok = client.recv().await;
    assert_eq!(
        (&ok["type"], &ok["offset"]),
        (&json!("ok"), &json!(0)),
        "{ok}"
    );

    // What each channel's client should see, in order, and the last offset.
    let mut expected: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut top: BTreeMap<String, u64> = channels.iter().map(|c| (c.clone(), 0)).collect();
    for example in &runnable {
        let printed = run(example, &cluster.seeds()[0], &gw, room, user).await;
        // For each channel: FCALL then HTTP, each the next offset; then one SPUBLISH.
        let mut want = Vec::new();
        for channel in &channels {
            for via in ["fcall", "http"] {
                let offset = top[channel] + 1;
                top.insert(channel.clone(), offset);
                want.push(json!({"via": via, "channel": channel, "offset": offset}));
            }
        }
        want.push(json!({"via": "spublish", "channel": channels[0], "receivers": 1}));
        assert_eq!(printed, want, "{} example's output", example.name);
        for line in &printed {
            let channel = line["channel"].as_str().unwrap();
            let mut event = json!({
                "type": "event",
                "channel": channel,
                "data": {"from": example.name, "via": line["via"]},
            });
            if let Some(offset) = line.get("offset") {
                event["offset"] = offset.clone();
            }
            expected.entry(channel.to_owned()).or_default().push(event);
        }
    }

    // Events of one channel arrive in order; channels interleave freely.
    let mut received: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let total: usize = expected.values().map(Vec::len).sum();
    while received.values().map(Vec::len).sum::<usize>() < total {
        let frame = client.recv().await;
        assert_eq!(frame["type"], "event", "{frame}");
        let channel = frame["channel"].as_str().unwrap().to_owned();
        received.entry(channel).or_default().push(frame);
    }
    assert_eq!(received, expected, "events as the client received them");

    // History holds the FCALL and HTTP publications, not the SPUBLISH ones.
    let (status, history) = gw
        .api("GET", &format!("/api/history?channel=room:{room}"), "")
        .await;
    assert_eq!(status, 200, "{history}");
    let stored: Vec<Value> = expected[&channels[0]]
        .iter()
        .filter(|e| e.get("offset").is_some())
        .map(|e| json!({"offset": e["offset"], "data": e["data"]}))
        .collect();
    assert_eq!(history["events"], json!(stored), "{history}");
    assert_eq!(history["offset"], json!(top[&channels[0]]), "{history}");
}
