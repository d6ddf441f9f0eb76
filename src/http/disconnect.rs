//! `POST /api/disconnect {"user":"alice","reconnect":false}` (contract
//! section 8): every socket of the user, on every node, is closed with 4003
//! (or 1012 with `"reconnect":true`). The message goes out on the control
//! channel, which this node hears too; the reply means every node that is
//! subscribed to it has been sent it.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::api::{ApiError, authorize, json_body, user_id};
use super::{HttpResponse, json};
use crate::cluster::Control;
use crate::node::Node;

/// Largest body accepted (a user id is at most 256 bytes).
pub(super) const BODY_LIMIT: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    user: String,
    #[serde(default)]
    reconnect: bool,
}

/// Handles `POST /api/disconnect`.
pub(super) async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(&node, req.headers())?;
    let body: Body = json_body(req, BODY_LIMIT, r#"{"user":"..","reconnect":false}"#).await?;
    let user = user_id(body.user)?;
    node.broker()
        .control(Control::Disconnect {
            user,
            reconnect: body.reconnect,
        })
        .await?;
    Ok(json(StatusCode::OK, r#"{"ok":true}"#.to_owned()))
}
