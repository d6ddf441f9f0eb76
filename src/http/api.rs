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
use crate::protocol::{Channel, MAX_USER_LEN};

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

/// The server API's calls and their methods: routed by `http.rs`, and
/// answered 405 with the right method otherwise.
pub(super) const CALLS: [(&str, &str); 6] = [
    ("/api/publish", "POST"),
    ("/api/history", "GET"),
    ("/api/presence", "GET"),
    ("/api/disconnect", "POST"),
    ("/api/revoke", "POST"),
    ("/api/nodes", "GET"),
];

/// The method `path` takes, if it is a call.
pub(super) fn method_of(path: &str) -> Option<&'static str> {
    CALLS.iter().find(|(p, _)| *p == path).map(|(_, m)| *m)
}

/// Reads a JSON body of at most `limit` bytes into `T` (400 when it is not
/// one, naming what was expected).
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
    expected: &str,
) -> Result<T, ApiError> {
    let bytes = body(req, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("expected {expected}: {e}")))
}

/// A request's query parameters, checked against the names a call takes.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    /// The parameters of `uri`; 400 for a name not in `allowed`.
    pub(super) fn parse(uri: &Uri, allowed: &[&str]) -> Result<Params, ApiError> {
        let params = query(uri);
        if let Some((unknown, _)) = params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad(format!("unknown parameter {unknown:?}")));
        }
        Ok(Params(params))
    }

    /// The value of `name`, if given.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `channel` parameter, which every call taking one requires.
    pub(super) fn channel(&self) -> Result<Channel, ApiError> {
        self.get("channel")
            .and_then(Channel::parse)
            .ok_or_else(bad_channel)
    }
}

/// A user id from a request: 1 to `MAX_USER_LEN` bytes (400 `bad_user`).
pub(super) fn user_id(user: String) -> Result<String, ApiError> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(ApiError::BadRequest(
            "bad_user",
            format!("user must be 1-{MAX_USER_LEN} bytes"),
        ));
    }
    Ok(user)
}

/// `400 bad_channel`.
pub(super) fn bad_channel() -> ApiError {
    ApiError::BadRequest(
        "bad_channel",
        "channel must be room:<R>, user:<U> or broadcast".into(),
    )
}

/// The query's parameters, percent-decoded; a repeated name keeps its first value.
fn query(uri: &Uri) -> Vec<(String, String)> {
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
