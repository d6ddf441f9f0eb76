//! Faults: (a) the master owning a room's slot crashes, (b) a planned
//! `CLUSTER FAILOVER` on its replica, (c) the slot migrates to another
//! master; in each case delivery resumes on every node without any client
//! reconnecting, and the gap is printed. Also: Redis down at start-up keeps
//! the node unready (503) until Redis comes up.
//!
//! The gap is the longest silence a socket saw between two events while a
//! backend published every 20 ms. Events published while a subscription was
//! down are lost (documented); every event Redis reports as delivered to
//! both nodes (SPUBLISH count 2) must reach both sockets.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;
use crate::require_redis;

const ROOM: &str = "failover";
const CHANNEL: &str = "gw:room:failover";

type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Records every event a socket receives, with its arrival time.
fn record(mut client: Client) -> Arrivals {
    let arrivals: Arrivals = Arc::default();
    let out = arrivals.clone();
    tokio::spawn(async move {
        while let Some(frame) = client.recv_within(Duration::from_secs(60)).await {
            if let Some(seq) = frame["data"].as_u64() {
                out.lock().unwrap().push((seq, Instant::now()));
            }
        }
    });
    arrivals
}

/// Publishes 1, 2, 3... every 20 ms; returns the sequence numbers Redis
/// delivered to both nodes.
fn publish_forever(
    ports: Vec<u16>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut backend = Backend::new(ports);
        let mut both = Vec::new();
        let mut seq = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            seq += 1;
            if let Ok(Ok(2)) = tokio::time::timeout(
                Duration::from_millis(500),
                backend.spublish(CHANNEL, &seq.to_string()),
            )
            .await
            {
                both.push(seq);
            }
        }
        both
    })
}

fn longest_gap(arrivals: &[(u64, Instant)]) -> Duration {
    arrivals
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default()
}

async fn wait_for_arrivals_after(arrivals: &Arrivals, after: Instant, n: usize, limit: Duration) {
    let start = Instant::now();
    loop {
        let count = arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at > after)
            .count();
        if count >= n {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "delivery did not resume within {limit:?} ({count} events since the fault)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `fault` while two nodes' sockets receive a steady stream; returns
/// the worst gap and checks that delivery resumed without reconnects.
async fn gap_through(
    cluster: &mut RedisCluster,
    what: &str,
    target: Duration,
    fault: impl AsyncFnOnce(&mut RedisCluster),
) {
    let a = redis_gateway(cluster.seeds(), true, "sharded")
        .ready()
        .await;
    let b = redis_gateway(cluster.seeds(), true, "sharded")
        .ready()
        .await;
    let mut on_a = a.connect(&token("fa", &[ROOM])).await;
    let mut on_b = b.connect(&token("fb", &[ROOM])).await;
    on_a.subscribe(ROOM).await;
    on_b.subscribe(ROOM).await;
    let (rec_a, rec_b) = (record(on_a), record(on_b));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = publish_forever(cluster.ports(), stop.clone());
    let before = Instant::now();
    for rec in [&rec_a, &rec_b] {
        wait_for_arrivals_after(rec, before, 10, DEADLINE).await;
    }

    let fault_at = Instant::now();
    fault(cluster).await;
    for rec in [&rec_a, &rec_b] {
        wait_for_arrivals_after(rec, fault_at, 25, Duration::from_secs(30)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let both = publisher.await.unwrap();
    // What Redis reported delivered to both nodes is on its way to both
    // sockets: wait until all of it has arrived, or until the deadline (then
    // the assertions below name what is missing).
    for rec in [&rec_a, &rec_b] {
        until(DEADLINE, || async {
            let got: HashSet<u64> = rec.lock().unwrap().iter().map(|(s, _)| *s).collect();
            both.iter().all(|s| got.contains(s))
        })
        .await;
    }

    for (node, rec, gw) in [("A", &rec_a, &a), ("B", &rec_b, &b)] {
        let arrivals = rec.lock().unwrap().clone();
        let gap = longest_gap(&arrivals);
        println!(
            "{what}: node {node} delivery gap {} ms (target < {} ms){}",
            gap.as_millis(),
            target.as_millis(),
            if gap < target {
                ""
            } else {
                "  ** OVER TARGET **"
            }
        );
        assert!(gap < target * 2, "{what}: gap {gap:?} on node {node}");
        let got: HashSet<u64> = arrivals.iter().map(|(s, _)| *s).collect();
        let missing: Vec<u64> = both.iter().filter(|s| !got.contains(s)).copied().collect();
        assert!(
            missing.is_empty(),
            "{what}: node {node} lost events Redis delivered to it: {missing:?}"
        );
        let seqs: Vec<u64> = arrivals.iter().map(|(s, _)| *s).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{what}: node {node} reordered events"
        );
        assert_eq!(
            gw.node.metrics.upgrades_accepted.get(),
            1,
            "no client reconnected"
        );
        gw.wait_ready().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_crash_fails_over_and_delivery_resumes() {
    require_redis!();
    let mut cluster = RedisCluster::start().await;
    gap_through(
        &mut cluster,
        "(a) master crash",
        Duration::from_secs(5),
        async |cluster| {
            let owner = cluster
                .owner(fred::util::redis_keyslot(CHANNEL.as_bytes()))
                .await;
            cluster.server(owner).kill();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_resumes_delivery() {
    require_redis!();
    let mut cluster = RedisCluster::start().await;
    gap_through(
        &mut cluster,
        "(b) planned CLUSTER FAILOVER",
        Duration::from_secs(3),
        async |cluster| {
            let owner = cluster
                .owner(fred::util::redis_keyslot(CHANNEL.as_bytes()))
                .await;
            let replica = cluster.replica_of(owner).await;
            let reply = Resp::connect(replica)
                .await
                .unwrap()
                .cmd(&["CLUSTER", "FAILOVER"])
                .await
                .unwrap();
            assert_eq!(reply, Reply::Simple("OK".into()));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_resumes_delivery() {
    require_redis!();
    let mut cluster = RedisCluster::start().await;
    gap_through(
        &mut cluster,
        "(c) slot migration",
        Duration::from_secs(3),
        async |cluster| {
            // Only presence keeps keys beside a channel without history.
            let moved = cluster
                .migrate_slot(fred::util::redis_keyslot(CHANNEL.as_bytes()))
                .await;
            assert!(
                moved.iter().all(|k| k.contains(CHANNEL)),
                "only the room's own keys: {moved:?}"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_up_means_not_ready_until_it_is_up() {
    require_redis!();
    let port = free_ports(1)[0];
    let gw = redis_gateway(vec![format!("127.0.0.1:{port}")], false, "sharded")
        .start()
        .await;
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 503);
    let early = gw
        .ws_url(&token("early", &[]))
        .into_client_request()
        .unwrap();
    assert_eq!(
        gw.refused(early).await.0,
        503,
        "no socket is admitted while Redis is down"
    );
    // Still not ready after a few reconnect attempts (backoff 100, 200, 400
    // ms). The node counts no failed attempt (gateway_broker_reconnects_total
    // counts successful ones), so there is no event to wait for: readiness is
    // sampled throughout the first retries instead, and is 503 every time.
    let window = Instant::now();
    loop {
        assert_eq!(gw.get("/readyz").await.0, 503);
        if window.elapsed() >= Duration::from_millis(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let redis = RedisServer::spawn(port, false, &[]);
    redis.wait_ready().await;
    gw.wait_ready().await;
    assert_eq!(gw.get("/readyz").await.0, 200);
    let mut c = gw.connect(&token("late", &["r"])).await;
    c.subscribe("r").await;
    let reply = Resp::connect(port)
        .await
        .unwrap()
        .cmd(&["SPUBLISH", "gw:room:r", "{}"])
        .await
        .unwrap();
    assert_eq!(reply, Reply::Int(1));
    assert_eq!(c.recv().await, event("room:r", json!({})));
    assert!(gw.node.metrics.broker_up.get() == 1);
}
