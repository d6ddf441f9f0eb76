//! Slow consumers are closed with 4008 without holding up their neighbours,
//! and every table is empty again after a run with subscribes, unsubscribes,
//! abrupt disconnects and slow-consumer closes.

use bytes::Bytes;
use gateway::protocol::Channel;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::kit::*;

/// A client that will stop reading. Its receive buffer stays at the default
/// (a tiny one throttles its catch-up reads to a trickle of delayed ACKs, and
/// then it cannot read the close frame within the server's close linger).
async fn stalling_client(gw: &TestGateway, token: &str) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let req = gw.ws_url(token).into_client_request().unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut c = Client::new(ws, None);
    assert_eq!(c.recv().await["type"], "welcome");
    c
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4008_and_its_neighbour_gets_everything() {
    let gw = TestGateway::with(|c| {
        c.websocket.outbox_max_frames = 64;
        c.websocket.outbox_max_bytes = 256 * 1024;
    })
    .await;
    let mut slow = stalling_client(&gw, &token("slow", &["busy"])).await;
    slow.subscribe("busy").await;
    let mut fast = gw.connect(&token("fast", &["busy"])).await;
    fast.subscribe("busy").await;

    let channel = Channel::parse("room:busy").unwrap();
    let filler = "x".repeat(8000);
    let total = 3000;
    // The fast socket reads as it goes; the publisher never runs more than a
    // few events ahead of it, so only the socket that stopped reading backs up.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        for i in 0..total {
            let e = fast.recv().await;
            assert_eq!(
                e["data"]["seq"], i,
                "the fast socket gets every event, in order"
            );
            progress_tx.send_replace(i + 1);
        }
        fast
    });
    for i in 0..total {
        progress.wait_for(|read| read + 16 >= i).await.unwrap();
        let payload = json!({"seq": i, "filler": filler}).to_string();
        gw.node
            .broker()
            .publish(channel.clone(), Bytes::from(payload))
            .await
            .unwrap();
    }
    let _fast = reader.await.unwrap();
    gw.eventually("slow consumer closed", |n| {
        n.metrics.slow_consumer_closes.get() == 1
    })
    .await;
    slow.expect_close(4008).await;
    assert_eq!(gw.metric("gateway_closes_total{code=\"4008\"}").await, 1.0);
}

#[tokio::test]
async fn tables_are_empty_after_every_kind_of_exit() {
    let gw = TestGateway::with(|c| {
        c.websocket.outbox_max_frames = 8;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..30 {
        let mut c = gw.connect(&token(&format!("user{}", i % 7), &["*"])).await;
        for r in 0..(i % 4) {
            c.subscribe(&format!("room{r}")).await;
        }
        c.subscribe("shared").await;
        clients.push(c);
    }
    // Some leave rooms again.
    for c in clients.iter_mut().step_by(3) {
        c.send(json!({"type": "unsubscribe", "room": "shared", "id": 1}))
            .await;
        assert_eq!(c.recv().await["type"], "ok");
    }
    // A slow consumer that will overflow.
    let mut slow = stalling_client(&gw, &token("slow", &["*"])).await;
    slow.subscribe("flood").await;
    let flood = Channel::parse("room:flood").unwrap();
    let payload = Bytes::from(json!({"filler": "y".repeat(8000)}).to_string());
    for _ in 0..3000 {
        let _ = gw
            .node
            .broker()
            .publish(flood.clone(), payload.clone())
            .await;
    }
    gw.eventually("slow consumer closed", |n| {
        n.metrics.slow_consumer_closes.get() == 1
    })
    .await;
    drop(slow);
    assert!(gw.node.hub.sizes().conns > 0);
    // Half close politely, half vanish abruptly (TCP dropped, no close frame).
    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.ws.close(None).await.unwrap();
        } else {
            drop(c);
        }
    }
    gw.assert_tables_empty().await;
}
