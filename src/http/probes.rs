//! `/healthz` (the process answers), `/readyz` (new sockets would be admitted)
//! and `/metrics` (Prometheus text from the node's own registry).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use prometheus::{Encoder, TextEncoder};

use super::{HttpResponse, error, json};
use crate::node::Node;

/// Always 200 while the process serves HTTP.
pub(super) fn healthz() -> HttpResponse {
    json(StatusCode::OK, r#"{"status":"ok"}"#.into())
}

/// 200 when ready; 503 with the reason when draining, broker down or full.
pub(super) fn readyz(node: &Node) -> HttpResponse {
    match node.readiness() {
        Ok(()) => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
        Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why.message()),
    }
}

/// Prometheus text format.
pub(super) fn metrics(node: &Node) -> HttpResponse {
    node.metrics.ready.set(i64::from(node.readiness().is_ok()));
    let mut buf = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&node.registry.gather(), &mut buf) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(buf)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}
