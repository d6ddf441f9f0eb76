//! `GET /api/nodes` (contract section 8): every live node, from the registry
//! each node refreshes every third of `server.registry_ttl_seconds`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::api::{ApiError, Params, authorize};
use super::{HttpResponse, json};
use crate::node::Node;

/// Handles `GET /api/nodes`.
pub(super) async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(&node, req.headers())?;
    Params::parse(req.uri(), &[])?;
    let nodes = node.broker().nodes().await?;
    node.metrics.registry_nodes.set(nodes.len() as i64);
    let body = serde_json::json!({ "nodes": nodes });
    Ok(json(StatusCode::OK, body.to_string()))
}
