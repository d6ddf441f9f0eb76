//! `POST /api/revoke {"jti":".."}` or `{"user":"alice","issued_before":<unix
//! s>}` (contract section 8). The revocation is stored first (a node that
//! starts later loads it), then sent on the control channel (every node
//! refuses the tokens from then on and closes the sockets using them with
//! 4001), and this node enforces it before replying.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::api::{ApiError, authorize, json_body, user_id};
use super::disconnect::BODY_LIMIT;
use super::{HttpResponse, json};
use crate::cluster::{Control, Revocation};
use crate::node::Node;

/// Longest `jti` accepted.
const MAX_JTI_LEN: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    jti: Option<String>,
    user: Option<String>,
    issued_before: Option<u64>,
}

/// Handles `POST /api/revoke`.
pub(super) async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(&node, req.headers())?;
    let body: Body = json_body(
        req,
        BODY_LIMIT,
        r#"{"jti":".."} or {"user":"..","issued_before":<unix seconds>}"#,
    )
    .await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let kept = node.config.api.revocation_ttl_seconds;
    let revocation = match body {
        Body {
            jti: Some(jti),
            user: None,
            issued_before: None,
        } => {
            if jti.is_empty() || jti.len() > MAX_JTI_LEN {
                return Err(ApiError::bad(format!("jti must be 1-{MAX_JTI_LEN} bytes")));
            }
            Revocation::Jti {
                jti,
                expires: now.saturating_add(kept),
            }
        }
        Body {
            jti: None,
            user: Some(user),
            issued_before: Some(issued_before),
        } => Revocation::User {
            user: user_id(user)?,
            issued_before,
            // The covered tokens were issued before `issued_before`.
            expires: issued_before.max(now).saturating_add(kept),
        },
        Body {
            jti: None,
            user: Some(_),
            issued_before: None,
        } => {
            return Err(ApiError::bad(
                "issued_before (unix seconds) is required with user",
            ));
        }
        _ => {
            return Err(ApiError::bad(
                r#"expected {"jti":".."} or {"user":"..","issued_before":<unix seconds>}"#,
            ));
        }
    };
    node.broker().store_revocation(revocation.clone()).await?;
    node.revocations.apply(&revocation);
    node.broker()
        .control(Control::Revoke { revocation })
        .await?;
    Ok(json(StatusCode::OK, r#"{"ok":true}"#.to_owned()))
}
