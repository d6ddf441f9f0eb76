//! `TestGateway`: a node on port 0 with test-friendly configuration, plus a
//! small WebSocket client and a raw HTTP client. Waits are bounded by
//! deadlines that fail the test; they never stand in for synchronisation.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use gateway::app::{self, Gateway};
use gateway::config::Config;
use gateway::node::Node;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpStream;

pub use crate::http::{http, http_on};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HMAC secret every test gateway verifies with.
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
/// The publish API key of every test gateway.
pub const API_KEY: &str = "test-api-key";
/// How long any single awaited event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs `claims` with HS256 and the test secret.
pub fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, claims, SECRET.as_bytes())
}

pub fn sign_with(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A valid token for `sub` that may join and publish to `rooms`.
pub fn token(sub: &str, rooms: &[&str]) -> String {
    sign(&json!({"sub": sub, "exp": now() + 3600, "iat": now(), "rooms": rooms, "publish": rooms}))
}

pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.drain_seconds = 1;
    c.auth.hs_secret = SECRET.into();
    c.auth.leeway_seconds = 0;
    c.api.keys = vec![API_KEY.into()];
    c.limits.messages_per_second = 0;
    c
}

pub struct TestGateway {
    pub addr: std::net::SocketAddr,
    pub node: Arc<Node>,
    pub run: JoinHandle<bool>,
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        Self::with(|_| {}).await
    }

    pub async fn with(edit: impl FnOnce(&mut Config)) -> TestGateway {
        Self::with_capacity(edit, 10_000).await
    }

    pub async fn with_capacity(edit: impl FnOnce(&mut Config), capacity: usize) -> TestGateway {
        let mut config = test_config();
        edit(&mut config);
        let gw: Gateway = app::build(config, prometheus::Registry::new(), capacity)
            .await
            .expect("gateway builds");
        let (addr, node) = (gw.addr, gw.node.clone());
        let run = tokio::spawn(gw.run());
        TestGateway { addr, node, run }
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Connects and reads the `welcome` frame.
    pub async fn connect(&self, token: &str) -> Client {
        let mut c = self
            .try_connect(self.ws_url(token).into_client_request().unwrap())
            .await
            .expect("upgrade accepted");
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c
    }

    pub async fn try_connect(
        &self,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Client, (u16, Value)> {
        match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
        {
            Ok((ws, response)) => {
                let proto = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_string());
                Ok(Client {
                    ws,
                    binary: proto.as_deref() == Some("v1.msgpack"),
                    protocol: proto,
                })
            }
            Err(WsError::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("unexpected connect error: {e}"),
        }
    }

    /// A request for `/ws` with the token in the Authorization header.
    pub fn request(
        &self,
        token: Option<&str>,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut req = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        req
    }

    pub async fn refused(
        &self,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> (u16, Value) {
        match self.try_connect(request).await {
            Ok(_) => panic!("upgrade should have been refused"),
            Err(refusal) => refusal,
        }
    }

    /// `POST /api/publish`; returns the status code.
    pub async fn publish_http(&self, channel: &str, data: Value) -> u16 {
        crate::http::publish(self.addr, API_KEY, channel, data).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], "").await
    }

    /// One metric sample's value from `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_value(&text, series)
    }

    /// Polls `check` until it holds; fails the test after the deadline.
    pub async fn eventually(&self, what: &str, mut check: impl FnMut(&Node) -> bool) {
        let start = tokio::time::Instant::now();
        while !check(&self.node) {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every table is empty and every count is back to zero.
    pub async fn assert_tables_empty(&self) {
        self.eventually("all tables empty", |n| {
            n.hub.sizes() == Default::default()
                && n.limits.table_sizes() == (0, 0, 0)
                && n.broker().subscription_count() == 0
        })
        .await;
        let m = &self.node.metrics;
        assert_eq!(
            (
                m.sockets_open.get(),
                m.subscriptions.get(),
                m.channels.get()
            ),
            (0, 0, 0)
        );
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub binary: bool,
    pub protocol: Option<String>,
}

/// How a socket ended, seen from the client.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(u16),
    Dropped,
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        let msg = if self.binary {
            Message::binary(rmp_serde::to_vec_named(&frame).unwrap())
        } else {
            Message::text(frame.to_string())
        };
        self.ws.send(msg).await.unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next data frame as JSON (decoding MessagePack on binary sockets).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("frame in time")
                .expect("socket open")
                .expect("no socket error");
            match msg {
                Message::Text(t) => {
                    assert!(!self.binary, "text frame on a MessagePack socket");
                    return serde_json::from_str(&t).unwrap();
                }
                Message::Binary(b) => {
                    assert!(self.binary, "binary frame on a JSON socket");
                    return rmp_serde::from_slice(&b).unwrap();
                }
                Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => return Ended::Closed(frame.code.into()),
                Some(Ok(Message::Close(None))) => return Ended::Closed(1005),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    /// Subscribes and waits for the `ok`.
    pub async fn subscribe(&mut self, room: &str) {
        self.send(json!({"type": "subscribe", "room": room, "id": room}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply, json!({"type": "ok", "id": room}));
    }
}
