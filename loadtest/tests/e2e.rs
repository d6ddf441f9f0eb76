//! End to end against a real gateway process: start `gateway serve` on a free
//! loopback port (embedded broker), run the load tester binary against it, and
//! read its `result.json`.
//!
//! The gateway binary is `$GATEWAY_BIN`, else `target/debug/gateway` (built by
//! `cargo build -p gateway` or any workspace test run). Without it these tests
//! fail under CI (`$CI` set) and are skipped with a message elsewhere.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const SECRET: &str = "loadtest-e2e-secret-0123456789abcdef-not-for-production";
const API_KEY: &str = "e2e-key";

fn gateway_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GATEWAY_BIN={} does not exist", p.display());
        return Some(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/gateway");
    p.is_file().then_some(p)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lt-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A gateway process, killed when dropped.
struct Gateway {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.starts_with("HTTP/1.1 200")
}

/// Starts a gateway, or returns None (skip) when there is no binary outside CI.
fn start_gateway(dir: &Path) -> Option<Gateway> {
    start_gateway_with(dir, "gateway", &[])
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on a local port; true on a 200.
fn get_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.starts_with("HTTP/1.1 200")
}

/// A gateway named `name` (its log file) with extra environment, ready
/// (`/readyz`) before it is returned.
fn start_gateway_with(dir: &Path, name: &str, extra: &[(&str, &str)]) -> Option<Gateway> {
    let Some(bin) = gateway_bin() else {
        let hint =
            "gateway binary not found: build it with `cargo build -p gateway` or set GATEWAY_BIN";
        assert!(std::env::var_os("CI").is_none(), "{hint}");
        eprintln!("skipping end-to-end test: {hint}");
        return None;
    };
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(bin);
    // The test owns the gateway's whole configuration.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GATEWAY_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .arg("serve")
        .current_dir(dir)
        .env("GATEWAY_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_AUTH_HS_SECRET", SECRET)
        .env("GATEWAY_API_KEYS", API_KEY)
        .envs(extra.iter().copied())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut gw = Gateway { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(port) || !get_ok(port, "/readyz") {
        if let Ok(Some(status)) = gw.child.try_wait() {
            panic!(
                "gateway exited ({status}): {}",
                std::fs::read_to_string(&gw.log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "gateway not ready after 30s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(gw)
}

fn loadtest(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway-loadtest"));
    for k in [
        "LOADTEST_SECRET",
        "LOADTEST_API_KEY",
        "GATEWAY_AUTH_HS_SECRET",
        "GATEWAY_API_KEYS",
    ] {
        cmd.env_remove(k);
    }
    cmd.current_dir(dir).args(args).args([
        "--secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--out",
        "out",
        "--ramp-timeout",
        "20s",
    ]);
    cmd
}

/// Waits for a child, killing it past `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("load test did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_to_end(dir: &Path, args: &[&str]) -> Value {
    let log_path = dir.join("loadtest.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = loadtest(dir, args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let result = std::fs::read_to_string(dir.join("out/result.json"))
        .unwrap_or_else(|e| panic!("no result.json ({e}); exit {status}; output:\n{log}"));
    let v: Value = serde_json::from_str(&result).unwrap();
    assert!(
        status.success(),
        "exit {status}; problems: {}; output:\n{log}",
        v["outcome"]["problems"]
    );
    v
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn fanout_over_http_delivers_every_event_once_in_order() {
    let dir = temp_dir("fanout");
    let Some(gw) = start_gateway(&dir) else {
        return;
    };
    let target = format!("ws://127.0.0.1:{}/ws", gw.port);
    let v = run_to_end(
        &dir,
        &[
            "fanout",
            "--target",
            &target,
            "--sockets",
            "200",
            "--rooms",
            "4",
            "--rate",
            "50",
            "--duration",
            "3s",
            "--quiet",
            "--strict",
        ],
    );
    assert_eq!(u(&v["sockets"]["connected"]), 200);
    assert_eq!(u(&v["sockets"]["failed"]), 0);
    let published = u(&v["events"]["published"]);
    assert!((100..=160).contains(&published), "published {published}");
    assert_eq!(u(&v["events"]["lost"]), 0);
    assert_eq!(u(&v["events"]["duplicates"]), 0);
    assert_eq!(u(&v["events"]["out_of_order"]), 0);
    // Each event goes to one room of 50 sockets.
    assert_eq!(u(&v["events"]["unique"]), published * 50);
    assert_eq!(u(&v["latency"]["count"]), published * 50);
    assert!(u(&v["latency"]["p50_us"]) > 0);
    for f in ["summary.md", "latency.svg", "sockets.svg", "throughput.svg"] {
        assert!(dir.join("out").join(f).is_file(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_batch_subprotocols_deliver_every_event_once_in_order() {
    let dir = temp_dir("batch");
    let Some(gw) = start_gateway(&dir) else {
        return;
    };
    let target = format!("ws://127.0.0.1:{}/ws", gw.port);
    for codec in ["json-batch", "msgpack-batch"] {
        let v = run_to_end(
            &dir,
            &[
                "fanout",
                "--target",
                &target,
                "--sockets",
                "100",
                "--rooms",
                "1",
                "--rate",
                "300",
                "--duration",
                "2s",
                "--codec",
                codec,
                "--quiet",
                "--strict",
            ],
        );
        assert_eq!(u(&v["sockets"]["connected"]), 100, "{codec}");
        let published = u(&v["events"]["published"]);
        assert!(published >= 300, "{codec}: published {published}");
        assert_eq!(u(&v["events"]["lost"]), 0, "{codec}");
        assert_eq!(u(&v["events"]["duplicates"]), 0, "{codec}");
        assert_eq!(u(&v["events"]["out_of_order"]), 0, "{codec}");
        assert_eq!(u(&v["events"]["unique"]), published * 100, "{codec}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broadcast_over_msgpack_and_two_workers_reaches_every_socket() {
    let dir = temp_dir("broadcast");
    let Some(gw) = start_gateway(&dir) else {
        return;
    };
    let target = format!("ws://127.0.0.1:{}/ws", gw.port);
    let v = run_to_end(
        &dir,
        &[
            "broadcast",
            "--target",
            &target,
            "--sockets",
            "100",
            "--workers",
            "2",
            "--codec",
            "msgpack",
            "--token-in",
            "query",
            "--rate",
            "5",
            "--duration",
            "2s",
            "--quiet",
            "--strict",
        ],
    );
    assert_eq!(v["workers"].as_array().map(Vec::len), Some(2));
    assert_eq!(u(&v["sockets"]["connected"]), 100);
    let published = u(&v["events"]["published"]);
    assert!(published >= 5, "published {published}");
    assert_eq!(u(&v["events"]["unique"]), published * 100);
    assert_eq!(u(&v["events"]["lost"]), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn interrupt_closes_sockets_and_still_writes_the_report() {
    let dir = temp_dir("interrupt");
    let Some(gw) = start_gateway(&dir) else {
        return;
    };
    let target = format!("ws://127.0.0.1:{}/ws", gw.port);
    let mut child = loadtest(
        &dir,
        &[
            "connect",
            "--target",
            &target,
            "--sockets",
            "50",
            "--duration",
            "120s",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The progress line says when the load phase (all 50 up) has begun.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("progress line");
        if line.contains("] load") && line.contains("sockets 50/50") {
            break;
        }
    }
    let started = Instant::now();
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    assert!(status.success(), "exit {status}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?} to stop",
        started.elapsed()
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/result.json")).unwrap())
            .unwrap();
    assert_eq!(v["outcome"]["interrupted"], Value::Bool(true));
    assert_eq!(u(&v["sockets"]["connected"]), 50);
    assert_eq!(v["workers"][0]["stopped_by"], "coordinator");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A redis-server on a free port, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis(dir: &Path) -> Option<Redis> {
    let have = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("skipping: redis-server not installed");
        return None;
    }
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Redis { child, port })
}

/// Resume mode against two real gateway nodes sharing a real Redis: node A
/// is drained (SIGTERM, 1012) while events flow; its sockets reconnect to
/// node B and resume. Against a gateway with contract v2 section 6 (offsets
/// in the frames) nothing may be lost, duplicated or reordered by offset;
/// against a v1 gateway the sockets must still all come back and nothing be
/// duplicated (the events published while they were away are lost by
/// sequence, as v1 has no history).
#[test]
fn resume_mode_moves_drained_sockets_to_the_other_node() {
    let dir = temp_dir("resume");
    let Some(redis) = start_redis(&dir) else {
        return;
    };
    let nodes = format!("127.0.0.1:{}", redis.port);
    let env: [(&str, &str); 5] = [
        ("GATEWAY_BROKER_KIND", "redis"),
        ("GATEWAY_BROKER_REDIS_NODES", &nodes),
        ("GATEWAY_BROKER_REDIS_CLUSTER", "false"),
        ("GATEWAY_BROKER_REDIS_PUBSUB", "classic"),
        ("GATEWAY_SERVER_DRAIN_SECONDS", "1"),
    ];
    let Some(a) = start_gateway_with(&dir, "gateway-a", &env) else {
        return;
    };
    let Some(b) = start_gateway_with(&dir, "gateway-b", &env) else {
        return;
    };
    let targets = format!("ws://127.0.0.1:{}/ws,ws://127.0.0.1:{}/ws", a.port, b.port);
    let publish_url = format!("http://127.0.0.1:{}", b.port);
    let mut child = loadtest(
        &dir,
        &[
            "fanout",
            "--target",
            &targets,
            "--sockets",
            "200",
            "--rooms",
            "4",
            "--rate",
            "40",
            "--duration",
            "6s",
            "--publish-via",
            "http",
            "--publish-url",
            &publish_url,
            "--resume",
            "--reconnect-min",
            "20ms",
            "--reconnect-max",
            "500ms",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Drain node A as soon as the load phase (all 200 up) begins.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no load phase; output:\n{}", seen.join("\n")));
        if line.contains("] load") && line.contains("sockets 200/200") {
            break;
        }
        seen.push(line);
    }
    let sent = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let rest: Vec<String> = rx.try_iter().collect();
    let result = std::fs::read_to_string(dir.join("out/result.json")).unwrap_or_else(|e| {
        panic!(
            "no result.json ({e}); exit {status}; output:\n{}",
            rest.join("\n")
        )
    });
    assert!(status.success(), "exit {status}:\n{}", rest.join("\n"));
    let v: Value = serde_json::from_str(&result).unwrap();
    let rc = &v["reconnect"];
    let closes: u64 = rc["closes"].as_object().unwrap().values().map(u).sum();
    // Sockets alternate over the two targets: A held half of them.
    assert_eq!(closes, 100, "closes {}", rc["closes"]);
    assert!(
        rc["closes"].get("close_1012").is_some() || rc["closes"].get("close_1001").is_some(),
        "drain closes expected: {}",
        rc["closes"]
    );
    assert_eq!(u(&rc["resumed"]), 100, "{rc}");
    assert_eq!(u(&rc["down_at_end"]), 0);
    assert_eq!(u(&rc["close_to_resumed"]["count"]), 100);
    assert!(u(&rc["close_to_resumed"]["max_us"]) < 10_000_000, "{rc}");
    assert_eq!(u(&v["sockets"]["connected"]), 200);
    let published = u(&v["events"]["published"]);
    assert!(published >= 150, "published {published}");
    assert_eq!(u(&v["events"]["duplicates"]), 0);
    assert_eq!(u(&v["events"]["out_of_order"]), 0);
    let c = &v["continuity"];
    if u(&c["events"]) > 0 {
        // The server numbers events (contract v2 section 6): every resumed
        // socket got what it missed, once, in order.
        for k in [
            "lost",
            "duplicates",
            "out_of_order",
            "not_recovered",
            "anomalies",
        ] {
            assert_eq!(u(&c[k]), 0, "{k}: {c}");
        }
        assert!(u(&c["recovered"]) >= 100, "{c}");
        assert_eq!(u(&v["events"]["lost"]), 0, "lost by sequence");
    } else {
        eprintln!("gateway without offsets (contract v1): continuity by offset not checked");
        assert_eq!(u(&c["resyncs"]), 0);
    }
    drop(b);
    drop(a);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
