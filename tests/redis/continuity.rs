//! Continuity over a real Redis Cluster (contract section 6): offsets stay
//! contiguous with several publishers, history lives in each channel's own
//! slot whatever the name holds, a node repairs its own gaps (and sends one
//! `resync` where history cannot), clients resume across nodes after a
//! drain, a SIGKILL and a rolling restart, and Redis faults lose nothing
//! history can give back.

use std::time::Duration;

use fred::clients::Client as Fred;
use fred::interfaces::{ClientLike, FunctionInterface};
use fred::prelude::{Builder as FredBuilder, Config as FredConfig, ServerConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;
use crate::require_redis;

/// A node on the cluster with history on.
async fn node(
    cluster: &RedisCluster,
    edit: impl FnOnce(&mut gateway::config::Config),
) -> TestGateway {
    redis_gateway(cluster.seeds(), true, "sharded")
        .config(|c| {
            with_history(c);
            edit(c);
        })
        .ready()
        .await
}

/// A backend's own cluster client, as a service would use (redirects handled).
async fn backend(cluster: &RedisCluster) -> Fred {
    let servers = cluster
        .ports()
        .iter()
        .map(|p| ("127.0.0.1".to_owned(), *p))
        .collect();
    let mut builder = FredBuilder::from_config(FredConfig {
        server: ServerConfig::new_clustered(servers),
        ..FredConfig::default()
    });
    // fred never reconnects without a policy: a backend would set one.
    builder.set_policy(fred::prelude::ReconnectPolicy::new_constant(0, 100));
    let client = builder.build().unwrap();
    client.init().await.unwrap();
    client
}

/// `FCALL gw_publish 1 <channel> <data>`: the offset.
async fn fcall(client: &Fred, channel: &str, data: &Value) -> i64 {
    client
        .fcall::<i64, _, _, _>("gw_publish", vec![channel], vec![data.to_string()])
        .await
        .unwrap()
}

async fn subscribe(c: &mut Client, room: &str, since: Option<Value>) -> Value {
    let mut frame = json!({"type": "subscribe", "room": room, "id": room});
    if let Some(since) = since {
        frame["since"] = since;
    }
    c.send(frame).await;
    let ok = c.recv().await;
    assert_eq!(ok["type"], "ok", "{ok}");
    ok
}

/// Reads frames until `seen` holds `offset` on `channel`.
async fn read_until(c: &mut Client, seen: &mut Seen, channel: &str, offset: u64) {
    while seen.of(channel).offset < offset {
        let frame = c.recv().await;
        seen.record(&frame);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_stay_contiguous_with_two_nodes_and_a_backend_publishing_at_once() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let (a, b) = (node(&cluster, |_| {}).await, node(&cluster, |_| {}).await);
    let tok = token("alice", &["lobby"]);
    let mut on_a = a.connect(&tok).await;
    let mut on_b = b.connect(&tok).await;
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    seen_a.subscribed("lobby", &subscribe(&mut on_a, "lobby", None).await);
    seen_b.subscribed("lobby", &subscribe(&mut on_b, "lobby", None).await);
    let fred = backend(&cluster).await;
    let publish_via = |gw: &TestGateway| {
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..50 {
                let body = json!({"channel": "room:lobby", "data": n}).to_string();
                let auth = format!("Bearer {API_KEY}");
                let (status, reply) = http(
                    addr,
                    "POST",
                    "/api/publish",
                    &[("authorization", &auth)],
                    &body,
                )
                .await;
                assert_eq!(status, 202, "{reply}");
                let reply: Value = serde_json::from_str(&reply).unwrap();
                offsets.push(reply["offset"].as_u64().unwrap());
            }
            offsets
        })
    };
    let (via_a, via_b) = (publish_via(&a), publish_via(&b));
    let mut via_backend = Vec::new();
    for n in 0..50 {
        via_backend.push(fcall(&fred, "gw:room:lobby", &json!(n)).await as u64);
    }
    let mut all: Vec<u64> = via_a.await.unwrap();
    all.extend(via_b.await.unwrap());
    all.extend(via_backend);
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=150).collect::<Vec<_>>(),
        "every publisher got a distinct offset"
    );
    read_until(&mut on_a, &mut seen_a, "room:lobby", 150).await;
    read_until(&mut on_b, &mut seen_b, "room:lobby", 150).await;
    seen_a.of("room:lobby").assert_exactly(1..=150, "node A");
    seen_b.of("room:lobby").assert_exactly(1..=150, "node B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_with_braces_keep_history_in_their_own_slot() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let gw = node(&cluster, |_| {}).await;
    let fred = backend(&cluster).await;
    // A hash tag, an open brace, a lone close brace, braces reversed, an
    // empty tag: each needs its keys in the channel's slot another way.
    for user in ["a{b}c", "x{y", "a}b", "}{z", "{}x", "{", "}", "plain"] {
        let channel = format!("gw:user:{user}");
        for expected in 1..=3 {
            // Redis refuses a script touching another slot's keys: this fails
            // if the keys were derived wrongly.
            assert_eq!(
                fcall(&fred, &channel, &json!(expected)).await,
                expected,
                "{user}"
            );
        }
        // Resume the user channel from offset 1: 2 and 3 are replayed.
        let mut seen = Seen::default();
        seen.channels.insert(
            format!("user:{user}"),
            Stream {
                epoch: Some(history_epoch(&gw, &format!("user:{user}")).await),
                offset: 1,
                ..Stream::default()
            },
        );
        let tok = sign(&json!({"sub": user, "exp": now() + 600}));
        // The user id goes into the query as the token's `sub`; the resume
        // parameters carry only the offset and epoch.
        let (mut c, welcome) = reconnect(&gw, &tok, user, &seen).await;
        assert_eq!(welcome["recovered"], true, "{user}: {welcome}");
        seen.welcome(&welcome, user);
        read_until(&mut c, &mut seen, &format!("user:{user}"), 3).await;
        assert_eq!(seen.of(&format!("user:{user}")).received, [2, 3], "{user}");
    }
}

async fn history_epoch(gw: &TestGateway, channel: &str) -> String {
    let auth = format!("Bearer {API_KEY}");
    let query = format!("/api/history?channel={}&limit=1", urlencode(channel));
    let (status, body) = http(gw.addr, "GET", &query, &[("authorization", &auth)], "").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["epoch"].as_str().unwrap().to_owned()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Kills every pub/sub connection on every master (the node reconnects
/// within its backoff), then publishes `n` events with FCALL at once: they
/// happen while the node is not subscribed.
async fn publish_while_unsubscribed(cluster: &RedisCluster, fred: &Fred, channel: &str, n: usize) {
    for port in cluster.ports() {
        if let Ok(mut c) = Resp::connect(port).await {
            let _ = c.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        }
    }
    for i in 0..n {
        fcall(fred, channel, &json!(i)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fills_what_it_missed_while_its_subscription_was_down() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let gw = node(&cluster, |c| c.broker.redis.reconnect_min_ms = 300).await;
    let fred = backend(&cluster).await;
    let mut c = gw.connect(&token("alice", &["lobby"])).await;
    let mut seen = Seen::default();
    seen.subscribed("lobby", &subscribe(&mut c, "lobby", None).await);
    for i in 0..5 {
        fcall(&fred, "gw:room:lobby", &json!(i)).await;
    }
    read_until(&mut c, &mut seen, "room:lobby", 5).await;
    publish_while_unsubscribed(&cluster, &fred, "gw:room:lobby", 10).await;
    // Nothing new is published: the node finds the gap by itself.
    read_until(&mut c, &mut seen, "room:lobby", 15).await;
    seen.of("room:lobby")
        .assert_exactly(1..=15, "repaired after a reconnect");
    assert!(seen.of("room:lobby").resyncs.is_empty());
    assert!(gw.metric("gateway_history_repaired_total").await >= 10.0);
    assert_eq!(
        gw.node.metrics.upgrades_accepted.get(),
        1,
        "the client never reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_history_cannot_fill_is_exactly_one_resync() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let gw = node(&cluster, |c| {
        c.history.size = 3;
        c.broker.redis.reconnect_min_ms = 300;
    })
    .await;
    let fred = backend(&cluster).await;
    let mut c = gw.connect(&token("alice", &["lobby"])).await;
    let mut seen = Seen::default();
    seen.subscribed("lobby", &subscribe(&mut c, "lobby", None).await);
    fcall(&fred, "gw:room:lobby", &json!(0)).await;
    read_until(&mut c, &mut seen, "room:lobby", 1).await;
    publish_while_unsubscribed(&cluster, &fred, "gw:room:lobby", 10).await;
    read_until(&mut c, &mut seen, "room:lobby", 11).await;
    let s = seen.of("room:lobby");
    assert_eq!(s.resyncs.len(), 1, "exactly one resync: {:?}", s.resyncs);
    assert_eq!(s.resyncs[0].0, 8, "2..=8 are gone; 9..=11 follow");
    assert_eq!(s.received, [1, 9, 10, 11]);
    // Live events follow in order after it.
    fcall(&fred, "gw:room:lobby", &json!(12)).await;
    read_until(&mut c, &mut seen, "room:lobby", 12).await;
    assert_eq!(seen.of("room:lobby").received, [1, 9, 10, 11, 12]);
    assert_eq!(gw.metric("gateway_resyncs_sent_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_on_another_node_after_a_drain_and_a_sigkill() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let b = node(&cluster, |_| {}).await;
    let fred = backend(&cluster).await;
    let tok = token("alice", &["lobby"]);
    let mut seen = Seen::default();

    // (1) Drain: node A closes with 1012; the client resumes on B.
    let a = node(&cluster, |_| {}).await;
    let mut c = a.connect(&tok).await;
    seen.subscribed("lobby", &subscribe(&mut c, "lobby", None).await);
    for i in 0..10 {
        fcall(&fred, "gw:room:lobby", &json!(i)).await;
    }
    read_until(&mut c, &mut seen, "room:lobby", 10).await;
    a.node.lifecycle.begin_drain();
    let (frames, ended) = c.until_closed().await;
    assert_eq!(ended, Ended::Closed(1012));
    for f in &frames {
        seen.record(f);
    }
    for i in 10..20 {
        fcall(&fred, "gw:room:lobby", &json!(i)).await;
    }
    let mut c = b.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", seen.of("room:lobby").since()).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    seen.subscribed("lobby", &ok);
    read_until(&mut c, &mut seen, "room:lobby", 20).await;

    // (2) SIGKILL: a real gateway process dies without closing anything.
    let port = free_port();
    let mut child = gateway_command(&repo())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("GATEWAY_AUTH_HS_SECRET", SECRET)
        .env("GATEWAY_BROKER_KIND", "redis")
        .env("GATEWAY_BROKER_REDIS_NODES", cluster.seeds().join(","))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws?token={tok}");
    let mut killed = loop {
        match tokio_tungstenite::connect_async(url.as_str().into_client_request().unwrap()).await {
            Ok((ws, _)) => break Client::new(ws, None),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(killed.recv().await["type"], "welcome");
    let ok = subscribe(&mut killed, "lobby", seen.of("room:lobby").since()).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    for i in 20..25 {
        fcall(&fred, "gw:room:lobby", &json!(i)).await;
    }
    read_until(&mut killed, &mut seen, "room:lobby", 25).await;
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
    for i in 25..35 {
        fcall(&fred, "gw:room:lobby", &json!(i)).await;
    }
    let mut c = b.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", seen.of("room:lobby").since()).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    seen.subscribed("lobby", &ok);
    read_until(&mut c, &mut seen, "room:lobby", 35).await;
    seen.of("room:lobby")
        .assert_exactly(1..=35, "across a drain and a SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_redis_data_means_a_new_epoch_and_recovered_false() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let gw = node(&cluster, |_| {}).await;
    let fred = backend(&cluster).await;
    let tok = token("alice", &["lobby"]);
    let mut c = gw.connect(&tok).await;
    let mut seen = Seen::default();
    seen.subscribed("lobby", &subscribe(&mut c, "lobby", None).await);
    for i in 0..3 {
        fcall(&fred, "gw:room:lobby", &json!(i)).await;
    }
    read_until(&mut c, &mut seen, "room:lobby", 3).await;
    let since = seen.of("room:lobby").since();
    drop(c);
    for port in cluster.ports() {
        let mut r = Resp::connect(port).await.unwrap();
        let _ = r.cmd(&["FLUSHALL"]).await;
    }
    assert_eq!(
        fcall(&fred, "gw:room:lobby", &json!("after")).await,
        1,
        "offsets restart"
    );
    let mut c = gw.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", since.clone()).await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_ne!(ok["epoch"], since.unwrap()["epoch"]);
}

/// Runs `fault` while a backend publishes with FCALL every 20 ms to a room
/// two nodes' sockets follow without ever reconnecting; returns what each
/// socket saw, the offsets the backend had acknowledged, and the longest
/// silence a socket saw.
async fn through_fault(
    cluster: &mut RedisCluster,
    what: &str,
    fault: impl AsyncFnOnce(&mut RedisCluster),
) -> Vec<(Seen, Duration)> {
    const ROOM: &str = "fault";
    const CHANNEL: &str = "gw:room:fault";
    // History longer than the fault lasts: what is lost is what Redis lost.
    let a = node(cluster, |c| c.history.size = 10_000).await;
    let b = node(cluster, |c| c.history.size = 10_000).await;
    let tok = token("alice", &[ROOM]);
    let mut sockets = Vec::new();
    for gw in [&a, &b] {
        let mut c = gw.connect(&tok).await;
        let mut seen = Seen::default();
        seen.subscribed(ROOM, &subscribe(&mut c, ROOM, None).await);
        sockets.push((c, seen));
    }
    let fred = backend(cluster).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (fred, stop, acks) = (fred.clone(), stop.clone(), acks.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let sent =
                    fred.fcall::<i64, _, _, _>("gw_publish", vec![CHANNEL], vec![n.to_string()]);
                if let Ok(Ok(offset)) = tokio::time::timeout(Duration::from_secs(1), sent).await {
                    acked.push(offset as u64);
                    acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            acked
        })
    };
    // Readers: every frame, with the longest silence between two events,
    // until they reach the last offset the backend had acknowledged (sent
    // once it stopped) or the deadline.
    let (target_tx, target) = tokio::sync::watch::channel(u64::MAX);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(mut c, mut seen)| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut last = tokio::time::Instant::now();
                let mut gap = Duration::ZERO;
                let started = tokio::time::Instant::now();
                while seen.of("room:fault").offset < *target.borrow()
                    && started.elapsed() < Duration::from_secs(60)
                {
                    let Some(frame) = c.recv_within(Duration::from_millis(200)).await else {
                        continue;
                    };
                    if frame["type"] == "event" {
                        gap = gap.max(last.elapsed());
                        last = tokio::time::Instant::now();
                    }
                    seen.record(&frame);
                }
                (seen, gap)
            })
        })
        .collect();
    let count = || acks.load(std::sync::atomic::Ordering::Relaxed);
    eventually("the backend publishes", DEADLINE, || count() >= 25).await;
    fault(cluster).await;
    // Publish on until the backend has had 75 more acknowledgements: well
    // after the cluster settled (a crash takes its failover time first).
    let at_fault = count();
    eventually(
        "publishing resumes after the fault",
        Duration::from_secs(30),
        || count() >= at_fault + 75,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = publisher.await.unwrap();
    let _ = target_tx.send(*acked.last().expect("the backend published"));
    let mut out = Vec::new();
    for r in readers {
        out.push(r.await.unwrap());
    }
    let last = *acked.last().expect("the backend published");
    for (i, (seen, gap)) in out.iter().enumerate() {
        let s = seen.of("room:fault");
        println!(
            "{what}: socket {i}: {} events, {} resyncs, longest silence {} ms, last acked {last}",
            s.received.len(),
            s.resyncs.len(),
            gap.as_millis()
        );
        assert!(
            s.offset >= last,
            "{what}: socket {i} stopped at {} of {last}: {:?} resyncs {:?}",
            s.offset,
            s.timeline,
            s.resyncs
        );
    }
    assert_eq!(
        a.node.metrics.upgrades_accepted.get() + b.node.metrics.upgrades_accepted.get(),
        2,
        "no socket reconnected"
    );
    out
}

fn planned_fault_lost_nothing(what: &str, seen: &[(Seen, Duration)]) {
    for (seen, _) in seen {
        let s = seen.of("room:fault");
        assert!(s.resyncs.is_empty(), "{what}: no resync: {:?}", s.resyncs);
        let last = s.offset;
        s.assert_exactly(1..=last, what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_loses_no_offset() {
    require_redis!();
    let mut cluster = RedisCluster::start().await;
    let seen = through_fault(&mut cluster, "planned CLUSTER FAILOVER", async |cluster| {
        let owner = cluster
            .owner(fred::util::redis_keyslot(b"gw:room:fault"))
            .await;
        let replica = cluster.replica_of(owner).await;
        let reply = Resp::connect(replica)
            .await
            .unwrap()
            .cmd(&["CLUSTER", "FAILOVER"])
            .await
            .unwrap();
        assert_eq!(reply, Reply::Simple("OK".into()));
    })
    .await;
    planned_fault_lost_nothing("planned failover", &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_with_its_history_loses_no_offset() {
    require_redis!();
    let mut cluster = RedisCluster::start().await;
    let seen = through_fault(&mut cluster, "slot migration", async |cluster| {
        // The history keys move with their slot (presence's too).
        let moved = cluster
            .migrate_slot(fred::util::redis_keyslot(b"gw:room:fault"))
            .await;
        for key in ["h|{gw:room:fault}", "m|{gw:room:fault}"] {
            assert!(moved.iter().any(|k| k == key), "{key} not in {moved:?}");
        }
    })
    .await;
    planned_fault_lost_nothing("slot migration", &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_crash_loses_only_what_resync_announces() {
    require_redis!();
    let mut cluster = RedisCluster::start().await;
    let seen = through_fault(&mut cluster, "master crash", async |cluster| {
        let owner = cluster
            .owner(fred::util::redis_keyslot(b"gw:room:fault"))
            .await;
        cluster.server(owner).kill();
    })
    .await;
    for (i, (seen, _)) in seen.iter().enumerate() {
        let s = seen.of("room:fault");
        // Every event is the next one after the last position: nothing was
        // lost silently; what asynchronous replication lost is announced.
        let announced = s.assert_consistent(1, &format!("socket {i}"));
        println!("master crash: socket {i}: {announced} offsets announced lost by resync");
    }
}

/// One socket of the rolling restart: connects to a live node, resumes
/// everything it follows, reads, and on any close starts over on another
/// node; returns what it saw once its room reached the target offset.
async fn resuming_socket(
    i: usize,
    nodes: tokio::sync::watch::Receiver<Vec<std::net::SocketAddr>>,
    target: tokio::sync::watch::Receiver<Option<Vec<u64>>>,
) -> (String, Seen, usize) {
    let user = format!("u{i}");
    let room = format!("r{}", i % 30);
    let channel = format!("room:{room}");
    let tok = sign(&json!({"sub": user, "exp": now() + 3600, "rooms": [room]}));
    let mut seen = Seen::default();
    let mut connects = 0;
    let started = tokio::time::Instant::now();
    'connect: loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "socket {i} never finished"
        );
        let addrs = nodes.borrow().clone();
        let addr = addrs[(i + connects) % addrs.len()];
        connects += 1;
        let url = format!("ws://{addr}/ws?token={tok}{}", seen.resume_query(&user));
        let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url.as_str().into_client_request().unwrap()),
        )
        .await
        else {
            // A node just stopped: try another one.
            continue;
        };
        let mut c = Client::new(ws, None);
        let welcome = c.recv().await;
        seen.welcome(&welcome, &user);
        let mut frame = json!({"type": "subscribe", "room": room, "id": 1});
        if let Some(since) = seen.of(&channel).since() {
            frame["since"] = since;
        }
        c.send(frame).await;
        loop {
            use futures_util::StreamExt;
            use tokio_tungstenite::tungstenite::Message;
            let msg = match tokio::time::timeout(Duration::from_millis(200), c.ws.next()).await {
                Err(_) => {
                    let done = target
                        .borrow()
                        .as_ref()
                        .is_some_and(|tops| seen.of(&channel).offset >= tops[i % 30]);
                    if done {
                        return (channel, seen, connects);
                    }
                    continue;
                }
                Ok(msg) => msg,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let frame: Value = serde_json::from_str(&t).unwrap();
                    if frame["type"] == "ok" {
                        assert_ne!(frame["recovered"], false, "socket {i}: {frame}");
                        seen.subscribed(&room, &frame);
                    } else {
                        seen.record(&frame);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => continue 'connect,
                Some(Ok(_)) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_nodes_loses_and_duplicates_nothing() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let start = || node(&cluster, |c| c.history.size = 10_000);
    let mut gateways = vec![start().await, start().await, start().await];
    let (nodes_tx, nodes) = tokio::sync::watch::channel(gateways.iter().map(|g| g.addr).collect());
    let (target_tx, target) = tokio::sync::watch::channel(None);
    let sockets: Vec<_> = (0..300)
        .map(|i| tokio::spawn(resuming_socket(i, nodes.clone(), target.clone())))
        .collect();
    let open = |gateways: &[TestGateway]| -> i64 {
        gateways
            .iter()
            .map(|g| g.node.metrics.subscriptions.get())
            .sum()
    };
    // Every socket in: its user channel and its room on some node.
    eventually("all sockets subscribed", Duration::from_secs(60), || {
        open(&gateways) == 600
    })
    .await;
    let fred = backend(&cluster).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (fred, stop) = (fred.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tops = vec![0u64; 30];
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let room = n % 30;
                n += 1;
                let channel = format!("gw:room:r{room}");
                tops[room] = fcall(&fred, &channel, &json!(n)).await as u64;
            }
            tops
        })
    };
    // Restart each node in turn: drain (1012 spread over a second), stop,
    // start a new one, wait until every socket is back.
    for round in 0..3 {
        let old = gateways.remove(0);
        old.node.lifecycle.begin_drain();
        assert!(
            old.run.await.unwrap(),
            "round {round}: the drain finished in time"
        );
        gateways.push(start().await);
        nodes_tx
            .send(gateways.iter().map(|g| g.addr).collect())
            .unwrap();
        eventually(
            &format!("round {round}: every socket back"),
            Duration::from_secs(60),
            || open(&gateways) == 600,
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tops = publisher.await.unwrap();
    target_tx.send(Some(tops.clone())).unwrap();
    let mut reconnects = 0;
    for socket in sockets {
        let (channel, seen, connects) = socket.await.unwrap();
        let room: usize = channel.trim_start_matches("room:r").parse().unwrap();
        let s = seen.of(&channel);
        // Its room's every offset once, in order, across every restart.
        let first = s.received.first().copied().unwrap_or(1);
        assert_eq!(first, 1, "{channel}: from the first publication");
        s.assert_exactly(1..=tops[room], &channel);
        assert!(s.resyncs.is_empty(), "{channel}: {:?}", s.resyncs);
        reconnects += connects - 1;
    }
    println!("rolling restart: 300 sockets, {reconnects} reconnects, 0 lost, 0 duplicated");
    assert!(
        reconnects >= 300,
        "every node's sockets moved at least once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seam_between_replay_and_live_holds_under_1000_events_a_second() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let gw = node(&cluster, |c| {
        c.history.size = 100_000;
        c.history.max_recover = 100_000;
    })
    .await;
    let fred = backend(&cluster).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (fred, stop) = (fred.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                fcall(&fred, "gw:room:seam", &json!(n)).await;
            }
        })
    };
    let tok = token("alice", &["seam"]);
    for round in 0..50 {
        // Resume from a little behind the top: a replay of a hundred or so
        // while events keep arriving live.
        let (since, epoch) = loop {
            let auth = format!("Bearer {API_KEY}");
            let (_, body) = http(
                gw.addr,
                "GET",
                "/api/history?channel=room:seam&limit=1",
                &[("authorization", &auth)],
                "",
            )
            .await;
            let body: Value = serde_json::from_str(&body).unwrap();
            let top = body["offset"].as_u64().unwrap();
            if top > 100 {
                break (top - 100, body["epoch"].as_str().unwrap().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut c = gw.connect(&tok).await;
        let ok = subscribe(
            &mut c,
            "seam",
            Some(json!({"offset": since, "epoch": epoch})),
        )
        .await;
        assert_eq!(ok["recovered"], true, "round {round}: {ok}");
        let mut seen = Seen::default();
        seen.channels.insert(
            "room:seam".into(),
            Stream {
                epoch: Some(epoch),
                offset: since,
                ..Stream::default()
            },
        );
        let top = ok["offset"].as_u64().unwrap();
        read_until(&mut c, &mut seen, "room:seam", top + 50).await;
        let s = seen.of("room:seam");
        assert_eq!(
            s.received,
            (since + 1..=s.offset).collect::<Vec<_>>(),
            "round {round}: no gap, no duplicate at the seam"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_works_on_a_single_redis_in_classic_mode() {
    require_redis!();
    let redis = SingleRedis::start().await;
    let gw = redis_gateway(vec![redis.server.addr()], false, "classic")
        .config(with_history)
        .ready()
        .await;
    let tok = token("alice", &["lobby"]);
    let mut c = gw.connect(&tok).await;
    let mut seen = Seen::default();
    seen.subscribed("lobby", &subscribe(&mut c, "lobby", None).await);
    for n in 1..=3 {
        assert_eq!(publish_offset(&gw, "room:lobby", json!(n)).await, n);
    }
    let mut r = Resp::connect(redis.server.port).await.unwrap();
    let reply = r
        .cmd(&["FCALL", "gw_publish", "1", "gw:room:lobby", "4"])
        .await
        .unwrap();
    assert_eq!(reply, Reply::Int(4));
    read_until(&mut c, &mut seen, "room:lobby", 4).await;
    seen.of("room:lobby").assert_exactly(1..=4, "classic mode");
    // A plain PUBLISH still delivers, without an offset.
    r.cmd(&["PUBLISH", "gw:room:lobby", "\"plain\""])
        .await
        .unwrap();
    assert_eq!(
        c.recv().await,
        json!({"type": "event", "channel": "room:lobby", "data": "plain"})
    );
}

/// The SSE fallback (contract section 9) over the cluster: a stream on one
/// node, dropped, resumes on another node from its `Last-Event-ID`, with
/// every channel's missed events once, and live ones after the seam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_resumes_on_another_node_from_its_last_event_id() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let (a, b) = (node(&cluster, |_| {}).await, node(&cluster, |_| {}).await);
    let fred = backend(&cluster).await;
    let tok = token("alice", &["lobby"]);
    let query = format!("/sse?token={tok}&rooms=lobby");
    let mut s = crate::kit::sse::open(&a, &query, &[])
        .await
        .expect("stream on A");
    let (_, _, _) = s.start(&["lobby"]).await;
    let mut last = None;
    for n in 1..=2 {
        fcall(&fred, "gw:room:lobby", &json!(n)).await;
        let (id, frame) = s.message().await;
        assert_eq!(frame["offset"], n, "{frame}");
        last = id;
    }
    drop(s);
    for n in 3..=5 {
        fcall(&fred, "gw:room:lobby", &json!(n)).await;
    }
    fcall(&fred, "gw:user:alice", &json!("u")).await;
    let last = last.unwrap();
    let mut s = crate::kit::sse::open(&b, &query, &[("last-event-id", &last)])
        .await
        .expect("stream on B");
    let (_, welcome) = s.message().await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let user = s.frame().await;
    assert_eq!(
        (user["channel"].as_str(), user["offset"].as_u64()),
        (Some("user:alice"), Some(1)),
        "{user}"
    );
    let ok = s.frame().await;
    assert_eq!(
        (ok["room"].as_str(), ok["recovered"].as_bool()),
        (Some("lobby"), Some(true)),
        "{ok}"
    );
    for n in 3..=6 {
        if n == 6 {
            fcall(&fred, "gw:room:lobby", &json!(n)).await;
        }
        let frame = s.frame().await;
        assert_eq!(
            (frame["channel"].as_str(), frame["offset"].as_u64()),
            (Some("room:lobby"), Some(n)),
            "{frame}"
        );
    }
}
