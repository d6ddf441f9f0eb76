//! `GET /api/history?channel=room:lobby&since=41&epoch=k3Jd&limit=100`
//! (contract section 8): a channel's position and its publications, oldest
//! first: the first `limit` after `since`, or the newest `limit` without it.
//! `recovered` is section 6's: true only when `since` and `epoch` were given,
//! the epoch matches, and every publication after `since` is still kept.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use super::api::{ApiError, Params, authorize};
use super::{HttpResponse, json};
use crate::hub::EVENT_ENVELOPE;
use crate::node::Node;
use crate::protocol::{Event, MAX_EPOCH_LEN, Publication};

/// Publications one call returns by default, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Serialize)]
struct Reply<'a> {
    epoch: &'a str,
    offset: u64,
    recovered: bool,
    events: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    offset: u64,
    data: Box<RawValue>,
}

/// Handles `GET /api/history`.
pub(super) async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    authorize(&node, req.headers())?;
    let params = Params::parse(req.uri(), &["channel", "since", "epoch", "limit"])?;
    let param = |name: &str| params.get(name);
    let channel = params.channel()?;
    let since = param("since")
        .map(str::parse::<u64>)
        .transpose()
        .map_err(|_| ApiError::bad("since must be an unsigned integer"))?;
    let epoch = param("epoch");
    if epoch.is_some_and(|e| e.len() > MAX_EPOCH_LEN) {
        return Err(ApiError::bad(format!(
            "epoch is longer than {MAX_EPOCH_LEN} bytes"
        )));
    }
    let limit = match param("limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::bad(format!(
                "limit must be an integer from 1 to {MAX_LIMIT}"
            )));
        }
    };
    let page = node
        .broker()
        .history(&channel, since, limit)
        .await?
        .ok_or_else(|| {
            ApiError::BadRequest("no_history", "this channel keeps no history".into())
        })?;
    let top = page.position.offset;
    let recovered = match (since, epoch) {
        (Some(since), Some(epoch)) => {
            epoch == page.position.epoch.as_str()
                && since <= top
                && (since == top || page.events.first().is_some_and(|e| e.offset == since + 1))
        }
        _ => false,
    };
    let limit_bytes = node
        .config
        .websocket
        .outbox_max_bytes
        .saturating_sub(EVENT_ENVELOPE);
    let events = page
        .events
        .into_iter()
        .filter_map(|stored| {
            // The data as every socket would receive it (non-JSON as a string).
            let event =
                Event::new(Publication::new(channel.clone(), stored.data), limit_bytes).ok()?;
            let text = std::str::from_utf8(event.data()).ok()?.to_owned();
            Some(Entry {
                offset: stored.offset,
                data: RawValue::from_string(text).ok()?,
            })
        })
        .collect();
    let reply = Reply {
        epoch: page.position.epoch.as_str(),
        offset: top,
        recovered,
        events,
    };
    Ok(json(
        StatusCode::OK,
        serde_json::to_string(&reply).unwrap_or_default(),
    ))
}
