//! The node's one HTTP port (hyper 1.x): `GET /ws` (admission, then upgrade),
//! the server API (`/api/*`, one file per call, what they share in
//! `api.rs`), `/healthz`, `/readyz`, `/metrics`.
//!
//! The accept loop never spins on `EMFILE`: the node's socket capacity is set
//! below the open-files limit, so a full node still has descriptors to answer
//! 503 with; if `accept` fails anyway it backs off briefly. It stops accepting
//! as soon as the node starts draining.
//!
//! A request head larger than `server.max_header_bytes` is answered 431 by
//! hyper before any route sees it, and one that does not arrive within
//! `server.handshake_timeout_ms` is dropped: neither can hold a large buffer
//! for long. Both are counted in `gateway_http_errors_total`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::lifecycle::Phase;
use crate::node::Node;
use crate::session::SseBody;

mod admission;
mod api;
mod disconnect;
mod history;
mod nodes;
mod presence;
mod probes;
mod publish;
mod revoke;
mod sse;
mod upgrade;

/// Response type of every route but `/sse`.
pub type HttpResponse = Response<Full<Bytes>>;

/// What the port answers with: a whole body, or an SSE stream.
pub type Body = Either<Full<Bytes>, SseBody>;

/// Accepts connections until the node starts draining.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let mut phase = node.lifecycle.watch();
    loop {
        let accepted = tokio::select! {
            _ = phase.wait_for(|p| *p != Phase::Running) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let handshake = Duration::from_millis(node.config.server.handshake_timeout_ms);
            let max_head = node.config.server.max_header_bytes;
            let metrics = node.metrics.clone();
            let service = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(route(node, peer, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake)
                .max_buf_size(max_head)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                let kind = if e.is_parse_too_large() {
                    Some("head_too_large")
                } else if e.is_timeout() {
                    Some("head_timeout")
                } else if e.is_parse() {
                    Some("malformed")
                } else {
                    None
                };
                if let Some(kind) = kind {
                    metrics.http_errors.with_label_values(&[kind]).inc();
                }
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    tracing::info!("listener closed");
}

async fn route(node: Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/sse" {
        return sse::handle(node, peer, req);
    }
    route_whole(node, peer, req).await.map(Either::Left)
}

async fn route_whole(node: Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> HttpResponse {
    match (req.method(), req.uri().path()) {
        (_, "/ws") => upgrade::handle(node, peer, req),
        (&Method::POST, "/api/publish") => api_reply(publish::handle(node, req).await),
        (&Method::GET, "/api/history") => api_reply(history::handle(node, req).await),
        (&Method::GET, "/api/presence") => api_reply(presence::handle(node, req).await),
        (&Method::POST, "/api/disconnect") => api_reply(disconnect::handle(node, req).await),
        (&Method::POST, "/api/revoke") => api_reply(revoke::handle(node, req).await),
        (&Method::GET, "/api/nodes") => api_reply(nodes::handle(node, req).await),
        (_, path) if let Some(method) = api::method_of(path) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("use {method}"),
        ),
        (&Method::GET, "/healthz") => probes::healthz(),
        (&Method::GET, "/readyz") => probes::readyz(&node),
        (&Method::GET, "/metrics") => probes::metrics(&node),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

fn api_reply(result: Result<HttpResponse, api::ApiError>) -> HttpResponse {
    result.unwrap_or_else(api::ApiError::response)
}

/// The credentials of `Authorization: Bearer <credentials>`, the scheme
/// matched case-insensitively (RFC 7235). The one parser for the upgrade's
/// token and the API's key.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(credentials.trim()).filter(|c| !c.is_empty())
}

/// The contract's error body: `{"error":{"code":"...","message":"..."}}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    json(status, body.to_string())
}

/// A JSON response.
pub fn json(status: StatusCode, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_is_matched_case_insensitively() {
        for ok in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "BeArEr  abc ",
            "Bearer\tabc",
        ] {
            assert_eq!(bearer(&auth(ok)), Some("abc"), "{ok:?}");
        }
        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer(&auth(bad)), None, "{bad:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
