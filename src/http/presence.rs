//! `GET /api/presence?channel=room:lobby` (contract section 8): the bare
//! `presence` object of section 7, across every node.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::api::{ApiError, Params, authorize};
use super::{HttpResponse, json};
use crate::node::Node;
use crate::protocol::Channel;

/// Handles `GET /api/presence`.
pub(super) async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(&node, req.headers())?;
    let params = Params::parse(req.uri(), &["channel"])?;
    let Channel::Room(room) = params.channel()? else {
        return Err(ApiError::BadRequest(
            "bad_channel",
            "presence is kept for rooms only: channel must be room:<R>".into(),
        ));
    };
    let presence = node.presence.query(&room).await?;
    Ok(json(
        StatusCode::OK,
        serde_json::to_string(&presence).unwrap_or_default(),
    ))
}
