//! What every server API call shares (contract section 8): the API key
//! (`Authorization: Bearer <key>`, off while `api.keys` is empty), a bounded
//! JSON body, query parameters, and [`ApiError`], the one mapping of what can
//! go wrong to an HTTP status and the contract's error body. Each call lives
//! in its own file beside this one and returns `Result<HttpResponse, ApiError>`.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{HeaderMap, Request, StatusCode, Uri};

use super::{HttpResponse, bearer, error};
use crate::broker::BrokerError;
use crate::node::Node;

/// Why an API call failed.
#[derive(Debug)]
pub(super) enum ApiError {
    /// No API key configured, or a missing or wrong one (401).
    Unauthorized(&'static str),
    /// A malformed body or parameter (400), with the error code.
    BadRequest(&'static str, String),
    /// A body above the limit (413).
    TooLarge(String),
    /// The broker could not serve the call (503).
    Broker(BrokerError),
}

impl ApiError {
    /// `400 bad_request` with `message`.
    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest("bad_request", message.into())
    }

    /// The response: status and `{"error":{"code","message"}}`.
    pub(super) fn response(self) -> HttpResponse {
        match self {
            ApiError::Unauthorized(why) => error(StatusCode::UNAUTHORIZED, "unauthorized", why),
            ApiError::BadRequest(code, message) => error(StatusCode::BAD_REQUEST, code, &message),
            ApiError::TooLarge(message) => {
                error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &message)
            }
            ApiError::Broker(e) => {
                let code = if e == BrokerError::Overloaded {
                    "overloaded"
                } else {
                    "broker_unavailable"
                };
                error(StatusCode::SERVICE_UNAVAILABLE, code, &e.to_string())
            }
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        ApiError::Broker(e)
    }
}

/// Checks the API key: 401 without a configured key, or with a wrong one.
pub(super) fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let keys = &node.config.api.keys;
    if keys.is_empty() {
        return Err(ApiError::Unauthorized(
            "the server API is disabled: configure api.keys",
        ));
    }
    let presented = bearer(headers).unwrap_or("");
    if keys
        .iter()
        .any(|k| constant_time_eq(k.as_bytes(), presented.as_bytes()))
    {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("missing or unknown API key"))
    }
}

/// Reads a body of at most `limit` bytes (413 above it, declared or not).
pub(super) async fn body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("body exceeds {limit} bytes"));
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(too_large()),
    }
}

/// The query's parameters, percent-decoded; a repeated name keeps its first value.
pub(super) fn query(uri: &Uri) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), decode(v));
        if !out.iter().any(|(seen, _)| *seen == k) {
            out.push((k, v));
        }
    }
    out
}

/// Percent-decoding (`+` is a space, as in forms); bad escapes stay as they are.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%' && i + 3 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_and_the_first_wins() {
        let uri: Uri = "/api/history?channel=user%3Aa%7Bb%7D&since=41&since=9&x=%zz&y=a+b"
            .parse()
            .unwrap();
        let q = query(&uri);
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("channel"), Some("user:a{b}"));
        assert_eq!(get("since"), Some("41"));
        assert_eq!(get("x"), Some("%zz"));
        assert_eq!(get("y"), Some("a b"));
        assert_eq!(query(&"/x?%".parse().unwrap())[0].0, "%");
    }
}
