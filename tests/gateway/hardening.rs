//! Regression tests for the defects found by attack (one test, or a group,
//! per defect; each failed before its fix): absurd `exp`, oversized request
//! heads, WebSocket-level ping floods, protocol violations, MessagePack-to-
//! JSON expansion, deep JSON, HTTP/1.0 upgrades; plus the 426 header and the
//! case-insensitive `Bearer`. Tokens in trace logs are tested in
//! `tests/cli.rs`, which runs the binary.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::kit::*;

/// Opens a TCP connection and upgrades it by hand; returns the stream after
/// the 101 (with the server's first frame, `welcome`, still unread).
async fn raw_upgrade(gw: &TestGateway, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /ws?token={token} HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\n\
         connection: upgrade\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads an HTTP response head byte by byte (so nothing after it is consumed).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .expect("response in time")
            .unwrap();
        assert_eq!(n, 1, "connection closed inside the response head");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// One server frame read raw: (opcode, payload).
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut h))
        .await
        .expect("frame in time")
        .ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.ok()?;
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.ok()?;
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x0f, payload))
}

/// Reads frames until a close frame; its code (`None`: dropped without one).
async fn raw_close_code(s: &mut TcpStream) -> Option<u16> {
    while let Some((opcode, payload)) = read_frame(s).await {
        if opcode == 0x8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    None
}

/// A client frame with the FIN bit, the given first byte and a mask.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

// ---------------------------------------------------------------- defect 1

#[tokio::test]
async fn an_absurd_exp_is_refused_401_by_default() {
    let gw = TestGateway::start().await;
    let far =
        sign(&json!({"sub": "alice", "exp": 10_000_000_000_000_000_000u64, "rooms": ["lobby"]}));
    let (status, body) = gw.refused(gw.request(Some(&far))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_token_lifetime_seconds"),
        "{body}"
    );
    assert_eq!(
        gw.metric(r#"gateway_auth_failures_total{reason="lifetime"}"#)
            .await,
        1.0
    );
    assert_eq!(gw.node.metrics.sockets_open.get(), 0);
}

#[tokio::test]
async fn an_absurd_exp_with_unlimited_lifetime_serves_and_leaks_nothing() {
    let gw = TestGateway::with(|c| c.auth.max_token_lifetime_seconds = 0).await;
    let far =
        sign(&json!({"sub": "alice", "exp": 10_000_000_000_000_000_000u64, "rooms": ["lobby"]}));
    for _ in 0..3 {
        let mut c = gw.connect(&far).await;
        c.subscribe("lobby").await;
        // The refresh path saturates the same way.
        c.send(json!({"type": "refresh", "token": far, "id": 1}))
            .await;
        assert_eq!(c.recv().await, json!({"type": "ok", "id": 1}));
        c.ws.close(None).await.unwrap();
        assert!(matches!(c.ended().await, Ended::Closed(_) | Ended::Dropped));
    }
    gw.assert_tables_empty().await;
}

// ---------------------------------------------------------------- defect 2

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let gw = TestGateway::start().await;
    for size in [64 * 1024, 400 * 1024] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let big = "a".repeat(size);
        let req = format!(
            "GET /ws HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             x-filler: {big}\r\n\r\n"
        );
        // The server may answer and close before it has read everything.
        let _ = s.write_all(req.as_bytes()).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 431"), "{size}: {text}");
    }
    assert_eq!(gw.node.metrics.upgrades_accepted.get(), 0);
    gw.eventually("431s counted", |n| {
        n.metrics
            .http_errors
            .with_label_values(&["head_too_large"])
            .get()
            == 2
    })
    .await;
    // An ordinary head still gets through.
    let mut c = gw.connect(&token("alice", &["lobby"])).await;
    c.subscribe("lobby").await;
}

// ---------------------------------------------------------------- defect 3

#[tokio::test]
async fn a_websocket_ping_flood_is_rate_limited_and_closed_4029() {
    let gw = TestGateway::with(|c| {
        c.limits.messages_per_second = 50;
        c.limits.message_burst = 100;
        c.limits.rate_limit_strikes = 20;
    })
    .await;
    let mut s = raw_upgrade(&gw, &token("alice", &[])).await;
    let (opcode, welcome) = read_frame(&mut s).await.unwrap();
    assert_eq!(opcode, 0x1, "{welcome:?}");
    let flood: Vec<u8> = (0..50_000).flat_map(|_| masked(0x89, b"")).collect();
    // The server stops reading once it closes; the rest of the flood may
    // meet a reset.
    let writer = {
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            let _ = w.write_all(&flood).await;
            w
        });
        let (mut pongs, mut code) = (0u32, None);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Parse server frames from the read half until the close frame.
        'read: loop {
            let n = match tokio::time::timeout(DEADLINE, r.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => panic!("no close within the deadline"),
            };
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 2 && buf.len() >= 2 + (buf[1] & 0x7f) as usize {
                let len = (buf[1] & 0x7f) as usize;
                match buf[0] & 0x0f {
                    0xA => pongs += 1,
                    0x8 => {
                        code = Some(u16::from_be_bytes([buf[2], buf[3]]));
                        break 'read;
                    }
                    _ => {}
                }
                buf.drain(..2 + len);
            }
        }
        assert_eq!(code, Some(4029));
        // At most the burst plus the strikes' worth of pings were answered.
        assert!(pongs <= 130, "{pongs} pongs for 50,000 pings");
        writer
    };
    writer.abort();
    assert_eq!(gw.node.metrics.closes.with_label_values(&["4029"]).get(), 1);
}

// ---------------------------------------------------------------- defect 4

#[tokio::test]
async fn protocol_violations_close_with_1002_or_1007_and_are_counted() {
    let gw = TestGateway::start().await;
    let cases: [(&str, Vec<u8>, u16); 7] = [
        ("utf8", masked(0x81, b"\"\xff\xfe\""), 1007),
        ("reserved_opcode", masked(0x83, b"x"), 1002),
        ("reserved_bits", masked(0xC1, b"{}"), 1002),
        ("unmasked", vec![0x81, 0x02, b'{', b'}'], 1002),
        ("control_frame", masked(0x89, &[0u8; 126]), 1002),
        ("continuation", masked(0x80, b"x"), 1002),
        ("close_frame", masked(0x88, b"x"), 1002),
    ];
    for (kind, frame, expected) in cases {
        let mut s = raw_upgrade(&gw, &token("alice", &[])).await;
        read_frame(&mut s).await.unwrap(); // welcome
        s.write_all(&frame).await.unwrap();
        assert_eq!(raw_close_code(&mut s).await, Some(expected), "{kind}");
        gw.eventually(kind, |n| {
            n.metrics
                .protocol_violations
                .with_label_values(&[kind])
                .get()
                == 1
        })
        .await;
    }
    gw.assert_tables_empty().await;
}

// ---------------------------------------------------------------- defect 5

#[tokio::test]
async fn a_messagepack_publish_that_expands_as_json_is_refused_too_large() {
    let gw = TestGateway::start().await;
    let tok = token("alice", &["lobby"]);
    let mut watcher = gw.connect(&tok).await;
    watcher.subscribe("lobby").await;
    let mut req = gw.request(Some(&tok));
    req.headers_mut()
        .insert("sec-websocket-protocol", "v1.msgpack".parse().unwrap());
    let mut pubr = gw.try_connect(req).await.unwrap();
    assert_eq!(pubr.recv().await["type"], "welcome");
    // 60,000 nils: 60 KB of MessagePack (under the 64 KiB frame limit),
    // 300 KB as JSON.
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
        data: vec![(); 60_000],
        id: 5,
    })
    .unwrap();
    assert!(frame.len() < 65_536);
    pubr.send_raw(Message::binary(frame)).await;
    let reply = pubr.recv().await;
    assert_eq!(
        (
            reply["type"].as_str(),
            reply["code"].as_str(),
            reply["id"].as_i64()
        ),
        (Some("error"), Some("too_large"), Some(5)),
        "{reply}"
    );
    // The JSON subscriber is still there and got nothing but what follows.
    assert_eq!(
        gw.publish_http("room:lobby", json!({"after": true})).await,
        202
    );
    assert_eq!(watcher.recv().await["data"], json!({"after": true}));
    assert_eq!(gw.node.metrics.slow_consumer_closes.get(), 0);
    // The HTTP API applies the same bound to the other encoding: 64 KiB of
    // JSON floats would be 3x that as MessagePack.
    let floats: Vec<f64> = vec![1.5; 10_000];
    assert_eq!(gw.publish_http("room:lobby", json!(floats)).await, 413);
}

// ---------------------------------------------------------------- defect 6

fn deep(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

#[tokio::test]
async fn deep_json_is_refused_on_every_publish_path() {
    let gw = TestGateway::start().await;
    let tok = token("alice", &["lobby"]);
    let mut c = gw.connect(&tok).await;
    c.subscribe("lobby").await;
    let frame = format!(
        r#"{{"type":"publish","room":"lobby","data":{},"id":6}}"#,
        deep(30_000)
    );
    c.send_raw(Message::text(frame)).await;
    let reply = c.recv().await;
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_i64()),
        (Some("bad_frame"), Some(6)),
        "{reply}"
    );
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 64")
    );
    let body = format!(r#"{{"channel":"room:lobby","data":{}}}"#, deep(30_000));
    let auth = format!("Bearer {API_KEY}");
    let (status, text) = http(
        gw.addr,
        "POST",
        "/api/publish",
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn deep_json_from_the_broker_reaches_both_formats_as_the_same_string() {
    let gw = TestGateway::start().await;
    let tok = token("alice", &["lobby"]);
    let mut json_client = gw.connect(&tok).await;
    json_client.subscribe("lobby").await;
    let mut req = gw.request(Some(&tok));
    req.headers_mut()
        .insert("sec-websocket-protocol", "v1.msgpack".parse().unwrap());
    let mut msgpack_client = gw.try_connect(req).await.unwrap();
    assert_eq!(msgpack_client.recv().await["type"], "welcome");
    msgpack_client.subscribe("lobby").await;
    let payload = deep(30_000);
    // As a backend's SPUBLISH would: straight into the broker.
    gw.node
        .broker()
        .publish(
            gateway::protocol::Channel::parse("room:lobby").unwrap(),
            bytes::Bytes::from(payload.clone()),
        )
        .await
        .unwrap();
    let a = json_client.recv().await;
    let b = msgpack_client.recv().await;
    assert_eq!(a["data"], Value::String(payload));
    assert_eq!(a, b, "never different data to different formats");
}

// ---------------------------------------------------------------- defect 7

#[tokio::test]
async fn an_http_1_0_upgrade_is_refused_before_any_101() {
    let gw = TestGateway::start().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /ws?token={} HTTP/1.0\r\nhost: test\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token("alice", &[])
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or_default();
    assert!(status_line.ends_with(" 400 Bad Request"), "{text}");
    assert!(text.contains("HTTP/1.1"), "the body says why: {text}");
    assert_eq!(gw.node.metrics.upgrades_accepted.get(), 0);
    assert_eq!(gw.node.metrics.sockets_open.get(), 0);
}

// ------------------------------------------------------- RFC 6455 / RFC 7235

#[tokio::test]
async fn a_wrong_websocket_version_gets_426_with_the_supported_version() {
    let gw = TestGateway::start().await;
    let (status, _) = http(
        gw.addr,
        "GET",
        "/ws",
        &[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    )
    .await;
    assert_eq!(status, 426);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-version: 8\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
}

#[tokio::test]
async fn bearer_is_case_insensitive_on_the_upgrade_and_the_api() {
    let gw = TestGateway::start().await;
    let tok = token("alice", &["lobby"]);
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let mut req = gw.request(None);
        req.headers_mut()
            .insert("authorization", format!("{scheme} {tok}").parse().unwrap());
        let mut c = gw.try_connect(req).await.expect("upgraded");
        assert_eq!(c.recv().await["type"], "welcome");
        let auth = format!("{scheme} {API_KEY}");
        let (status, body) = http(
            gw.addr,
            "POST",
            "/api/publish",
            &[("authorization", &auth)],
            r#"{"channel":"broadcast","data":1}"#,
        )
        .await;
        assert_eq!(status, 202, "{scheme}: {body}");
    }
}
