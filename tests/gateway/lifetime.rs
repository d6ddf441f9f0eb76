//! A socket's life in time: token refresh, live expiry (4001), heartbeats.

use std::time::Duration;

use serde_json::json;

use crate::kit::*;

#[tokio::test]
async fn refresh_needs_a_valid_token_for_the_same_user() {
    let gw = TestGateway::start().await;
    let mut c = gw.connect(&token("alice", &["lobby"])).await;
    c.send(json!({"type": "refresh", "token": token("mallory", &["*"]), "id": 1}))
        .await;
    assert_eq!(c.recv().await["code"], "sub_mismatch");
    c.send(json!({"type": "refresh", "token": "garbage", "id": 2}))
        .await;
    assert_eq!(c.recv().await["code"], "bad_token");
    c.send(json!({"type": "subscribe", "room": "vip", "id": 3}))
        .await;
    assert_eq!(c.recv().await["code"], "forbidden");
    c.send(json!({"type": "refresh", "token": token("alice", &["lobby", "vip"]), "id": 4}))
        .await;
    assert_eq!(c.recv().await, json!({"type": "ok", "id": 4}));
    c.subscribe("vip").await;
    assert_eq!(
        gw.metric("gateway_auth_failures_total{reason=\"sub_mismatch\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_expiring_token_closes_with_4001_unless_refreshed() {
    let gw = TestGateway::start().await;
    let short = |sub: &str| sign(&json!({"sub": sub, "exp": now() + 2}));
    let mut expiring = gw.connect(&short("a")).await;
    let mut refreshed = gw.connect(&short("b")).await;
    refreshed
        .send(json!({"type": "refresh", "token": token("b", &[]), "id": 1}))
        .await;
    assert_eq!(refreshed.recv().await["type"], "ok");
    expiring.expect_close(4001).await;
    // The refreshed socket outlives the original expiry.
    refreshed.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(refreshed.recv().await, json!({"type": "pong", "id": 2}));
    assert_eq!(gw.metric("gateway_closes_total{code=\"4001\"}").await, 1.0);
}

#[tokio::test]
async fn a_silent_peer_is_closed_and_removed() {
    let gw = TestGateway::with(|c| {
        c.websocket.heartbeat_seconds = 1;
        c.websocket.heartbeat_timeout_seconds = 2;
    })
    .await;
    // Connected, then never reads: the server's pings go unanswered.
    let _silent = gw.connect(&token("quiet", &[])).await;
    let mut active = gw.connect(&token("chatty", &[])).await;
    // The active peer keeps talking (and its client library answers pings
    // while it reads) until the silent one is gone.
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let chatter = tokio::spawn(async move {
        loop {
            active.send(json!({"type": "ping"})).await;
            assert_eq!(active.recv().await["type"], "pong");
            tokio::select! {
                _ = &mut stop => return active,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
    gw.eventually("silent socket removed", |n| n.hub.sizes().conns == 1)
        .await;
    stop_tx.send(()).unwrap();
    let mut active = chatter.await.unwrap();
    active.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(
        active.recv().await,
        json!({"type": "pong", "id": 1}),
        "the live peer is untouched"
    );
    assert_eq!(gw.metric("gateway_closes_total{code=\"1001\"}").await, 1.0);
}
