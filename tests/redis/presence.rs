//! Presence and the server API over a real Redis Cluster and several nodes
//! (contract sections 7 and 8): counts across nodes, a SIGKILLed node's
//! entries and registry entry gone within their TTLs, join / leave on the
//! first socket in and the last out cluster-wide, disconnect and revoke
//! reaching every node within a second, and a node started after a
//! revocation refusing it too.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;
use crate::require_redis;

/// Presence and registry TTLs of these tests (the contract's are 30 s).
const TTL: u64 = 3;

fn short_ttls(c: &mut gateway::config::Config) {
    c.presence.ttl_seconds = TTL;
    c.server.registry_ttl_seconds = TTL;
}

async fn node(
    cluster: &RedisCluster,
    id: &str,
    edit: impl FnOnce(&mut gateway::config::Config),
) -> TestGateway {
    let id = id.to_owned();
    redis_gateway(cluster.seeds(), true, "sharded")
        .config(|c| {
            short_ttls(c);
            c.server.node_id = id;
            edit(c);
        })
        .ready()
        .await
}

/// A gateway process on the cluster (so that it can be SIGKILLed), and a
/// socket on it subscribed to `room` as `user`.
async fn killable_node(cluster: &RedisCluster, id: &str, user: &str, room: &str) -> (Proc, Client) {
    let port = free_port();
    let child = gateway_command(&repo())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("GATEWAY_AUTH_HS_SECRET", SECRET)
        .env("GATEWAY_API_KEYS", API_KEY)
        .env("GATEWAY_SERVER_NODE_ID", id)
        // The same [history] as the in-process nodes: one library per cluster.
        .env("GATEWAY_HISTORY_SIZE", "0")
        .env("GATEWAY_HISTORY_USER_SIZE", "0")
        .env("GATEWAY_PRESENCE_TTL_SECONDS", TTL.to_string())
        .env("GATEWAY_SERVER_REGISTRY_TTL_SECONDS", TTL.to_string())
        .env("GATEWAY_BROKER_KIND", "redis")
        .env("GATEWAY_BROKER_REDIS_NODES", cluster.seeds().join(","))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Proc::kill_on_drop(child, "gateway");
    let url = format!("ws://127.0.0.1:{port}/ws?token={}", token(user, &[room]));
    let deadline = Instant::now() + DEADLINE;
    let mut c = loop {
        match tokio_tungstenite::connect_async(url.as_str().into_client_request().unwrap()).await {
            Ok((ws, _)) => break Client::new(ws, None).with_deadline(DEADLINE),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the gateway process never accepted: {e}"),
        }
    };
    assert_eq!(c.recv().await["type"], "welcome");
    c.subscribe(room).await;
    (child, c)
}

fn sigkill(p: &Proc) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &p.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn ask(c: &mut Client, room: &str) -> Value {
    c.send(json!({"type": "presence", "room": room, "id": "p"}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "ok", "{reply}");
    reply["presence"].clone()
}

fn counts(p: &Value) -> (u64, u64) {
    (p["users"].as_u64().unwrap(), p["clients"].as_u64().unwrap())
}

fn node_ids(body: &Value) -> Vec<String> {
    body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_the_registry_span_nodes_and_forget_a_killed_one_within_the_ttl() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let a = node(&cluster, "node-a", |_| {}).await;
    // node-b lists at most 2 members: more users than that is a subset.
    let b = node(&cluster, "node-b", |c| c.presence.max_members = 2).await;
    let (killed, _on_killed) = killable_node(&cluster, "node-k", "carol", "lobby").await;
    let alice = token("alice", &["lobby"]);
    let mut a1 = a.connect(&alice).await;
    let mut a2 = b.connect(&alice).await;
    let mut bob = b.connect(&token("bob", &["lobby"])).await;
    for c in [&mut a1, &mut a2, &mut bob] {
        c.subscribe("lobby").await;
    }
    // alice twice (two nodes), bob, carol (on the process): 3 users, 4 sockets.
    let p = ask(&mut a1, "lobby").await;
    assert_eq!(counts(&p), (3, 4), "{p}");
    let mut members: Vec<_> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["alice", "bob", "carol"]);
    assert_eq!(p["truncated"], false, "{p}");
    // Any node answers the same counts; node-b a bounded subset of members.
    let on_b = b.presence("lobby").await;
    assert_eq!(counts(&on_b), (3, 4), "{on_b}");
    assert_eq!(on_b["truncated"], true, "{on_b}");
    let subset = on_b["members"].as_array().unwrap();
    assert_eq!(subset.len(), 2, "{on_b}");
    assert!(
        subset
            .iter()
            .all(|m| members.contains(&m.as_str().unwrap())),
        "{on_b}"
    );

    // Unsubscribe removes by its `ok`, cluster-wide.
    bob.unsubscribe("lobby").await;
    assert_eq!(counts(&ask(&mut a1, "lobby").await), (2, 3));
    // A close removes as soon as its node sends it.
    drop(a2);
    eventually_async("alice's closed socket gone", DEADLINE, || async {
        counts(&a.presence("lobby").await) == (2, 2)
    })
    .await;

    // The registry lists all three.
    eventually_async("three nodes registered", DEADLINE, || async {
        node_ids(&a.api("GET", "/api/nodes", "").await.1) == ["node-a", "node-b", "node-k"]
    })
    .await;

    // SIGKILL: nothing is closed, nothing is sent; the TTLs remove it.
    sigkill(&killed);
    let killed_at = Instant::now();
    eventually_async("carol gone from presence", DEADLINE, || async {
        counts(&b.presence("lobby").await) == (1, 1)
    })
    .await;
    let presence_gone = killed_at.elapsed();
    eventually_async("node-k gone from the registry", DEADLINE, || async {
        node_ids(&b.api("GET", "/api/nodes", "").await.1) == ["node-a", "node-b"]
    })
    .await;
    let registry_gone = killed_at.elapsed();
    // Entries lapse one TTL after the last refresh, which came at most a
    // third of a TTL before the kill; a poll's worth of slack on top.
    let bound = Duration::from_secs(TTL) + Duration::from_millis(500);
    assert!(presence_gone <= bound, "presence took {presence_gone:?}");
    assert!(registry_gone <= bound, "registry took {registry_gone:?}");
    assert_eq!(ask(&mut a1, "lobby").await["members"], json!(["alice"]));
}

async fn next_move(c: &mut Client, me: &str) -> Value {
    loop {
        let frame = c.recv().await;
        let kind = frame["type"].as_str().unwrap_or_default();
        if (kind == "join" || kind == "leave") && frame["user"] != me {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_are_first_in_last_out_across_nodes_and_quiet_above_the_threshold() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let events = |c: &mut gateway::config::Config| {
        c.presence.events = vec!["chat:*".into()];
        c.presence.events_max_members = 3;
    };
    let a = node(&cluster, "a", events).await;
    let b = node(&cluster, "b", events).await;
    let mut watcher = a.connect(&token("w", &["chat:*"])).await;
    watcher.subscribe("chat:1").await;
    let bob = token("bob", &["chat:*"]);
    let mut on_b = b.connect(&bob).await;
    on_b.subscribe("chat:1").await;
    assert_eq!(
        next_move(&mut watcher, "w").await,
        json!({"type": "join", "channel": "room:chat:1", "user": "bob"})
    );
    // bob's second socket, on the other node, then his first one closing:
    // neither is first-in nor last-out.
    let mut on_a = a.connect(&bob).await;
    on_a.subscribe("chat:1").await;
    drop(on_b);
    eventually_async("bob's first socket gone", DEADLINE, || async {
        counts(&a.presence("chat:1").await) == (2, 2)
    })
    .await;
    // In order on the room's channel: anything wrongly fired comes first.
    let mut carol = b.connect(&token("carol", &["chat:*"])).await;
    carol.subscribe("chat:1").await;
    assert_eq!(next_move(&mut watcher, "w").await["user"], "carol");
    // A fourth user is above the threshold of 3: no join.
    let mut dave = b.connect(&token("dave", &["chat:*"])).await;
    dave.subscribe("chat:1").await;
    assert_eq!(counts(&a.presence("chat:1").await), (4, 4));
    // Back to 3 users when bob's last socket goes: his leave is delivered,
    // and it is the next move (dave's join never was).
    drop(on_a);
    assert_eq!(
        next_move(&mut watcher, "w").await,
        json!({"type": "leave", "channel": "room:chat:1", "user": "bob"})
    );
}

/// Waits for `c` to close; the code and how long after `since` it came.
async fn closed_after(c: &mut Client, since: Instant) -> (u16, Duration) {
    match c.ended().await {
        Ended::Closed(code) => (code, since.elapsed()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_revoke_reach_every_node_within_a_second() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let a = node(&cluster, "a", |_| {}).await;
    let b = node(&cluster, "b", |_| {}).await;
    let second = Duration::from_secs(1);

    // Disconnect, both codes, sockets on both nodes.
    for (reconnect, code) in [(false, 4003), (true, 1012)] {
        let alice = token("alice", &["lobby"]);
        let (mut on_a, mut on_b) = (a.connect(&alice).await, b.connect(&alice).await);
        let body = json!({"user": "alice", "reconnect": reconnect}).to_string();
        let sent = Instant::now();
        assert_eq!(a.api("POST", "/api/disconnect", &body).await.0, 200);
        for c in [&mut on_a, &mut on_b] {
            let (got, after) = closed_after(c, sent).await;
            assert_eq!(got, code);
            assert!(after < second, "closed {after:?} after the call");
        }
    }

    // Revoke by jti: sockets using it closed with 4001 on both nodes,
    // the next upgrade refused, a refresh to it refused.
    let tok = |jti: &str, iat: u64| {
        sign(
            &json!({"sub": "alice", "exp": now() + 3600, "iat": iat, "jti": jti, "rooms": ["lobby"]}),
        )
    };
    let stolen = tok("stolen", now());
    let (mut on_a, mut on_b) = (a.connect(&stolen).await, b.connect(&stolen).await);
    let mut bystander = b.connect(&tok("other", now())).await;
    let sent = Instant::now();
    assert_eq!(
        b.api("POST", "/api/revoke", r#"{"jti":"stolen"}"#).await.0,
        200
    );
    for c in [&mut on_a, &mut on_b] {
        let (got, after) = closed_after(c, sent).await;
        assert_eq!(got, 4001);
        assert!(after < second, "closed {after:?} after the call");
    }
    for gw in [&a, &b] {
        let (status, body) = gw.refused(gw.request(Some(&stolen))).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (401, json!("revoked"))
        );
    }
    bystander
        .send(json!({"type": "refresh", "token": stolen, "id": 1}))
        .await;
    assert_eq!(bystander.recv().await["code"], "bad_token");

    // Revoke by user and cut-off.
    let cut = now();
    let old = tok("old", cut - 60);
    let (mut on_a, mut on_b) = (a.connect(&old).await, b.connect(&old).await);
    let fresh = tok("fresh", cut);
    let mut keeps = a.connect(&fresh).await;
    let sent = Instant::now();
    let body = json!({"user": "alice", "issued_before": cut}).to_string();
    assert_eq!(a.api("POST", "/api/revoke", &body).await.0, 200);
    for c in [&mut on_a, &mut on_b] {
        let (got, after) = closed_after(c, sent).await;
        assert_eq!(got, 4001);
        assert!(after < second, "closed {after:?} after the call");
    }
    keeps.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(
        keeps.recv().await["type"],
        "pong",
        "issued at the cut-off: valid"
    );

    // A node started after both revocations refuses both tokens.
    let late = node(&cluster, "late", |_| {}).await;
    eventually("the late node loaded the revocations", DEADLINE, || {
        late.node.revocations.len() >= 2
    })
    .await;
    for t in [&stolen, &old] {
        let (status, body) = late.refused(late.request(Some(t))).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (401, json!("revoked"))
        );
    }
    late.connect(&fresh).await;
}
