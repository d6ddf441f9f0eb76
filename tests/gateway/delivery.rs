//! Fan-out: rooms, user channels and broadcast, to many sockets of both wire
//! formats, in order; the HTTP publish API.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::kit::*;

async fn connect_many(gw: &TestGateway, n: usize, room: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut req = gw
            .ws_url(&token(&format!("u{i}"), &[room]))
            .into_client_request()
            .unwrap();
        if i % 2 == 1 {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("v1.msgpack"),
            );
        }
        let mut c = gw.try_connect(req).await.unwrap();
        assert_eq!(c.recv().await["type"], "welcome");
        c.subscribe(room).await;
        clients.push(c);
    }
    clients
}

#[tokio::test]
async fn room_user_and_broadcast_reach_every_socket() {
    let gw = TestGateway::start().await;
    let mut members = connect_many(&gw, 40, "lobby").await;
    let mut outsider = gw.connect(&token("outsider", &[])).await;
    let mut alice: Vec<Client> = Vec::new();
    for _ in 0..3 {
        alice.push(gw.connect(&token("alice", &[])).await);
    }

    assert_eq!(
        gw.publish_http("room:lobby", json!({"msg": "hello"})).await,
        202
    );
    for c in &mut members {
        assert_eq!(
            c.recv().await,
            json!({"type": "event", "channel": "room:lobby", "data": {"msg": "hello"}})
        );
    }
    assert_eq!(gw.publish_http("user:alice", json!(42)).await, 202);
    for c in &mut alice {
        assert_eq!(
            c.recv().await,
            json!({"type": "event", "channel": "user:alice", "data": 42})
        );
    }
    assert_eq!(gw.publish_http("broadcast", json!("all")).await, 202);
    let expected = json!({"type": "event", "channel": "broadcast", "data": "all"});
    for c in members.iter_mut().chain(alice.iter_mut()) {
        assert_eq!(c.recv().await, expected);
    }
    // The outsider saw neither the room nor alice's events: broadcast comes first.
    assert_eq!(outsider.recv().await, expected);
    assert_eq!(
        gw.metric("gateway_publications_in_total{source=\"http\"}")
            .await,
        3.0
    );
    assert_eq!(
        gw.metric("gateway_deliveries_total").await,
        (40 + 3 + 44) as f64
    );
}

#[tokio::test]
async fn events_of_one_channel_arrive_in_order() {
    let gw = TestGateway::start().await;
    let mut clients = connect_many(&gw, 4, "seq").await;
    let channel = gateway::protocol::Channel::parse("room:seq").unwrap();
    for i in 0..500 {
        gw.node
            .broker()
            .publish(channel.clone(), bytes::Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    for c in &mut clients {
        for i in 0..500 {
            assert_eq!(c.recv().await["data"], i);
        }
    }
}

/// Reads frames until `n` events arrived, unpacking batches; returns the
/// data in arrival order and how many WebSocket messages carried them.
async fn events_unpacked(c: &mut Client, n: usize) -> (Vec<Value>, usize, usize) {
    let (mut data, mut messages, mut batches) = (Vec::new(), 0, 0);
    while data.len() < n {
        let v = c.recv().await;
        messages += 1;
        let frames = match v {
            Value::Array(frames) => {
                assert!(frames.len() >= 2, "a batch of one: {frames:?}");
                batches += 1;
                frames
            }
            one => vec![one],
        };
        for f in frames {
            assert_eq!(f["type"], "event", "{f}");
            data.push(f["data"].clone());
        }
    }
    (data, messages, batches)
}

#[tokio::test]
async fn batch_subprotocols_pack_a_burst_into_arrays_in_order() {
    // A long coalescing window makes the burst below land in few writes.
    let gw = TestGateway::with(|c| c.websocket.write_coalesce_ms = 100).await;
    let mut clients = Vec::new();
    for (i, proto) in ["v1.json", "v1.json+batch", "v1.msgpack+batch"]
        .iter()
        .enumerate()
    {
        let mut req = gw
            .ws_url(&token(&format!("b{i}"), &["burst"]))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(proto));
        let mut c = gw.try_connect(req).await.unwrap();
        assert_eq!(
            c.protocol.as_deref(),
            Some(*proto),
            "the echoed subprotocol"
        );
        assert_eq!(c.recv().await["type"], "welcome");
        c.subscribe("burst").await;
        clients.push(c);
    }
    let channel = gateway::protocol::Channel::parse("room:burst").unwrap();
    const N: usize = 300;
    for i in 0..N {
        gw.node
            .broker()
            .publish(channel.clone(), bytes::Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let want: Vec<Value> = (0..N).map(|i| json!(i)).collect();
    let (plain, plain_messages, plain_batches) = events_unpacked(&mut clients[0], N).await;
    assert_eq!(plain, want);
    assert_eq!(
        (plain_messages, plain_batches),
        (N, 0),
        "v1.json never batches"
    );
    for c in &mut clients[1..] {
        let (data, messages, batches) = events_unpacked(c, N).await;
        assert_eq!(data, want, "{:?}: every event, in order", c.protocol);
        assert!(
            batches > 0 && messages < N / 2,
            "{:?}: {N} events in {messages} messages ({batches} batches)",
            c.protocol
        );
    }
    let frames = gw.metric("gateway_frames_out_total").await;
    let messages = gw.metric("gateway_messages_out_total").await;
    assert!(messages < frames, "{messages} messages for {frames} frames");
}

#[tokio::test]
async fn publish_api_validates_its_input() {
    let gw = TestGateway::start().await;
    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let addr = gw.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(addr, "POST", "/api/publish", &h, body).await
        }
    };
    let auth = || vec![("authorization", format!("Bearer {API_KEY}"))];
    assert_eq!(
        post(vec![], r#"{"channel":"broadcast","data":1}"#).await.0,
        401
    );
    assert_eq!(
        post(
            vec![("authorization", "Bearer wrong".into())],
            r#"{"channel":"broadcast","data":1}"#
        )
        .await
        .0,
        401
    );
    let (status, body) = post(auth(), r#"{"channel":"room:bad room","data":1}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("bad_channel"));
    assert_eq!(post(auth(), r#"{"channel":"broadcast"}"#).await.0, 400);
    assert_eq!(post(auth(), "not json").await.0, 400);
    assert_eq!(
        post(auth(), r#"{"channel":"broadcast","data":{"a":1}}"#).await,
        (202, r#"{"ok":true}"#.into())
    );
    assert_eq!(gw.get("/api/publish").await.0, 405);
    let big = format!(
        r#"{{"channel":"broadcast","data":"{}"}}"#,
        "x".repeat(100_000)
    );
    let addr = gw.addr;
    let (status, _) = http(
        addr,
        "POST",
        "/api/publish",
        &[("authorization", &format!("Bearer {API_KEY}"))],
        &big,
    )
    .await;
    assert_eq!(status, 413);
}
