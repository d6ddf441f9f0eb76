//! Every client frame type, reply and error code, in JSON and MessagePack.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::kit::*;

#[tokio::test]
async fn welcome_subscribe_ping_and_errors() {
    let gw = TestGateway::with(|c| c.server.node_id = "node-a".into()).await;
    let mut req = gw
        .ws_url(&token("alice", &["lobby", "team-42:*"]))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("v1.json"),
    );
    let mut c = gw.try_connect(req).await.unwrap();
    let welcome = c.recv().await;
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["node"], "node-a");
    assert_eq!(welcome["heartbeat"], 25);
    assert!(welcome["conn"].is_string());

    c.subscribe("lobby").await;
    c.subscribe("team-42:ops").await;
    c.send(json!({"type": "subscribe", "room": "lobby", "id": 9}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "ok", "id": 9}),
        "subscribing twice is ok"
    );
    c.send(json!({"type": "ping", "id": 5})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 5}));
    c.send(json!({"type": "subscribe", "room": "secret", "id": 1}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_i64()),
        (Some("error"), Some("forbidden"), Some(1))
    );
    c.send(json!({"type": "subscribe", "room": "bad room!", "id": 2}))
        .await;
    assert_eq!(c.recv().await["code"], "bad_room");
    c.send(json!({"type": "subscribe", "room": "x".repeat(129), "id": 3}))
        .await;
    assert_eq!(c.recv().await["code"], "bad_room");
    c.send(json!({"type": "dance", "id": 4})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("bad_frame"), Some(4))
    );
    c.send(json!({"type": "subscribe", "id": 6})).await;
    assert_eq!(c.recv().await["code"], "bad_frame", "missing field");
    c.send_raw(Message::text("{nope")).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "bad_frame");
    assert!(e.get("id").is_none());
    c.send(json!({"type": "unsubscribe", "room": "lobby", "id": 7}))
        .await;
    assert_eq!(c.recv().await, json!({"type": "ok", "id": 7}));
    assert_eq!(
        gw.node.hub.sizes().channels,
        2,
        "user channel and team-42:ops remain"
    );
    assert_eq!(
        gw.metric("gateway_errors_sent_total{code=\"bad_frame\"}")
            .await,
        3.0
    );
    assert_eq!(
        gw.metric("gateway_frames_in_total{type=\"subscribe\"}")
            .await,
        6.0
    );
    assert_eq!(
        gw.metric("gateway_frames_in_total{type=\"invalid\"}").await,
        3.0
    );
}

#[tokio::test]
async fn messagepack_sockets_speak_binary() {
    let gw = TestGateway::start().await;
    let mut req = gw
        .ws_url(&token("bob", &["lobby"]))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("v1.msgpack"),
    );
    let mut c = gw.try_connect(req).await.unwrap();
    assert!(c.binary);
    assert_eq!(c.recv().await["type"], "welcome");
    c.subscribe("lobby").await;
    c.send(json!({"type": "publish", "room": "lobby", "data": {"n": [1, 2]}, "id": 2}))
        .await;
    assert_eq!(c.recv().await, json!({"type": "ok", "id": 2}));
    assert_eq!(
        c.recv().await,
        json!({"type": "event", "channel": "room:lobby", "data": {"n": [1, 2]}})
    );
    c.send_raw(Message::binary(vec![0xc1, 0x00])).await;
    assert_eq!(c.recv().await["code"], "bad_frame");
}

#[tokio::test]
async fn client_publish_allowed_and_forbidden() {
    let gw = TestGateway::start().await;
    let publisher_token =
        sign(&json!({"sub": "p", "exp": now() + 600, "rooms": ["lobby"], "publish": ["lobby"]}));
    let reader_token = sign(&json!({"sub": "r", "exp": now() + 600, "rooms": ["*"]}));
    let mut p = gw.connect(&publisher_token).await;
    let mut r = gw.connect(&reader_token).await;
    r.subscribe("lobby").await;
    r.subscribe("other").await;
    p.send(json!({"type": "publish", "room": "lobby", "data": "hi", "id": 1}))
        .await;
    assert_eq!(p.recv().await, json!({"type": "ok", "id": 1}));
    assert_eq!(
        r.recv().await,
        json!({"type": "event", "channel": "room:lobby", "data": "hi"})
    );
    p.send(json!({"type": "publish", "room": "other", "data": 1, "id": 2}))
        .await;
    assert_eq!(p.recv().await["code"], "forbidden");
    r.send(json!({"type": "publish", "room": "lobby", "data": 1, "id": 3}))
        .await;
    assert_eq!(
        r.recv().await["code"],
        "forbidden",
        "no publish claim = no publishing"
    );
    assert_eq!(
        gw.metric("gateway_publications_in_total{source=\"client\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn repeated_bad_frames_close_with_1008() {
    let gw = TestGateway::with(|c| c.websocket.max_bad_frames = 3).await;
    let mut c = gw.connect(&token("a", &[])).await;
    for _ in 0..3 {
        c.send_raw(Message::text("garbage")).await;
    }
    assert_eq!(c.recv().await["code"], "bad_frame");
    assert_eq!(c.recv().await["code"], "bad_frame");
    c.expect_close(1008).await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let gw = TestGateway::with(|c| c.websocket.max_frame_bytes = 1024).await;
    let mut c = gw.connect(&token("a", &["lobby"])).await;
    let big = json!({"type": "publish", "room": "lobby", "data": "x".repeat(4096)});
    c.send(big).await;
    c.expect_close(1009).await;
    assert_eq!(gw.metric("gateway_closes_total{code=\"1009\"}").await, 1.0);
}

#[tokio::test]
async fn inbound_rate_limit_errors_then_closes_with_4029() {
    let gw = TestGateway::with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 2;
        c.limits.rate_limit_strikes = 3;
    })
    .await;
    let mut c = gw.connect(&token("a", &[])).await;
    for i in 0..10 {
        c.send(json!({"type": "ping", "id": i})).await;
    }
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 0}));
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 1}));
    assert_eq!(c.recv().await["code"], "rate_limited");
    assert_eq!(c.recv().await["code"], "rate_limited");
    c.expect_close(4029).await;
}

#[tokio::test]
async fn too_many_rooms() {
    let gw = TestGateway::with(|c| c.limits.max_rooms_per_socket = 2).await;
    let mut c = gw.connect(&token("a", &["*"])).await;
    c.subscribe("r1").await;
    c.subscribe("r2").await;
    c.send(json!({"type": "subscribe", "room": "r3", "id": 3}))
        .await;
    assert_eq!(c.recv().await["code"], "too_many_rooms");
}

#[tokio::test]
async fn a_client_close_completes_the_handshake() {
    use futures_util::StreamExt;
    let gw = TestGateway::start().await;
    let mut c = gw.connect(&token("a", &[])).await;
    c.ws.close(None).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, c.ws.next()).await.unwrap();
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "server echoed the close: {reply:?}"
    );
    gw.assert_tables_empty().await;
}
