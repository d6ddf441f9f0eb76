//! Admission before a socket exists, shared by `/ws` and `/sse`: node state
//! (503), connection rate (429), origin (403), token (401), per-IP and
//! per-user caps (429), cheapest checks first so that a flood does not cost a
//! signature verification per attempt. Every refusal is one
//! [`Refusal`], answered with its status and JSON body and counted once, here.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{StatusCode, Uri};

use super::{HttpResponse, bearer, error};
use crate::auth::{AuthError, Identity};
use crate::limits::ConnPermit;
use crate::node::{Node, NotReady};
use crate::protocol::{Refusal, Since};
use crate::session::ResumeAt;

/// The refusal as an HTTP response, counted by its code.
pub(super) fn refuse(node: &Node, refusal: Refusal) -> HttpResponse {
    node.metrics
        .upgrades_refused
        .with_label_values(&[refusal.code()])
        .inc();
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = error(status, refusal.code(), refusal.message());
    if refusal == Refusal::WrongVersion {
        // RFC 6455 4.4: tell the client which version this server speaks.
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    response
}

/// The checks that need neither the token nor the socket: node state,
/// connection rate, origin.
pub(super) fn precheck(node: &Node, headers: &HeaderMap) -> Result<(), Refusal> {
    node.readiness().map_err(|why| match why {
        NotReady::Draining => Refusal::Draining,
        NotReady::Full => Refusal::Capacity,
        NotReady::BrokerDown => Refusal::BrokerDown,
    })?;
    node.limits.check_node()?;
    check_origin(&node.config.server.allowed_origins, headers)
}

/// Verifies the token and takes the socket's places in the node's counts.
pub(super) fn authenticate(
    node: &Node,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(Identity, ConnPermit), Refusal> {
    let identity = match token(headers, uri, node.config.auth.allow_query_token) {
        None => Err(AuthError::Missing),
        Some(token) => node.verifier.verify(token),
    }
    .and_then(|identity| node.revocations.check(&identity).map(|()| identity))
    .map_err(|e| {
        node.metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
        match e {
            AuthError::Revoked => Refusal::Revoked,
            e => Refusal::Unauthorized(e.message()),
        }
    })?;
    let permit = node.limits.admit(peer.ip(), &identity.user)?;
    Ok((identity, permit))
}

/// Browsers always send `Origin`; with an allowlist configured it must match.
/// Requests without `Origin` (non-browser clients) are not origin-checked:
/// such clients can send any header, so refusing them protects nothing.
fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), Refusal> {
    if allowed.is_empty() {
        return Ok(());
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => Ok(()),
        Some(origin)
            if allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(origin.trim_end_matches('/'))) =>
        {
            Ok(())
        }
        Some(_) => Err(Refusal::Origin),
    }
}

/// `Authorization: Bearer <JWT>`, else `?token=<JWT>` when allowed.
fn token<'a>(headers: &'a HeaderMap, uri: &'a Uri, allow_query: bool) -> Option<&'a str> {
    if headers.contains_key(header::AUTHORIZATION) {
        return bearer(headers);
    }
    if !allow_query {
        return None;
    }
    query_param(uri, "token")
}

/// `user_offset`/`user_epoch` and `broadcast_offset`/`broadcast_epoch`:
/// both of a pair or neither, an unsigned offset, an epoch of at most 64
/// bytes; anything else is 400 before the upgrade.
pub(super) fn resume_at(uri: &Uri) -> Result<ResumeAt, Refusal> {
    let pair = |offset: &str, epoch: &str| -> Result<Option<Since>, Refusal> {
        match (query_param(uri, offset), query_param(uri, epoch)) {
            (None, None) => Ok(None),
            (Some(o), Some(e)) => Since::from_query(o, e)
                .map(Some)
                .map_err(|_| {
                    Refusal::BadRequest(
                        "resume positions: *_offset must be an unsigned integer and *_epoch at most 64 bytes",
                    )
                }),
            _ => Err(Refusal::BadRequest(
                "resume positions come in pairs: user_offset with user_epoch, broadcast_offset with broadcast_epoch",
            )),
        }
    };
    Ok(ResumeAt {
        user: pair("user_offset", "user_epoch")?,
        broadcast: pair("broadcast_offset", "broadcast_epoch")?,
    })
}

/// The first value of `name` in the query string (not percent-decoded: the
/// values we read, tokens and offsets, never need it).
pub(super) fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|pair| {
            pair.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
        .filter(|v| !v.is_empty())
}
