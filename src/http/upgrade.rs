//! Admission, then the WebSocket upgrade. Every refusal is a plain HTTP
//! response with the contract's status and JSON body, decided BEFORE any
//! socket is upgraded, cheapest checks first: handshake shape (400), node
//! state (503), connection rate (429), origin (403), token (401), per-IP and
//! per-user caps (429).
//!
//! After the 101, the session runs on the raw `TcpStream` that hyper hands
//! back (`Upgraded::downcast`), which saves the upgrade wrapper's memory on
//! every socket. The token itself is never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{HttpResponse, error};
use crate::auth::AuthError;
use crate::config::Config;
use crate::limits::Refusal;
use crate::node::{Node, NotReady};
use crate::protocol::Format;
use crate::session::{self, Admitted};

struct Refused {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl Refused {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Handles `GET /ws`.
pub fn handle(node: Arc<Node>, peer: SocketAddr, mut req: Request<Incoming>) -> HttpResponse {
    match admit(&node, peer, &req) {
        Err(refused) => {
            node.metrics
                .upgrades_refused
                .with_label_values(&[refused.reason])
                .inc();
            error(refused.status, refused.reason, &refused.message)
        }
        Ok((admitted, key)) => {
            let format = admitted.format;
            let offered = req.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL);
            let on_upgrade = hyper::upgrade::on(&mut req);
            node.metrics.upgrades_accepted.inc();
            let task_node = node.clone();
            node.lifecycle.sessions().spawn(async move {
                let handshake = Duration::from_millis(task_node.config.server.handshake_timeout_ms);
                let Ok(Ok(upgraded)) = tokio::time::timeout(handshake, on_upgrade).await else {
                    return;
                };
                let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
                    tracing::error!("upgraded connection is not a TcpStream");
                    return;
                };
                // `read_buf` may be a view into hyper's whole read buffer: copy
                // out the few bytes and let the buffer go, or every socket keeps it.
                let hyper::upgrade::Parts { io, read_buf, .. } = parts;
                let read_ahead = read_buf.to_vec();
                drop(read_buf);
                let config = ws_config(&task_node.config);
                let ws = WebSocketStream::from_partially_read(
                    io.into_inner(),
                    read_ahead,
                    Role::Server,
                    Some(config),
                )
                .await;
                session::run(task_node, ws, admitted).await;
            });
            let mut response = Response::new(Default::default());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = response.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
            if offered {
                h.insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(format.subprotocol()),
                );
            }
            response
        }
    }
}

/// Small buffers keep idle sockets cheap: tungstenite's 128 KiB default read
/// buffer is zero-filled and resident on every socket.
pub fn ws_config(cfg: &Config) -> WebSocketConfig {
    let ws = &cfg.websocket;
    WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(ws.outbox_max_bytes + 2 * ws.max_frame_bytes + 64 * 1024)
        .max_message_size(Some(ws.max_frame_bytes))
        .max_frame_size(Some(ws.max_frame_bytes))
}

fn admit(
    node: &Arc<Node>,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<(Admitted, String), Refused> {
    let headers = req.headers();
    let key = check_handshake(req)?;
    match node.readiness() {
        Ok(()) => {}
        Err(NotReady::Draining) => {
            return Err(Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "node is draining: reconnect to another node",
            ));
        }
        Err(NotReady::Full) => {
            return Err(Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "capacity",
                NotReady::Full.message(),
            ));
        }
        Err(NotReady::BrokerDown) => {
            return Err(Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                NotReady::BrokerDown.message(),
            ));
        }
    }
    node.limits.check_node().map_err(refusal)?;
    check_origin(&node.config.server.allowed_origins, headers)?;
    let format = Format::negotiate(header_str(headers, &header::SEC_WEBSOCKET_PROTOCOL))
        .map_err(|()| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "offered subprotocols must include v1.json or v1.msgpack",
            )
        })?
        .unwrap_or(Format::Json);
    let identity = match token(req, node.config.auth.allow_query_token) {
        None => Err(AuthError::Missing),
        Some(token) => node.verifier.verify(token),
    }
    .map_err(|e| {
        node.metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
        Refused::new(StatusCode::UNAUTHORIZED, "unauthorized", e.message())
    })?;
    let permit = node
        .limits
        .admit(peer.ip(), &identity.user)
        .map_err(refusal)?;
    Ok((
        Admitted {
            identity,
            format,
            permit,
        },
        key,
    ))
}

fn refusal(r: Refusal) -> Refused {
    match r {
        Refusal::Capacity => Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "capacity",
            "node at connection capacity",
        ),
        Refusal::Rate => Refused::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "connection rate limit reached, retry later",
        ),
        Refusal::PerIp => Refused::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ip_limit",
            "too many sockets from this address",
        ),
        Refusal::PerUser => Refused::new(
            StatusCode::TOO_MANY_REQUESTS,
            "user_limit",
            "too many sockets for this user",
        ),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn has_token(headers: &HeaderMap, name: &header::HeaderName, wanted: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(wanted))
}

/// A valid RFC 6455 opening handshake, or 400 (426 for a wrong version).
fn check_handshake(req: &Request<Incoming>) -> Result<String, Refused> {
    let bad = |m: &str| Refused::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(bad("WebSocket upgrades use GET"));
    }
    if !has_token(headers, &header::UPGRADE, "websocket")
        || !has_token(headers, &header::CONNECTION, "upgrade")
    {
        return Err(bad(
            "expected a WebSocket upgrade request (Upgrade: websocket)",
        ));
    }
    if header_str(headers, &header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return Err(Refused::new(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    match header_str(headers, &header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(key.to_string()),
        _ => Err(bad("missing Sec-WebSocket-Key")),
    }
}

/// Browsers always send `Origin`; with an allowlist configured it must match.
/// Requests without `Origin` (non-browser clients) are not origin-checked:
/// such clients can send any header, so refusing them protects nothing.
fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), Refused> {
    if allowed.is_empty() {
        return Ok(());
    }
    match header_str(headers, &header::ORIGIN) {
        None => Ok(()),
        Some(origin)
            if allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(origin.trim_end_matches('/'))) =>
        {
            Ok(())
        }
        Some(_) => Err(Refused::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "origin not allowed",
        )),
    }
}

/// `Authorization: Bearer <JWT>`, else `?token=<JWT>` when allowed.
fn token(req: &Request<Incoming>, allow_query: bool) -> Option<&str> {
    if let Some(value) = header_str(req.headers(), &header::AUTHORIZATION) {
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    if !allow_query {
        return None;
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}
