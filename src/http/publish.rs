//! `POST /api/publish`: backends without Redis (and the embedded mode) publish
//! here. The publication goes through the broker like every other, so this
//! node and every other deliver it through the same path. The reply, 202,
//! carries the offset history gave it, and is sent only once the broker
//! stored it (for a channel without history: once the broker took it).

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::api::{ApiError, authorize, bad_channel, body};
use super::{HttpResponse, json};
use crate::node::Node;
use crate::protocol::{Channel, PayloadError, inspect};

#[derive(Deserialize)]
struct Body<'a> {
    channel: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Handles `POST /api/publish`.
pub(super) async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(&node, req.headers())?;
    // A publication must fit in one WebSocket frame, plus room for the envelope.
    let body = body(req, node.config.websocket.max_frame_bytes + 1024).await?;
    let parsed: Body = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("expected {{\"channel\":..,\"data\":..}}: {e}")))?;
    let channel = Channel::parse(parsed.channel).ok_or_else(bad_channel)?;
    let payload = Bytes::copy_from_slice(parsed.data.get().as_bytes());
    // The same check as client publishes and the broker's inbound path.
    inspect(&payload, node.config.websocket.max_frame_bytes).map_err(|e| match e {
        PayloadError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
        _ => ApiError::bad(e.to_string()),
    })?;
    let published = node
        .broker()
        .publish(channel, payload)
        .await
        .inspect_err(|_| node.metrics.broker_publish_errors.inc())?;
    node.metrics
        .publications_in
        .with_label_values(&["http"])
        .inc();
    let body = match published.offset {
        Some(offset) => format!(r#"{{"ok":true,"offset":{offset}}}"#),
        None => r#"{"ok":true}"#.to_owned(),
    };
    Ok(json(StatusCode::ACCEPTED, body))
}
