//! `POST /api/publish`: backends without Redis (and the embedded mode) publish
//! here. The publication goes through the broker like every other, so this
//! node and every other deliver it through the same path. 202 means accepted
//! by the broker's queue, not yet delivered.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{HttpResponse, bearer, error, json};
use crate::broker::BrokerError;
use crate::node::Node;
use crate::protocol::{Channel, PayloadError, inspect};

#[derive(Deserialize)]
struct Body<'a> {
    channel: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Handles `POST /api/publish`.
pub(super) async fn handle(node: Arc<Node>, req: Request<Incoming>) -> HttpResponse {
    let keys = &node.config.api.keys;
    if keys.is_empty() {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the publish API is disabled: configure api.keys",
        );
    }
    let presented = bearer(req.headers()).unwrap_or("");
    if !keys
        .iter()
        .any(|k| constant_time_eq(k.as_bytes(), presented.as_bytes()))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown API key",
        );
    }
    // A publication must fit in one WebSocket frame, plus room for the envelope.
    let limit = node.config.websocket.max_frame_bytes + 1024;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "body exceeds websocket.max_frame_bytes",
        );
    }
    let body: Bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "body exceeds websocket.max_frame_bytes",
            );
        }
    };
    let parsed: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("expected {{\"channel\":..,\"data\":..}}: {e}"),
            );
        }
    };
    let Some(channel) = Channel::parse(parsed.channel) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_channel",
            "channel must be room:<R>, user:<U> or broadcast",
        );
    };
    let payload = Bytes::copy_from_slice(parsed.data.get().as_bytes());
    // The same check as client publishes and the broker's inbound path.
    match inspect(&payload, node.config.websocket.max_frame_bytes) {
        Ok(_) => {}
        Err(e @ PayloadError::TooLarge { .. }) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &e.to_string());
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    }
    match node.broker().publish(channel, payload).await {
        Ok(_) => {
            node.metrics
                .publications_in
                .with_label_values(&["http"])
                .inc();
            json(StatusCode::ACCEPTED, r#"{"ok":true}"#.into())
        }
        Err(e) => {
            node.metrics.broker_publish_errors.inc();
            let code = if e == BrokerError::Overloaded {
                "overloaded"
            } else {
                "broker_unavailable"
            };
            error(StatusCode::SERVICE_UNAVAILABLE, code, &e.to_string())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
