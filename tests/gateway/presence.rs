//! Presence on one node with the embedded broker (contract section 7): the
//! `presence` frame and `GET /api/presence` agree, a socket is present from
//! its subscribe `ok` to its unsubscribe `ok` or close, and `join` /
//! `leave` fire on a user's first socket in and last socket out, only in
//! rooms that ask for them and never above the threshold.

use serde_json::{Value, json};

use crate::kit::*;

async fn ask(c: &mut Client, room: &str) -> Value {
    c.send(json!({"type": "presence", "room": room, "id": "p"}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["id"], "p");
    reply["presence"].clone()
}

fn members(p: &Value) -> Vec<String> {
    let mut m: Vec<String> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    m.sort();
    m
}

#[tokio::test]
async fn counts_users_once_and_sockets_each_from_ok_to_unsubscribe_and_close() {
    let gw = TestGateway::start().await;
    let (alice, bob) = (token("alice", &["lobby"]), token("bob", &["lobby"]));
    let mut a1 = gw.connect(&alice).await;
    let mut a2 = gw.connect(&alice).await;
    let mut b = gw.connect(&bob).await;
    for c in [&mut a1, &mut a2, &mut b] {
        c.subscribe("lobby").await;
    }
    // Present from the `ok`: no wait needed.
    let p = ask(&mut a1, "lobby").await;
    assert_eq!(
        (p["users"].clone(), p["clients"].clone()),
        (json!(2), json!(3))
    );
    assert_eq!(members(&p), ["alice", "bob"]);
    assert_eq!(p["truncated"], false);
    assert_eq!(
        gw.presence("lobby").await,
        p,
        "the API returns the frame's object"
    );

    // Gone by the unsubscribe's `ok`.
    a2.unsubscribe("lobby").await;
    let p = ask(&mut b, "lobby").await;
    assert_eq!(
        (p["users"].clone(), p["clients"].clone()),
        (json!(2), json!(2))
    );
    b.unsubscribe("lobby").await;
    let p = ask(&mut a1, "lobby").await;
    assert_eq!(members(&p), ["alice"]);

    // A close is seen as soon as the node has counted it.
    drop(a1);
    clients_become(&gw, "lobby", 0).await;
    let found = gw.presence("lobby").await;
    assert_eq!(
        found,
        json!({"users": 0, "clients": 0, "members": [], "truncated": false})
    );
}

#[tokio::test]
async fn members_are_bounded_and_truncation_is_reported() {
    let gw = TestGateway::with(|c| c.presence.max_members = 3).await;
    let mut sockets = Vec::new();
    for n in 0..5 {
        let mut c = gw.connect(&token(&format!("u{n}"), &["big"])).await;
        c.subscribe("big").await;
        sockets.push(c);
    }
    let p = ask(&mut sockets[0], "big").await;
    assert_eq!(p["users"], 5);
    assert_eq!(p["members"].as_array().unwrap().len(), 3);
    assert_eq!(p["truncated"], true);
}

#[tokio::test]
async fn a_room_outside_the_grant_or_malformed_is_refused() {
    let gw = TestGateway::start().await;
    let mut c = gw.connect(&token("alice", &["lobby"])).await;
    c.send(json!({"type": "presence", "room": "secret", "id": 1}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    c.send(json!({"type": "presence", "room": "no spaces", "id": 2}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["code"], "bad_room", "{reply}");
    c.send(json!({"type": "presence", "id": 3})).await;
    let reply = c.recv().await;
    assert_eq!(reply["code"], "bad_frame", "{reply}");
    // A room granted but empty is an empty answer, not an error.
    assert_eq!(ask(&mut c, "lobby").await["users"], 0);
}

/// The next join or leave about another user than `me` (a socket may or
/// may not see its own user's join: it races its own subscription).
async fn next_move(c: &mut Client, me: &str) -> Value {
    loop {
        let frame = c.recv().await;
        let kind = frame["type"].as_str().unwrap_or_default();
        if (kind == "join" || kind == "leave") && frame["user"] != me {
            return frame;
        }
    }
}

/// Waits until the room counts `clients` sockets cluster-wide.
async fn clients_become(gw: &TestGateway, room: &str, clients: u64) {
    eventually_async(
        &format!("{room} holds {clients} sockets"),
        gw.deadline,
        || async { gw.presence(room).await["clients"] == clients },
    )
    .await;
}

#[tokio::test]
async fn join_and_leave_fire_on_the_first_socket_in_and_the_last_out() {
    let gw = TestGateway::with(|c| c.presence.events = vec!["chat:*".into()]).await;
    let grant = ["chat:*", "plain"];
    let mut watcher = gw.connect(&token("alice", &grant)).await;
    watcher.subscribe("chat:1").await;
    watcher.subscribe("plain").await;
    let bob = token("bob", &grant);
    let mut b1 = gw.connect(&bob).await;
    b1.subscribe("chat:1").await;
    assert_eq!(
        next_move(&mut watcher, "alice").await,
        json!({"type": "join", "channel": "room:chat:1", "user": "bob"})
    );
    // A second socket of bob, a room without events, and bob's first
    // socket closing: none of it is a first-in or a last-out.
    let mut b2 = gw.connect(&bob).await;
    b2.subscribe("chat:1").await;
    b2.subscribe("plain").await;
    b2.unsubscribe("plain").await;
    drop(b1);
    clients_become(&gw, "chat:1", 2).await;
    // Frames of one room arrive in order: had any of the above fired, it
    // would come before carol's join.
    let mut carol = gw.connect(&token("carol", &grant)).await;
    carol.subscribe("chat:1").await;
    assert_eq!(next_move(&mut watcher, "alice").await["user"], "carol");
    drop(b2);
    assert_eq!(
        next_move(&mut watcher, "alice").await,
        json!({"type": "leave", "channel": "room:chat:1", "user": "bob"})
    );
}

#[tokio::test]
async fn no_join_or_leave_above_the_threshold_but_counts_stay() {
    let gw = TestGateway::with(|c| {
        c.presence.events = vec!["crowd".into()];
        c.presence.events_max_members = 2;
    })
    .await;
    let mut watcher = gw.connect(&token("w", &["crowd"])).await;
    watcher.subscribe("crowd").await;
    let mut u1 = gw.connect(&token("u1", &["crowd"])).await;
    u1.subscribe("crowd").await;
    assert_eq!(
        next_move(&mut watcher, "w").await,
        json!({"type": "join", "channel": "room:crowd", "user": "u1"}),
        "2 users: at the threshold, delivered"
    );
    let mut u2 = gw.connect(&token("u2", &["crowd"])).await;
    u2.subscribe("crowd").await;
    let p = gw.presence("crowd").await;
    assert_eq!(p["users"], 3, "counts stay available above the threshold");
    // Back to 2 users: u1's leave is delivered, and is the next move (u2's
    // join, at 3 users, never was).
    u1.unsubscribe("crowd").await;
    assert_eq!(
        next_move(&mut watcher, "w").await,
        json!({"type": "leave", "channel": "room:crowd", "user": "u1"})
    );
}
