//! Drain: not ready at once, listener closed, every socket closed with 1012
//! after its queued frames, and `run` finishes; as a process, SIGTERM exits 0.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use gateway::protocol::Channel;
use tokio::net::TcpStream;

use crate::harness::*;

#[tokio::test]
async fn drain_flushes_then_closes_every_socket_with_1012() {
    let gw = TestGateway::with(|c| c.server.drain_seconds = 1).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = gw.connect(&token(&format!("u{i}"), &["lobby"])).await;
        c.subscribe("lobby").await;
        clients.push(c);
    }
    // A keep-alive HTTP connection opened before the drain still gets answers.
    let mut probe = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(
        http_on(&mut probe, "GET", "/readyz", &[], "", false)
            .await
            .0,
        200
    );

    let lobby = Channel::parse("room:lobby").unwrap();
    for i in 0..20 {
        gw.node
            .broker()
            .publish(lobby.clone(), Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    gw.node.lifecycle.begin_drain();
    let (status, body) = http_on(&mut probe, "GET", "/readyz", &[], "", false).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = http_on(
        &mut probe,
        "GET",
        "/ws",
        &[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
        false,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"));

    for c in &mut clients {
        for i in 0..20 {
            assert_eq!(
                c.recv().await["data"],
                i,
                "queued events are flushed before the close"
            );
        }
        assert_eq!(c.ended().await, Ended::Closed(1012));
    }
    assert!(
        tokio::time::timeout(DEADLINE, gw.run)
            .await
            .unwrap()
            .unwrap(),
        "every session finished"
    );
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "the listener is closed"
    );
    assert_eq!(gw.node.hub.sizes(), Default::default());
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("serve")
        .env("GATEWAY_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_AUTH_HS_SECRET", SECRET)
        .env("GATEWAY_SERVER_DRAIN_SECONDS", "1")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = tokio::time::Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        assert!(start.elapsed() < DEADLINE, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("ws://{addr}/ws?token={}", token("alice", &[]));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut c = Client {
        ws,
        binary: false,
        protocol: None,
    };
    assert_eq!(c.recv().await["type"], "welcome");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(c.ended().await, Ended::Closed(1012));
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
