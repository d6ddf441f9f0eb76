//! Drain: not ready at once, listener closed, every socket closed with 1012
//! after its queued frames, and `run` finishes; as a process, SIGTERM exits 0.

use std::process::Stdio;

use bytes::Bytes;
use gateway::protocol::Channel;
use tokio::net::TcpStream;

use crate::kit::*;

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
        c.expect_close(1012).await;
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
    let port = free_port();
    let dir = TempDir::new("gateway-sigterm-test");
    let gateway = Proc::terminate_on_drop(
        gateway_command(&dir.0)
            .arg("serve")
            .env("GATEWAY_SERVER_LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEWAY_AUTH_HS_SECRET", SECRET)
            .env("GATEWAY_SERVER_DRAIN_SECONDS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "gateway",
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually_async("gateway listening", DEADLINE, || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let url = format!("ws://{addr}/ws?token={}", token("alice", &[]));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut c = Client::new(ws, None);
    assert_eq!(c.recv().await["type"], "welcome");
    gateway.terminate();
    c.expect_close(1012).await;
    let exit = tokio::task::spawn_blocking(move || {
        let mut gateway = gateway;
        gateway.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(exit.code(), Some(0));
}
