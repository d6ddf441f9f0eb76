//! `GET /ws`: the WebSocket handshake's shape (400, 426), then admission
//! (`admission.rs`), then the upgrade. Every refusal is a plain HTTP response
//! with the contract's status and JSON body, decided BEFORE any socket is
//! upgraded.
//!
//! After the 101, the session runs on the raw `TcpStream` that hyper hands
//! back (`Upgraded::downcast`), which saves the upgrade wrapper's memory on
//! every socket. The token itself is never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::HttpResponse;
use super::admission::{authenticate, precheck, refuse, resume_at};
use crate::config::Config;
use crate::node::Node;
use crate::protocol::{Refusal, Subprotocol};
use crate::session::{self, Admitted};

/// Handles `GET /ws`.
pub(super) fn handle(
    node: Arc<Node>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> HttpResponse {
    let (admitted, key) = match admit(&node, peer, &req) {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(&node, refusal),
    };
    let subprotocol = admitted.subprotocol;
    let offered = req.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL);
    let on_upgrade = hyper::upgrade::on(&mut req);
    node.metrics.upgrades_accepted.inc();
    let task_node = node.clone();
    let upgrade = async move {
        let handshake = Duration::from_millis(task_node.config.server.handshake_timeout_ms);
        let Ok(Ok(upgraded)) = tokio::time::timeout(handshake, on_upgrade).await else {
            return None;
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::error!("upgraded connection is not a TcpStream");
            return None;
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
        Some((task_node, ws))
    };
    // Two stages chained by `then` rather than one `async` block: the
    // upgrade's state and `admitted` are gone once the session runs, where
    // an `async` block would keep them beside the session for the socket's
    // whole life.
    let session = upgrade.then(move |upgraded| match upgraded {
        Some((node, ws)) => Either::Left(session::run(node, ws, admitted)),
        None => Either::Right(std::future::ready(())),
    });
    node.lifecycle.sessions().spawn(session);
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
            HeaderValue::from_static(subprotocol.name()),
        );
    }
    response
}

/// Small buffers keep idle sockets cheap: tungstenite's 128 KiB default read
/// buffer is zero-filled and resident on every socket.
fn ws_config(cfg: &Config) -> WebSocketConfig {
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
) -> Result<(Admitted, String), Refusal> {
    let headers = req.headers();
    let key = check_handshake(req)?;
    precheck(node, headers)?;
    let subprotocol = Subprotocol::negotiate(header_str(headers, &header::SEC_WEBSOCKET_PROTOCOL))
        .map_err(|()| {
            Refusal::BadRequest("offered subprotocols must include v1.json or v1.msgpack")
        })?
        .unwrap_or(Subprotocol::JSON);
    let resume_at = resume_at(req.uri())?;
    let (identity, permit) = authenticate(node, peer, headers, req.uri())?;
    Ok((
        Admitted {
            identity,
            subprotocol,
            permit,
            resume_at,
        },
        key,
    ))
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

/// A valid RFC 6455 opening handshake over HTTP/1.1, or 400 (426 for a
/// wrong WebSocket version).
fn check_handshake(req: &Request<Incoming>) -> Result<String, Refusal> {
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(Refusal::BadRequest("WebSocket upgrades use GET"));
    }
    // HTTP/1.0 has no upgrade mechanism (RFC 6455 4.1 asks for 1.1 or
    // higher): a 101 to it would lead nowhere.
    if req.version() != Version::HTTP_11 {
        return Err(Refusal::BadRequest("WebSocket upgrades need HTTP/1.1"));
    }
    if !has_token(headers, &header::UPGRADE, "websocket")
        || !has_token(headers, &header::CONNECTION, "upgrade")
    {
        return Err(Refusal::BadRequest(
            "expected a WebSocket upgrade request (Upgrade: websocket)",
        ));
    }
    if header_str(headers, &header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return Err(Refusal::WrongVersion);
    }
    match header_str(headers, &header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(key.to_string()),
        _ => Err(Refusal::BadRequest("missing Sec-WebSocket-Key")),
    }
}
