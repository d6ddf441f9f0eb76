//! The Redis publisher against real `redis-server` processes: a 3-master
//! cluster (every SPUBLISH must reach the slot's owner, or Redis answers
//! MOVED and the publish counts as failed) and a plain Redis (no cluster
//! support: everything goes to the one node). Skipped when `redis-server`
//! is not installed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_loadtest::publish::Publisher;
use gateway_loadtest::scenario::{PublishPlan, PublishTarget, PublishVia, RedisCommand, RedisMode};
use tokio::sync::watch;

/// Redis processes, killed when dropped.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn start_redis(dir: &Path, port: u16, cluster: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args([
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
    .stderr(Stdio::null());
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
        ]);
    }
    cmd.spawn().unwrap()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lt-redis-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn plan(seed: SocketAddr, rate: f64) -> PublishPlan {
    PublishPlan {
        via: PublishVia::Redis,
        redis_command: RedisCommand::Spublish,
        target: PublishTarget::Rooms,
        steps: vec![rate],
        step_duration: Duration::from_secs(1),
        payload_bytes: 16,
        http: None,
        api_key: String::new(),
        publishers: 1,
        redis: vec![seed],
        redis_mode: RedisMode::Sharded,
        redis_prefix: "gw:".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_publishes_reach_each_slot_owner() {
    if !have("redis-server") || !have("redis-cli") {
        eprintln!("skipping: redis-server / redis-cli not installed");
        return;
    }
    let dir = temp_dir("cluster");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes = Nodes(ports.iter().map(|&p| start_redis(&dir, p, true)).collect());
    for &p in &ports {
        wait_until("redis to listen", || {
            TcpStream::connect(("127.0.0.1", p)).is_ok()
        });
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success(), "redis-cli --cluster create failed");
    for &p in &ports {
        wait_until("cluster_state:ok", || {
            cli(p, &["cluster", "info"]).contains("cluster_state:ok")
        });
    }

    let channels: Vec<String> = (0..50).map(|i| format!("room:lt-{i}")).collect();
    let seed: SocketAddr = addrs[1].parse().unwrap();
    let publisher = Publisher::connect(&plan(seed, 500.0), channels.clone(), false)
        .await
        .unwrap();
    let (_stop_tx, stop_rx) = watch::channel(false);
    let out = publisher.run(stop_rx).await;
    assert_eq!(out.lanes, 3, "one lane per master");
    assert_eq!(out.failed, 0, "errors: {:?}", out.errors);
    assert!(out.sent >= 450, "sent {}", out.sent);
    assert_eq!(out.finals.len(), channels.len());
    assert_eq!(out.finals.values().map(|f| f.last).sum::<u64>(), out.sent);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_plain_redis_takes_everything_on_one_connection() {
    if !have("redis-server") {
        eprintln!("skipping: redis-server not installed");
        return;
    }
    let dir = temp_dir("plain");
    let port = free_port();
    let nodes = Nodes(vec![start_redis(&dir, port, false)]);
    wait_until("redis to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let seed: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let publisher = Publisher::connect(&plan(seed, 200.0), vec!["broadcast".into()], false)
        .await
        .unwrap();
    let (_stop_tx, stop_rx) = watch::channel(false);
    let out = publisher.run(stop_rx).await;
    assert_eq!((out.lanes, out.failed), (1, 0), "errors: {:?}", out.errors);
    assert!(out.sent >= 180, "sent {}", out.sent);
    assert_eq!(out.finals["broadcast"].last, out.sent);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
