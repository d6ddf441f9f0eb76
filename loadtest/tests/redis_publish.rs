//! The Redis publisher against real `redis-server` processes: a 3-master
//! cluster (every SPUBLISH must reach the slot's owner), a plain Redis (no
//! cluster support: everything goes to the one node), and `FCALL gw_publish`
//! through a slot migration, a planned failover and a killed master.
//! Skipped when `redis-server` is not installed.
//!
//! The FCALL tests load a stand-in `gw` library with the interface of
//! contract section 6 (`FCALL gw_publish 1 <channel> <payload>` publishes and
//! returns the channel's next offset): a counter in the channel's own key,
//! so an offset equal to the number of publishes proves each publish ran
//! exactly once wherever the slot went. The gateway's real library (with
//! history) is exercised by the gateway's own tests and by `bench/run`.

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
    start_redis_with(dir, port, cluster, &[])
}

fn start_redis_with(dir: &Path, port: u16, cluster: bool, extra: &[&str]) -> Child {
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
    cmd.args(extra);
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
    plan_with(seed, rate, Duration::from_secs(1), RedisCommand::Spublish)
}

fn plan_with(seed: SocketAddr, rate: f64, length: Duration, command: RedisCommand) -> PublishPlan {
    PublishPlan {
        via: PublishVia::Redis,
        redis_command: command,
        target: PublishTarget::Rooms,
        steps: vec![rate],
        step_duration: length,
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

/// A stand-in for the gateway's `gw` library: the interface of contract
/// section 6, a counter for history.
const STAND_IN_GW: &str = "#!lua name=gw
redis.register_function('gw_publish', function(keys, args)
  local offset = redis.call('INCR', keys[1])
  redis.call('SPUBLISH', keys[1], args[1])
  return offset
end)";

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeInfo {
    id: String,
    port: u16,
    master: bool,
    master_id: String,
    slots: Vec<(u16, u16)>,
}

fn cluster_nodes(port: u16) -> Vec<NodeInfo> {
    cli(port, &["cluster", "nodes"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = f.get(1)?.split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let slots = f
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(NodeInfo {
                id: f[0].to_owned(),
                port,
                master: f.get(2)?.contains("master") && !f[2].contains("fail"),
                master_id: f.get(3)?.to_string(),
                slots,
            })
        })
        .collect()
}

fn owner_of(port: u16, slot: u16) -> NodeInfo {
    cluster_nodes(port)
        .into_iter()
        .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .unwrap_or_else(|| panic!("no master owns slot {slot}"))
}

/// A cluster of `masters` masters with `replicas` replicas each, the
/// stand-in library loaded on every master (and replicated).
fn start_cluster(dir: &Path, masters: usize, replicas: usize) -> (Nodes, Vec<u16>) {
    let n = masters * (replicas + 1);
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let nodes = Nodes(
        ports
            .iter()
            .map(|&p| start_redis_with(dir, p, true, &["--cluster-node-timeout", "1000"]))
            .collect(),
    );
    for &p in &ports {
        wait_until("redis to listen", || {
            TcpStream::connect(("127.0.0.1", p)).is_ok()
        });
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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
    for node in cluster_nodes(ports[0]).iter().filter(|n| n.master) {
        let out = cli(node.port, &["function", "load", "replace", STAND_IN_GW]);
        assert!(out.contains("gw"), "FUNCTION LOAD on {}: {out}", node.port);
    }
    for &p in &ports {
        wait_until("the library on every node", || {
            cli(p, &["function", "list", "libraryname", "gw"]).contains("gw_publish")
        });
    }
    (nodes, ports)
}

/// Moves `slot` (and its keys) from its master to another one, by hand:
/// SETSLOT IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE.
fn migrate_slot(any: u16, slot: u16) -> (NodeInfo, NodeInfo) {
    let src = owner_of(any, slot);
    let dst = cluster_nodes(any)
        .into_iter()
        .find(|n| n.master && n.id != src.id)
        .unwrap();
    let s = slot.to_string();
    assert!(cli(dst.port, &["cluster", "setslot", &s, "importing", &src.id]).contains("OK"));
    assert!(cli(src.port, &["cluster", "setslot", &s, "migrating", &dst.id]).contains("OK"));
    loop {
        let keys: Vec<String> = cli(src.port, &["cluster", "getkeysinslot", &s, "100"])
            .lines()
            .map(str::to_owned)
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() {
            break;
        }
        let port = dst.port.to_string();
        let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "keys"];
        args.extend(keys.iter().map(String::as_str));
        let out = cli(src.port, &args);
        assert!(
            out.contains("OK") || out.contains("NOKEY"),
            "MIGRATE: {out}"
        );
    }
    for n in cluster_nodes(any).iter().filter(|n| n.master) {
        assert!(cli(n.port, &["cluster", "setslot", &s, "node", &dst.id]).contains("OK"));
    }
    (src, dst)
}

fn skip_without_redis() -> bool {
    if !have("redis-server") || !have("redis-cli") {
        eprintln!("skipping: redis-server / redis-cli not installed");
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcall_reads_offsets_and_follows_a_slot_migration() {
    if skip_without_redis() {
        return;
    }
    let dir = temp_dir("fcall-migrate");
    let (nodes, ports) = start_cluster(&dir, 3, 0);
    let channels: Vec<String> = (0..50).map(|i| format!("room:lt-{i}")).collect();
    let seed: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let p = plan_with(seed, 400.0, Duration::from_secs(3), RedisCommand::Fcall);
    let publisher = Publisher::connect(&p, channels.clone(), false)
        .await
        .unwrap();
    let (_stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(publisher.run(stop_rx));
    let slot = gateway_loadtest::publish::redis::key_slot(b"gw:room:lt-0");
    let any = ports[0];
    let (src, dst) = tokio::task::spawn_blocking(move || {
        // Mid-run: once lt-0 has a few publications, move its slot.
        let owner = owner_of(any, slot);
        wait_until("publishing to begin", || {
            cli(owner.port, &["get", "gw:room:lt-0"])
                .trim()
                .parse::<u64>()
                .is_ok_and(|n| n >= 3)
        });
        migrate_slot(any, slot)
    })
    .await
    .unwrap();
    let out = run.await.unwrap();
    eprintln!(
        "migration: sent {} failed {} retried {} behind {} errors {:?}",
        out.sent, out.failed, out.retried, out.behind, out.errors
    );
    assert_eq!(out.failed, 0, "errors: {:?}", out.errors);
    assert!(
        out.retried >= 1,
        "the lane must have been redirected (MOVED/ASK)"
    );
    assert_eq!(out.offsets, out.sent);
    for ch in &channels {
        let f = &out.finals[ch];
        // Offsets 1..=N, N = publishes: each ran exactly once, in order.
        assert_eq!(f.last_offset, Some(f.last), "{ch}: {f:?}");
    }
    let on_dst: u64 = cli(dst.port, &["get", "gw:room:lt-0"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(on_dst, out.finals["room:lt-0"].last);
    assert_ne!(src.id, dst.id);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcall_rides_through_a_planned_failover_and_a_killed_master() {
    if skip_without_redis() {
        return;
    }
    let dir = temp_dir("fcall-failover");
    let (mut nodes, ports) = start_cluster(&dir, 3, 1);
    let channels: Vec<String> = (0..30).map(|i| format!("room:lt-{i}")).collect();
    let seed: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let p = plan_with(seed, 300.0, Duration::from_secs(8), RedisCommand::Fcall);
    let publisher = Publisher::connect(&p, channels.clone(), false)
        .await
        .unwrap();
    let (_stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(publisher.run(stop_rx));
    let any = ports[0];
    let planned_slot = gateway_loadtest::publish::redis::key_slot(b"gw:room:lt-0");
    // 1. Planned failover of lt-0's shard: its replica takes over.
    let planned = tokio::task::spawn_blocking(move || {
        let owner = owner_of(any, planned_slot);
        wait_until("publishing to begin", || {
            cli(owner.port, &["get", "gw:room:lt-0"])
                .trim()
                .parse::<u64>()
                .is_ok_and(|n| n >= 3)
        });
        let replica = cluster_nodes(any)
            .into_iter()
            .find(|n| n.master_id == owner.id)
            .unwrap();
        assert!(cli(replica.port, &["cluster", "failover"]).contains("OK"));
        wait_until("the replica to be master", || {
            cli(replica.port, &["role"]).starts_with("master")
        });
        owner
    })
    .await
    .unwrap();
    // 2. SIGKILL a master of another shard.
    let victim = cluster_nodes(any)
        .into_iter()
        .find(|n| {
            n.master
                && n.port != planned.port
                && !n
                    .slots
                    .iter()
                    .any(|&(a, b)| (a..=b).contains(&planned_slot))
        })
        .unwrap();
    let i = ports.iter().position(|&p| p == victim.port).unwrap();
    nodes.0[i].kill().unwrap();
    let _ = nodes.0[i].wait();
    let survivor = ports.iter().copied().find(|&p| p != victim.port).unwrap();
    let victim_id = victim.id.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("a replica to replace the killed master", || {
            cluster_nodes(survivor).iter().any(|n| {
                n.master
                    && n.id != victim_id
                    && n.slots
                        .iter()
                        .any(|&(a, b)| victim.slots.iter().any(|&(c, d)| a <= d && c <= b))
            })
        });
    })
    .await
    .unwrap();
    let out = run.await.unwrap();
    eprintln!(
        "failover: sent {} failed {} retried {} behind {} errors {:?}",
        out.sent, out.failed, out.retried, out.behind, out.errors
    );
    // Only commands in flight when the master died may fail (outcome unknown).
    assert!(
        out.errors.keys().all(|k| k == "redis_io"),
        "errors: {:?}",
        out.errors
    );
    assert!(out.failed <= 50, "failed {}", out.failed);
    assert!(out.retried >= 1, "redirects and retries expected");
    assert!(out.sent >= 1000, "sent {}", out.sent);
    assert_eq!(out.lanes, 3, "one lane per master at start");
    for ch in &channels {
        let f = &out.finals[ch];
        assert!(f.last_offset.is_some_and(|o| o > 0), "{ch}: {f:?}");
    }
    // The planned failover is lossless: lt-0's offsets count its publishes.
    let f0 = &out.finals["room:lt-0"];
    assert_eq!(f0.last_offset, Some(f0.last), "{f0:?}");
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn fcall_refuses_to_start_without_the_gw_library() {
    if skip_without_redis() {
        return;
    }
    let dir = temp_dir("fcall-nolib");
    let port = free_port();
    let nodes = Nodes(vec![start_redis(&dir, port, false)]);
    wait_until("redis to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let seed: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let p = plan_with(seed, 10.0, Duration::from_secs(1), RedisCommand::Fcall);
    let err = match Publisher::connect(&p, vec!["broadcast".into()], false).await {
        Ok(_) => panic!("connect must fail without the library"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("`gw` is not loaded"), "{err}");
    // With the library, FCALL on a plain Redis returns offsets 1, 2, 3, ...
    assert!(cli(port, &["function", "load", STAND_IN_GW]).contains("gw"));
    let out = Publisher::connect(&p, vec!["broadcast".into()], false)
        .await
        .unwrap()
        .run(watch::channel(false).1)
        .await;
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    assert_eq!(out.finals["broadcast"].last_offset, Some(out.sent));
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
