//! Measurements (ignored by default; run in release):
//!
//!     cargo test --release --test redis -- --ignored --nocapture --test-threads 1
//!
//! Gateways run as separate `gateway serve` processes so that the clients
//! (in this process) and the servers each stay under the 20,000 open-files
//! limit. `GW_BENCH_SOCKETS` overrides the socket count (default 10,000).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::require_redis;

/// A `gateway serve` child process, killed by PID on drop.
struct GatewayProcess {
    addr: std::net::SocketAddr,
    _child: Proc,
    _dir: TempDir,
}

impl GatewayProcess {
    async fn start(seeds: &[String], name: &str) -> GatewayProcess {
        let port = free_ports(1)[0];
        let dir = TempDir::new(&format!("gw-bench-{name}"));
        let config = dir.file("gateway.toml", "");
        let child = gateway_command(&dir.0)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--node-id", name])
            .env("GATEWAY_AUTH_HS_SECRET", SECRET)
            .env("GATEWAY_BROKER_KIND", "redis")
            .env("GATEWAY_BROKER_REDIS_NODES", seeds.join(","))
            .env("GATEWAY_LIMITS_CONNECT_RATE", "0")
            .env("GATEWAY_LIMITS_MESSAGES_PER_SECOND", "0")
            .env("GATEWAY_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("gateway binary runs");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let gw = GatewayProcess {
            addr,
            _child: Proc::kill_on_drop(child, "gateway"),
            _dir: dir,
        };
        eventually_async("gateway process ready", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
                && http(addr, "GET", "/readyz", &[], "").await.0 == 200
        })
        .await;
        gw
    }

    /// A histogram's mean, in milliseconds.
    async fn mean_ms(&self, series: &str) -> f64 {
        let sum = self.metric(&format!("{series}_sum")).await;
        1e3 * sum / self.metric(&format!("{series}_count")).await.max(1.0)
    }

    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = http(self.addr, "GET", "/metrics", &[], "").await;
        metric_value(&text, series)
    }
}

fn sockets() -> usize {
    std::env::var("GW_BENCH_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `n` sockets spread over `gateways`, 256 handshakes at a time.
async fn open(
    gateways: &[&GatewayProcess],
    n: usize,
    rooms: impl Fn(usize) -> Vec<String>,
) -> Vec<Ws> {
    let urls: Vec<String> = (0..n)
        .map(|i| {
            let owned = rooms(i);
            let grants: Vec<&str> = owned.iter().map(String::as_str).collect();
            format!(
                "ws://{}/ws?token={}",
                gateways[i % gateways.len()].addr,
                token(&format!("b{i}"), &grants)
            )
        })
        .collect();
    futures_util::stream::iter(urls)
        .map(|url| async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("bench socket admitted");
            let _welcome = ws.next().await;
            ws
        })
        // In order, so socket i carries token i (and its room grants).
        .buffered(256)
        .collect()
        .await
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: run in release with --ignored --nocapture"]
async fn latency_spublish_to_frame_two_nodes() {
    require_redis!();
    const ROOMS: usize = 100;
    const ROUNDS: usize = 20;
    let n = sockets();
    let cluster = RedisCluster::start().await;
    let a = GatewayProcess::start(&cluster.seeds(), "bench-a").await;
    let b = GatewayProcess::start(&cluster.seeds(), "bench-b").await;
    let room = |i: usize| format!("r{}", i % ROOMS);
    let t0 = Instant::now();
    let mut sockets = open(&[&a, &b], n, |i| vec![room(i)]).await;
    eprintln!("{n} sockets open in {:?}", t0.elapsed());
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(
            json!({"type": "subscribe", "room": room(i)}).to_string(),
        ))
        .await
        .unwrap();
    }
    // Reads until each socket saw every round; heartbeat pings are skipped,
    // and one deadline bounds the whole run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut readers = Vec::new();
    for mut ws in sockets {
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(ROUNDS);
            while lat.len() < ROUNDS {
                let t = match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(_))) => continue,
                    other => panic!("bench socket stalled after {} events: {other:?}", lat.len()),
                };
                let frame: Value = serde_json::from_str(&t).unwrap();
                if let Some(sent) = frame["data"]["t"].as_u64() {
                    lat.push((sent, unix_nanos().saturating_sub(sent)));
                }
            }
            lat
        }));
    }
    eventually_async(
        "every socket subscribed",
        Duration::from_secs(60),
        // Each socket holds its user channel and its room.
        || async {
            a.metric("gateway_subscriptions").await + b.metric("gateway_subscriptions").await
                >= 2.0 * n as f64
        },
    )
    .await;
    eprintln!("subscribed after {:?}; publishing", t0.elapsed());
    let mut backend = Backend::new(cluster.ports());
    // Paced: one room every `GW_BENCH_GAP_US` (default 1000 µs), so the
    // number is the path's latency, not a burst's queueing on 2 cores;
    // `GW_BENCH_GAP_US=0` sends each round as a burst.
    let gap = std::env::var("GW_BENCH_GAP_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000u64);
    let mut tick = tokio::time::interval(Duration::from_micros(gap.max(1)));
    for _ in 0..ROUNDS {
        for r in 0..ROOMS {
            if gap > 0 {
                tick.tick().await;
            }
            let payload = json!({"t": unix_nanos()}).to_string();
            backend
                .spublish(&format!("gw:room:r{r}"), &payload)
                .await
                .unwrap();
        }
        if gap == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut all = Vec::with_capacity(n * ROUNDS);
    for r in readers {
        all.extend(r.await.unwrap());
    }
    // The worst latency per 500 ms of send time shows whether slow frames
    // are spread out or clustered in stalls.
    let first = all.iter().map(|(sent, _)| *sent).min().unwrap_or(0);
    let mut worst = std::collections::BTreeMap::new();
    for (sent, lat) in &all {
        let slot = worst.entry((sent - first) / 500_000_000).or_insert(0);
        *slot = (*slot).max(*lat / 1_000_000);
    }
    println!(
        "worst ms per 500 ms of send time: {:?}",
        worst.values().collect::<Vec<_>>()
    );
    let mut all: Vec<u64> = all.into_iter().map(|(_, lat)| lat).collect();
    all.sort_unstable();
    for (name, gw) in [("A", &a), ("B", &b)] {
        println!(
            "node {name}: mean received->written {:.2} ms, mean probe publish->receive {:.2} ms",
            gw.mean_ms("gateway_fanout_latency_seconds").await,
            gw.mean_ms("gateway_broker_inbound_lag_seconds").await
        );
    }
    println!(
        "SPUBLISH -> frame, 2 nodes, {n} sockets, {ROOMS} rooms, {} frames, {gap} µs between publishes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: run in release with --ignored --nocapture"]
async fn subscriptions_per_second_when_every_socket_joins_five_rooms() {
    require_redis!();
    const PER_SOCKET: usize = 5;
    let n = sockets();
    let distinct = n * PER_SOCKET / 2;
    let cluster = RedisCluster::start().await;
    let gw = GatewayProcess::start(&cluster.seeds(), "bench-sub").await;
    let rooms = move |i: usize| {
        (0..PER_SOCKET)
            .map(|k| format!("j{}", (i * PER_SOCKET + k) % distinct))
            .collect::<Vec<_>>()
    };
    let sockets = open(&[&gw], n, rooms).await;
    let go = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            for room in rooms(i) {
                ws.feed(Message::text(
                    json!({"type": "subscribe", "room": room, "id": 1}).to_string(),
                ))
                .await
                .unwrap();
            }
            ws.flush().await.unwrap();
            let mut oks = 0;
            while oks < PER_SOCKET {
                match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let frame: Value = serde_json::from_str(&t).unwrap();
                        assert_eq!(frame["type"], "ok", "{frame}");
                        oks += 1;
                    }
                    Ok(Some(Ok(_))) => {}
                    other => panic!("subscribe stalled: {other:?}"),
                }
            }
            ws
        }));
    }
    let before = gw.metric("gateway_channels").await;
    go.wait().await;
    let start = Instant::now();
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let channels = gw.metric("gateway_channels").await - before;
    println!(
        "{n} sockets x {PER_SOCKET} rooms at once on one node: {} memberships in {elapsed:.2} s = {:.0}/s; \
         {channels} Redis channel subscriptions = {:.0}/s",
        n * PER_SOCKET,
        (n * PER_SOCKET) as f64 / elapsed,
        channels / elapsed
    );
    assert!(channels >= distinct as f64);
}
