//! The session loop as a unit: a real [`super::run`] over an in-memory
//! duplex stream, a real WebSocket client on the other end, a real node
//! (embedded broker, real JWTs), and paused tokio time, so heartbeats,
//! expiry, rate limits and drain are exact and instant. The real-socket
//! tests in `tests/gateway/` cover the same behaviour end to end.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Admitted, run};
use crate::broker::{
    BoxFuture, Broker, BrokerError, BrokerState, Inbound, MemoryBroker, Published, SharedBroker,
};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol::{Channel, Subprotocol};

const SECRET: &str = "unit-test-secret-0123456789abcdef0123456789";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn config() -> Config {
    let mut c = Config::default();
    c.auth.hs_secret = SECRET.into();
    c.auth.leeway_seconds = 0;
    c.websocket.heartbeat_seconds = 10;
    c.websocket.heartbeat_timeout_seconds = 25;
    c
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn alice(ttl: u64) -> String {
    token(json!({"sub": "alice", "exp": unix_now() + ttl, "rooms": ["*"], "publish": ["*"]}))
}

/// A node with a broker of the test's choosing.
fn node_with(config: Config, broker: SharedBroker, inbound: Inbound) -> Arc<Node> {
    let (parts, _) = crate::app::prepare(&config).unwrap();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    crate::app::assemble(
        config,
        parts.verifier,
        broker,
        inbound,
        metrics,
        registry,
        100,
    )
}

fn node(config: Config) -> Arc<Node> {
    let (broker, inbound) = MemoryBroker::new(1024);
    node_with(config, broker, inbound)
}

type Client = WebSocketStream<DuplexStream>;

/// What admission gives a JSON socket for `token`, as the upgrade does.
fn admitted(node: &Node, token: &str) -> Admitted {
    let identity = node.verifier.verify(token).expect("valid token");
    let permit = node
        .limits
        .admit(IpAddr::V4(Ipv4Addr::LOCALHOST), &identity.user)
        .unwrap();
    Admitted {
        identity,
        subprotocol: Subprotocol::JSON,
        permit,
        resume_at: Default::default(),
    }
}

/// Runs a session for `token` over a duplex pair; returns the client side.
async fn open(node: &Arc<Node>, token: &str) -> (Client, tokio::task::JoinHandle<()>) {
    let admitted = admitted(node, token);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let task = tokio::spawn(run(node.clone(), ws, admitted));
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    (client, task)
}

/// The next data frame as JSON (pings are answered by tungstenite and skipped).
async fn recv(c: &mut Client) -> Value {
    loop {
        match c.next().await.expect("a frame").expect("no error") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads until the close frame and returns its code.
async fn close_code(c: &mut Client) -> u16 {
    loop {
        match c.next().await {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before the close frame: {e}"),
        }
    }
}

async fn send(c: &mut Client, frame: Value) {
    c.send(Message::text(frame.to_string())).await.unwrap();
}

async fn welcome(c: &mut Client) -> Value {
    let w = recv(c).await;
    assert_eq!(w["type"], "welcome", "{w}");
    w
}

/// Waits (in paused time: instantly) until the node's tables are empty.
async fn tables_empty(node: &Node) {
    for _ in 0..1000 {
        let (open, ips, users) = node.limits.table_sizes();
        if node.hub.sizes() == Default::default() && (open, ips, users) == (0, 0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("tables not empty: {:?}", node.hub.sizes());
}

#[tokio::test(start_paused = true)]
async fn welcome_then_replies_in_order_then_events() {
    let node = node(config());
    let (mut c, _task) = open(&node, &alice(3600)).await;
    let w = welcome(&mut c).await;
    assert_eq!(w["user"], "alice");
    assert_eq!(w["heartbeat"], 10);
    send(&mut c, json!({"type":"subscribe","room":"lobby","id":1})).await;
    send(&mut c, json!({"type":"ping","id":2})).await;
    send(
        &mut c,
        json!({"type":"publish","room":"lobby","data":{"n":1},"id":3}),
    )
    .await;
    assert_eq!(recv(&mut c).await, json!({"type":"ok","id":1}));
    assert_eq!(recv(&mut c).await, json!({"type":"pong","id":2}));
    // The publish's `ok` and its event travel different paths (the reply,
    // and fan-out through the broker): either may come first.
    let (a, b) = (recv(&mut c).await, recv(&mut c).await);
    let (ok, e) = if a["type"] == "ok" { (a, b) } else { (b, a) };
    assert_eq!(ok, json!({"type":"ok","id":3}));
    assert_eq!(e["type"], "event");
    assert_eq!(e["channel"], "room:lobby");
    assert_eq!(e["data"], json!({"n":1}));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_pings_then_a_silent_peer_is_closed_1001() {
    let node = node(config());
    let (mut c, task) = open(&node, &alice(3600)).await;
    welcome(&mut c).await;
    // Not reading means not answering pings: a peer whose network is gone.
    let closes = || node.metrics.closes.with_label_values(&["1001"]).get();
    tokio::time::sleep(Duration::from_secs(24)).await;
    assert_eq!(
        closes(),
        0,
        "pings at 10 s and 20 s; still within the 25 s limit"
    );
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(
        closes(),
        1,
        "closed at the 30 s tick, the first past 25 s of silence"
    );
    task.await.unwrap();
    // The session is gone; what it wrote is still in the pipe. Read it raw
    // (a WebSocket client would try to answer the pings into a closed pipe).
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(c.get_mut(), &mut bytes)
        .await
        .unwrap();
    let (mut pings, mut code) = (0, None);
    let mut rest = &bytes[..];
    while rest.len() >= 2 {
        let (opcode, len) = (rest[0] & 0x0f, (rest[1] & 0x7f) as usize);
        let payload = &rest[2..2 + len];
        match opcode {
            0x9 => pings += 1,
            0x8 => code = Some(u16::from_be_bytes([payload[0], payload[1]])),
            other => panic!("unexpected opcode {other}"),
        }
        rest = &rest[2 + len..];
    }
    assert_eq!((code, pings), (Some(1001), 2));
    tables_empty(&node).await;
    assert_eq!(
        node.metrics
            .sessions_ended
            .with_label_values(&["network"])
            .get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_closes_4001_and_refresh_extends_it() {
    let mut cfg = config();
    // Heartbeats out of the way: this test is about expiry alone.
    cfg.websocket.heartbeat_seconds = 1000;
    cfg.websocket.heartbeat_timeout_seconds = 2000;
    let node = node(cfg.clone());
    let (mut c, _task) = open(&node, &alice(100)).await;
    welcome(&mut c).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    // `exp` is in wall-clock seconds; the refreshed token expires 1 h later.
    send(&mut c, json!({"type":"refresh","token":alice(3600),"id":1})).await;
    assert_eq!(recv(&mut c).await, json!({"type":"ok","id":1}));
    tokio::time::sleep(Duration::from_secs(120)).await;
    send(&mut c, json!({"type":"ping","id":2})).await;
    assert_eq!(
        recv(&mut c).await,
        json!({"type":"pong","id":2}),
        "alive past the old exp"
    );

    let node = self::node(cfg);
    let (mut c, _task) = open(&node, &alice(30)).await;
    welcome(&mut c).await;
    let start = tokio::time::Instant::now();
    assert_eq!(close_code(&mut c).await, 4001);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );
    tables_empty(&node).await;
}

#[tokio::test(start_paused = true)]
async fn an_absurd_exp_runs_without_overflow_and_leaves_no_entry() {
    let mut cfg = config();
    cfg.auth.max_token_lifetime_seconds = 0;
    let node = node(cfg);
    let far = token(json!({"sub": "alice", "exp": 10_000_000_000_000_000_000u64}));
    let (mut c, task) = open(&node, &far).await;
    welcome(&mut c).await;
    // A refresh with an absurd exp goes through the same saturating path.
    send(&mut c, json!({"type":"refresh","token":far,"id":1})).await;
    assert_eq!(recv(&mut c).await, json!({"type":"ok","id":1}));
    c.close(None).await.unwrap();
    task.await.unwrap();
    tables_empty(&node).await;
    assert_eq!(node.metrics.sockets_open.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_message_rate_counts_control_frames_and_refills_on_the_tokio_clock() {
    let mut cfg = config();
    cfg.limits.messages_per_second = 10;
    cfg.limits.message_burst = 5;
    cfg.limits.rate_limit_strikes = 3;
    let node = node(cfg);
    let (mut c, _task) = open(&node, &alice(3600)).await;
    welcome(&mut c).await;
    for _ in 0..5 {
        c.send(Message::Ping(Bytes::new())).await.unwrap();
    }
    // The bucket is empty: the next frame is refused.
    send(&mut c, json!({"type":"ping","id":1})).await;
    let e = recv(&mut c).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("rate_limited"))
    );
    // A second later ten tokens are back (the burst caps at five).
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(&mut c, json!({"type":"ping","id":2})).await;
    assert_eq!(recv(&mut c).await, json!({"type":"pong","id":2}));
    // Pings alone exhaust it again and strike out: 4029.
    for _ in 0..20 {
        if c.send(Message::Ping(Bytes::new())).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut c).await, 4029);
    tables_empty(&node).await;
}

#[tokio::test(start_paused = true)]
async fn bad_frames_get_errors_then_1008() {
    let mut cfg = config();
    cfg.websocket.max_bad_frames = 3;
    let node = node(cfg);
    let (mut c, _task) = open(&node, &alice(3600)).await;
    welcome(&mut c).await;
    send(&mut c, json!({"type":"dance","id":7})).await;
    let e = recv(&mut c).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("bad_frame"), Some(7))
    );
    c.send(Message::text("{not json")).await.unwrap();
    assert_eq!(recv(&mut c).await["code"], "bad_frame");
    c.send(Message::text("[]")).await.unwrap();
    assert_eq!(close_code(&mut c).await, 1008);
}

#[tokio::test(start_paused = true)]
async fn a_publish_too_large_as_json_is_refused_before_the_broker() {
    let mut cfg = config();
    cfg.websocket.max_frame_bytes = 4096;
    cfg.websocket.outbox_max_bytes = 1 << 20;
    let node = node(cfg);
    let (mut c, _task) = open(&node, &alice(3600)).await;
    welcome(&mut c).await;
    // 1,000 MessagePack nils (1 KB) are 5 KB of JSON.
    #[derive(serde::Serialize)]
    struct P {
        r#type: &'static str,
        room: &'static str,
        data: Vec<()>,
        id: u32,
    }
    let frame = rmp_serde::to_vec_named(&P {
        r#type: "publish",
        room: "lobby",
        data: vec![(); 1000],
        id: 9,
    })
    .unwrap();
    assert!(frame.len() < 4096);
    c.send(Message::binary(frame)).await.unwrap();
    let e = recv(&mut c).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("too_large"), Some(9))
    );
    assert_eq!(
        node.metrics
            .publications_in
            .with_label_values(&["client"])
            .get(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_protocol_violation_is_closed_1002_and_counted() {
    let node = node(config());
    let admitted = admitted(&node, &alice(3600));
    let (mut raw, server) = tokio::io::duplex(64 * 1024);
    let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let task = tokio::spawn(run(node.clone(), ws, admitted));
    // A masked text frame with RSV1 set (no extension was negotiated).
    raw.write_all(&[0xC1, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .unwrap();
    let mut client = WebSocketStream::from_raw_socket(raw, Role::Client, None).await;
    welcome(&mut client).await;
    assert_eq!(close_code(&mut client).await, 1002);
    let _ = client.close(None).await;
    task.await.unwrap();
    assert_eq!(
        node.metrics
            .protocol_violations
            .with_label_values(&["reserved_bits"])
            .get(),
        1
    );
    assert_eq!(
        node.metrics
            .sessions_ended
            .with_label_values(&["policy"])
            .get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn drain_flushes_what_is_queued_then_closes_1012() {
    let node = node(config());
    let (mut c, task) = open(&node, &alice(3600)).await;
    welcome(&mut c).await;
    send(&mut c, json!({"type":"subscribe","room":"lobby","id":1})).await;
    assert_eq!(recv(&mut c).await["type"], "ok");
    for i in 0..3 {
        node.broker()
            .publish(
                Channel::Room(crate::protocol::RoomName::parse("lobby").unwrap()),
                Bytes::from(i.to_string()),
            )
            .await
            .unwrap();
    }
    // Wait until fan-out queued them, then ask the socket to drain.
    for _ in 0..100 {
        if node.metrics.deliveries.get() == 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    for outbox in node.hub.outboxes() {
        outbox.close(crate::protocol::Disconnect::Draining);
    }
    for i in 0..3 {
        assert_eq!(recv(&mut c).await["data"], i);
    }
    assert_eq!(close_code(&mut c).await, 1012);
    let _ = c.close(None).await;
    task.await.unwrap();
    assert_eq!(
        node.metrics
            .sessions_ended
            .with_label_values(&["server"])
            .get(),
        1
    );
}

/// A broker whose subscribe to `room:slow` waits until released: a Redis
/// failover seen from the session.
struct Stalling {
    inner: Arc<MemoryBroker>,
    release: Notify,
    stalled: AtomicBool,
}

impl Broker for Stalling {
    fn subscribe<'a>(&'a self, c: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if c.to_string() == "room:slow" {
                self.stalled.store(true, Ordering::SeqCst);
                self.release.notified().await;
            }
            self.inner.subscribe(c).await
        })
    }
    fn unsubscribe<'a>(&'a self, c: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.unsubscribe(c)
    }
    fn publish(&self, c: Channel, p: Bytes) -> BoxFuture<'static, Result<Published, BrokerError>> {
        self.inner.publish(c, p)
    }
    fn state(&self) -> watch::Receiver<BrokerState> {
        self.inner.state()
    }
    fn subscription_count(&self) -> usize {
        self.inner.subscription_count()
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }
}

#[tokio::test(start_paused = true)]
async fn the_session_keeps_writing_while_a_subscribe_waits_on_the_broker() {
    let (memory, inbound) = MemoryBroker::new(4096);
    let stalling = Arc::new(Stalling {
        inner: memory,
        release: Notify::new(),
        stalled: AtomicBool::new(false),
    });
    let mut cfg = config();
    cfg.websocket.outbox_max_frames = 16;
    let node = node_with(cfg, stalling.clone(), inbound);
    let (mut c, task) = open(&node, &alice(3600)).await;
    welcome(&mut c).await;
    send(&mut c, json!({"type":"subscribe","room":"slow","id":1})).await;
    while !stalling.stalled.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    // 200 events to the user channel while the subscribe waits: far more
    // than the 16-frame outbox; the session must keep writing them.
    let user = Channel::User("alice".into());
    let mut seen = HashSet::new();
    for i in 0..200u32 {
        node.broker()
            .publish(user.clone(), Bytes::from(i.to_string()))
            .await
            .unwrap();
        if i % 8 == 7 {
            while seen.len() < (i + 1) as usize {
                let e = recv(&mut c).await;
                assert_eq!(e["channel"], "user:alice", "{e}");
                seen.insert(e["data"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(seen.len(), 200);
    // Heartbeats go on too: 30 s of stall, and a ping was sent meanwhile.
    tokio::time::sleep(Duration::from_secs(30)).await;
    stalling.release.notify_one();
    assert_eq!(recv(&mut c).await, json!({"type":"ok","id":1}));
    assert_eq!(node.metrics.slow_consumer_closes.get(), 0);
    c.close(None).await.unwrap();
    task.await.unwrap();
    tables_empty(&node).await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_socket_keeps_no_queue_buffer_and_a_small_task() {
    let node = node(config());
    let (mut c, _task) = open(&node, &alice(3600)).await;
    welcome(&mut c).await;
    send(
        &mut c,
        json!({"type": "subscribe", "room": "lobby", "id": 1}),
    )
    .await;
    assert_eq!(recv(&mut c).await["type"], "ok");
    // Past the coalescing window, and past a heartbeat (floors forgotten).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let outbox = node.hub.outboxes().pop().unwrap();
    assert_eq!(outbox.retained(), 0, "buffers kept by an idle outbox");
    // The session task's future: what every idle socket pays for its task.
    let admitted = admitted(&node, &alice(60));
    let (_client, server) = tokio::io::duplex(1024);
    let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let size = std::mem::size_of_val(&run(node.clone(), ws, admitted));
    assert!(size <= 960, "the session future grew to {size} bytes");
    eprintln!("session future: {size} bytes");
}
