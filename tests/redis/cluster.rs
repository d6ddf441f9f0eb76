//! Fan-out through a Redis Cluster with sharded pub/sub: backend SPUBLISH,
//! user channels and broadcast across nodes, HTTP and client publishes from
//! one node to another, per-channel order, and broker interest (one shard
//! subscription per interested node, none once the last local subscriber is
//! gone, right after subscribe/unsubscribe storms).

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::harness::*;
use crate::require_redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_http_and_client_publishes_reach_sockets_on_every_node() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let a = redis_gateway(cluster.seeds(), true, "sharded")
        .ready()
        .await;
    let b = redis_gateway(cluster.seeds(), true, "sharded")
        .ready()
        .await;
    let mut alice_a = a.connect(&token("alice", &["lobby"])).await;
    let mut alice_b = b.connect(&token("alice", &[])).await;
    let mut bob_b = b.connect(&token("bob", &["lobby"])).await;
    alice_a.subscribe("lobby").await;
    bob_b.subscribe("lobby").await;
    let mut backend = Backend::new(cluster.ports());

    // SPUBLISH's count is the subscribers in Redis: one per interested node.
    assert_eq!(backend.spublish("gw:room:lobby", r#"{"n":1}"#).await, Ok(2));
    assert_eq!(alice_a.recv().await, event("room:lobby", json!({"n": 1})));
    assert_eq!(bob_b.recv().await, event("room:lobby", json!({"n": 1})));

    // alice has a socket on each node; bob is not alice.
    assert_eq!(backend.spublish("gw:user:alice", r#""hi""#).await, Ok(2));
    assert_eq!(alice_a.recv().await, event("user:alice", json!("hi")));
    assert_eq!(alice_b.recv().await, event("user:alice", json!("hi")));

    assert_eq!(backend.spublish("gw:broadcast", "7").await, Ok(2));
    for c in [&mut alice_a, &mut alice_b, &mut bob_b] {
        assert_eq!(
            c.recv().await,
            event("broadcast", json!(7)),
            "bob saw no user:alice event first"
        );
    }

    // HTTP publish on A goes through Redis and reaches B (and A).
    assert_eq!(
        a.publish_http("room:lobby", json!({"via": "http"})).await,
        202
    );
    assert_eq!(
        bob_b.recv().await,
        event("room:lobby", json!({"via": "http"}))
    );
    assert_eq!(
        alice_a.recv().await,
        event("room:lobby", json!({"via": "http"}))
    );

    // A client publish on B reaches A.
    bob_b
        .send(json!({"type": "publish", "room": "lobby", "data": [1, 2], "id": 9}))
        .await;
    let frames: HashSet<String> = [bob_b.recv().await, bob_b.recv().await]
        .iter()
        .map(Value::to_string)
        .collect();
    let expected: HashSet<String> = [
        json!({"type": "ok", "id": 9}),
        event("room:lobby", json!([1, 2])),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    assert_eq!(frames, expected);
    assert_eq!(alice_a.recv().await, event("room:lobby", json!([1, 2])));

    // A payload that is not JSON is delivered as a string.
    backend
        .spublish("gw:room:lobby", "plain text")
        .await
        .unwrap();
    assert_eq!(
        alice_a.recv().await,
        event("room:lobby", json!("plain text"))
    );
    // alice's socket on B is in no room, so it got none of the room's events:
    // once bob has the last one, node B has handed it to every local
    // subscriber, and the next frame alice's socket sees is one published
    // after it.
    assert_eq!(bob_b.recv().await, event("room:lobby", json!("plain text")));
    assert_eq!(backend.spublish("gw:user:alice", r#""last""#).await, Ok(2));
    assert_eq!(alice_b.recv().await, event("user:alice", json!("last")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_interest_and_storms_end_in_the_right_state() {
    require_redis!();
    let cluster = RedisCluster::start().await;
    let a = redis_gateway(cluster.seeds(), true, "sharded")
        .ready()
        .await;
    let b = redis_gateway(cluster.seeds(), true, "sharded")
        .ready()
        .await;

    // Per-channel order of 1,000 events, pipelined by the backend.
    let mut on_a = a.connect(&token("ua", &["seq"])).await;
    let mut on_b = b.connect(&token("ub", &["seq"])).await;
    on_a.subscribe("seq").await;
    on_b.subscribe("seq").await;
    assert_eq!(
        cluster.shardnumsub("gw:room:seq").await,
        2,
        "one subscription per interested node"
    );
    let owner = cluster
        .owner(fred::util::redis_keyslot(b"gw:room:seq"))
        .await;
    let mut publisher = Resp::connect(owner).await.unwrap();
    for i in 0..1000 {
        publisher
            .send(&["SPUBLISH", "gw:room:seq", &i.to_string()])
            .await
            .unwrap();
    }
    for _ in 0..1000 {
        assert_eq!(publisher.read().await.unwrap(), Reply::Int(2));
    }
    for c in [&mut on_a, &mut on_b] {
        for i in 0..1000 {
            assert_eq!(c.recv().await, event("room:seq", json!(i)));
        }
    }

    // Interest follows the last local subscriber: unsubscribe, then an abrupt disconnect.
    on_a.unsubscribe("seq").await;
    eventually_async("one subscriber left", DEADLINE, || async {
        cluster.shardnumsub("gw:room:seq").await == 1
    })
    .await;
    assert_eq!(cluster.shardnumsub("gw:user:ub").await, 1);
    drop(on_b);
    eventually_async("no subscriber left", DEADLINE, || async {
        cluster.shardnumsub("gw:room:seq").await == 0
            && cluster.shardnumsub("gw:user:ub").await == 0
    })
    .await;
    b.eventually("node B holds no subscription", |_| {
        b.live_subscriptions() == 0
    })
    .await;

    // Storm: 12 sockets on A flip 8 shared rooms concurrently, then settle on
    // a known pattern; Redis and the node must agree with it exactly.
    const SOCKETS: usize = 12;
    const ROOMS: usize = 8;
    let wanted = |socket: usize, room: usize| (socket + room).is_multiple_of(3);
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("storm-{r}")).collect();
    let grants: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let mut tasks = Vec::new();
    for s in 0..SOCKETS {
        let mut c = a.connect(&token(&format!("storm{s}"), &grants)).await;
        let rooms = rooms.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                for (r, room) in rooms.iter().enumerate() {
                    if (s + r + round).is_multiple_of(2) {
                        c.subscribe(room).await;
                        c.unsubscribe(room).await;
                    }
                    c.subscribe(room).await;
                    if round < 2 || !wanted(s, r) {
                        c.unsubscribe(room).await;
                    }
                }
            }
            c
        }));
    }
    let mut sockets = Vec::new();
    for t in tasks {
        sockets.push(t.await.unwrap());
    }
    for (r, room) in rooms.iter().enumerate() {
        let members = (0..SOCKETS).filter(|s| wanted(*s, r)).count();
        let channel = format!("gw:room:{room}");
        eventually_async(&format!("{channel} settles"), DEADLINE, || async {
            cluster.shardnumsub(&channel).await == i64::from(members > 0)
        })
        .await;
        let local = gateway::protocol::Channel::parse(&format!("room:{room}")).unwrap();
        assert_eq!(a.node.hub.subscriber_count(&local), members);
    }
    let mut backend = Backend::new(cluster.ports());
    for room in &rooms {
        backend
            .spublish(&format!("gw:room:{room}"), &format!("\"{room}\""))
            .await
            .unwrap();
    }
    for (s, c) in sockets.iter_mut().enumerate() {
        let mut got: Vec<String> = Vec::new();
        for _ in 0..(0..ROOMS).filter(|r| wanted(s, *r)).count() {
            got.push(c.recv().await["data"].as_str().unwrap().to_string());
        }
        got.sort();
        let expected: Vec<String> = (0..ROOMS)
            .filter(|r| wanted(s, *r))
            .map(|r| format!("storm-{r}"))
            .collect();
        assert_eq!(got, expected, "socket {s}");
    }
    // No socket got an event of a room it had left: the next frame each one
    // sees is one published after all of them. Every room has members, so
    // node A had handed every room's event to its sockets before this one.
    assert!(
        (0..ROOMS).all(|r| (0..SOCKETS).any(|s| wanted(s, r))),
        "every room has a member"
    );
    assert_eq!(backend.spublish("gw:broadcast", r#""end""#).await, Ok(2));
    for (s, c) in sockets.iter_mut().enumerate() {
        assert_eq!(
            c.recv().await,
            event("broadcast", json!("end")),
            "socket {s} got nothing else"
        );
    }
}
