//! `TestGateway`: a gateway node in this process, listening on port 0 with a
//! test-friendly configuration (the kit's HMAC secret and API key, no message
//! rate limit, a 1 s drain), and the ways a test talks to it: WebSocket
//! clients, raw upgrade requests, the publish API, probes and metrics, and
//! waits on the node's own tables.

use std::sync::Arc;
use std::time::Duration;

use gateway::app::{self, Gateway};
use gateway::config::Config;
use gateway::node::Node;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::client::Client;
use super::http::http;
use super::token::SECRET;
use super::wait::{DEADLINE, eventually};

/// The publish API key of every test gateway.
pub const API_KEY: &str = "test-api-key";

/// Socket capacity of a test gateway unless a test sets one.
const CAPACITY: usize = 10_000;

/// The configuration every test gateway starts from.
/// The test gateways' configuration: port 0, a one-second drain, the
/// kit's secret and API key, no message rate limit, and history off, so
/// that frames keep their v1 shapes exactly (no `offset`, no `epoch`);
/// continuity tests turn history on with [`with_history`].
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.drain_seconds = 1;
    c.auth.hs_secret = SECRET.into();
    c.auth.leeway_seconds = 0;
    c.api.keys = vec![API_KEY.into()];
    c.limits.messages_per_second = 0;
    c.history.size = 0;
    c.history.user_size = 0;
    c
}

/// History on, with the built-in defaults (contract section 6).
pub fn with_history(c: &mut Config) {
    let defaults = gateway::config::HistoryConfig::default();
    c.history.size = defaults.size;
    c.history.user_size = defaults.user_size;
}

/// How a test gateway is made: configuration, capacity, deadline.
pub struct Builder {
    config: Config,
    capacity: usize,
    deadline: Duration,
}

impl Builder {
    /// A gateway with `config` as is.
    pub fn new(config: Config) -> Builder {
        Builder {
            config,
            capacity: CAPACITY,
            deadline: DEADLINE,
        }
    }

    /// Changes the configuration.
    pub fn config(mut self, edit: impl FnOnce(&mut Config)) -> Builder {
        edit(&mut self.config);
        self
    }

    /// The node's socket capacity.
    pub fn capacity(mut self, capacity: usize) -> Builder {
        self.capacity = capacity;
        self
    }

    /// How long any awaited event (a connect, a frame, a condition) may take.
    pub fn deadline(mut self, deadline: Duration) -> Builder {
        self.deadline = deadline;
        self
    }

    /// Builds and runs the node; does not wait for its broker.
    /// `RUST_LOG` shows its logs.
    pub async fn start(self) -> TestGateway {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let gw: Gateway = app::build(self.config, prometheus::Registry::new(), self.capacity)
            .await
            .expect("gateway builds");
        let (addr, node) = (gw.addr, gw.node.clone());
        let run = tokio::spawn(gw.run());
        TestGateway {
            addr,
            node,
            run,
            deadline: self.deadline,
        }
    }

    /// Builds and runs the node, and waits until it is ready (broker up).
    pub async fn ready(self) -> TestGateway {
        let gw = self.start().await;
        gw.wait_ready().await;
        gw
    }
}

/// A running node.
pub struct TestGateway {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its tables, metrics, broker and lifecycle.
    pub node: Arc<Node>,
    /// `app::Gateway::run`: resolves after the drain (`true`: every session finished).
    pub run: JoinHandle<bool>,
    /// Longest wait for any awaited event.
    pub deadline: Duration,
}

impl TestGateway {
    /// A builder from [`test_config`].
    pub fn builder() -> Builder {
        Builder::new(test_config())
    }

    /// A node with the test configuration.
    pub async fn start() -> TestGateway {
        Self::builder().start().await
    }

    /// A node with the test configuration changed by `edit`.
    pub async fn with(edit: impl FnOnce(&mut Config)) -> TestGateway {
        Self::builder().config(edit).start().await
    }

    /// Waits until the node is ready for sockets.
    pub async fn wait_ready(&self) {
        self.eventually("ready", |n| n.readiness().is_ok()).await;
    }

    /// `ws://.../ws?token=...`
    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Connects with the token in the query and reads the `welcome` frame.
    pub async fn connect(&self, token: &str) -> Client {
        let mut c = self
            .try_connect(self.ws_url(token).into_client_request().unwrap())
            .await
            .expect("upgrade accepted");
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c
    }

    /// Sends an upgrade request: the socket (welcome not yet read), or the
    /// refusal's status and JSON body.
    pub async fn try_connect(&self, request: Request) -> Result<Client, (u16, Value)> {
        match tokio::time::timeout(self.deadline, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
        {
            Ok((ws, response)) => {
                let protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_string());
                Ok(Client::new(ws, protocol).with_deadline(self.deadline))
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

    /// A request for `/ws` with the token, if any, in the Authorization header.
    pub fn request(&self, token: Option<&str>) -> Request {
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

    /// Sends an upgrade that must be refused; its status and JSON body.
    pub async fn refused(&self, request: Request) -> (u16, Value) {
        match self.try_connect(request).await {
            Ok(_) => panic!("upgrade should have been refused"),
            Err(refusal) => refusal,
        }
    }

    /// `POST /api/publish`; the status code.
    pub async fn publish_http(&self, channel: &str, data: Value) -> u16 {
        super::http::publish(self.addr, API_KEY, channel, data).await
    }

    /// A server API call with the kit's key: status and JSON body (`Null`
    /// when the body is not JSON).
    pub async fn api(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let auth = format!("Bearer {API_KEY}");
        let (status, text) = http(self.addr, method, path, &[("authorization", &auth)], body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The `presence` object of `room` from `GET /api/presence`.
    pub async fn presence(&self, room: &str) -> Value {
        let (status, body) = self
            .api("GET", &format!("/api/presence?channel=room:{room}"), "")
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET path`; status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], "").await
    }

    /// One metric sample's value from `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_value(&text, series)
    }

    /// Polls `check` on the node until it holds; fails the test after the deadline.
    pub async fn eventually(&self, what: &str, mut check: impl FnMut(&Node) -> bool) {
        eventually(what, self.deadline, || check(&self.node)).await;
    }

    /// Channels this node holds on its broker (broadcast not counted).
    pub fn live_subscriptions(&self) -> usize {
        self.node.broker().subscription_count()
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

/// One sample's value in a Prometheus text exposition (0 when absent).
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
