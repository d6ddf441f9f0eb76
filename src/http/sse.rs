//! `GET /sse` (contract section 9): the WebSocket's admission
//! (`admission.rs`: the same checks, statuses and JSON bodies, all decided
//! before the first byte of the stream), then the rooms of the URL and the
//! cursor to resume from, then a session like a WebSocket's, written as
//! `text/event-stream` (`session/sse.rs`).
//!
//! What only SSE refuses, with 400 before the stream: a malformed cursor
//! (`bad_cursor`, counted like every refusal), a malformed room name or
//! more rooms than `limits.max_rooms_per_socket` in `rooms`. A room the
//! token does not grant is not a refusal: it is reported in the stream.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response};

use super::Body;
use super::admission::{authenticate, precheck, query_param, refuse};
use crate::node::Node;
use crate::protocol::{Channel, Cursor, Refusal, RoomName, Since, Subprotocol};
use crate::session::{self, Admitted, ResumeAt, SseWire};

/// A room of the URL and where it resumes from.
type RoomAt = (RoomName, Option<Since>);

/// `Last-Event-ID`: what a reconnecting `EventSource` sends back.
const LAST_EVENT_ID: &str = "last-event-id";

/// Handles `GET /sse`.
pub(super) fn handle(node: Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let (admitted, rooms) = match admit(&node, peer, &req) {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(&node, refusal).map(Either::Left),
    };
    node.metrics.upgrades_accepted.inc();
    let user = Channel::User(admitted.identity.user.clone());
    // The positions resumed from, of this stream's channels only.
    let mut resumed = Cursor::default();
    let at = &admitted.resume_at;
    let channels = [
        (user.clone(), at.user.as_ref()),
        (Channel::Broadcast, at.broadcast.as_ref()),
    ];
    let rooms_at = rooms
        .iter()
        .map(|(r, s)| (Channel::Room(r.clone()), s.as_ref()));
    for (channel, since) in channels.into_iter().chain(rooms_at) {
        if let Some(since) = since {
            resumed.set(&channel, since.offset, &since.epoch);
        }
    }
    let (wire, body) = SseWire::new(user, rooms, resumed, node.metrics.sse_streams_open.clone());
    node.lifecycle
        .sessions()
        .spawn(session::run(node.clone(), wire, admitted));
    let mut response = Response::new(Either::Right(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // One stream per connection: when it ends (drain, expiry) the connection
    // goes with it instead of idling in keep-alive on a draining node.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    // EventSource on a page of another origin reads the stream only with
    // CORS; admission has already refused origins outside
    // `server.allowed_origins`, so an origin that got here is allowed.
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// The refusals of `/ws` (bar the handshake's own), then SSE's.
fn admit(
    node: &Arc<Node>,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<(Admitted, Vec<RoomAt>), Refusal> {
    if req.method() != Method::GET {
        return Err(Refusal::BadRequest("SSE streams use GET"));
    }
    let headers = req.headers();
    precheck(node, headers)?;
    let cursor = cursor_of(headers, req.uri())?;
    let rooms = rooms_of(req.uri(), node.config.limits.max_rooms_per_socket)?;
    let (identity, permit) = authenticate(node, peer, headers, req.uri())?;
    let cursor = cursor.unwrap_or_default();
    let resume_at = ResumeAt {
        user: cursor.get(&Channel::User(identity.user.clone())).cloned(),
        broadcast: cursor.get(&Channel::Broadcast).cloned(),
    };
    let rooms = rooms
        .into_iter()
        .map(|room| {
            let since = cursor.get(&Channel::Room(room.clone())).cloned();
            (room, since)
        })
        .collect();
    Ok((
        Admitted {
            identity,
            subprotocol: Subprotocol::JSON,
            permit,
            resume_at,
        },
        rooms,
    ))
}

/// The cursor to resume from: `Last-Event-ID`, else `?since=`. Empty is
/// none (an `EventSource` that never saw an id sends none).
fn cursor_of(headers: &HeaderMap, uri: &hyper::Uri) -> Result<Option<Cursor>, Refusal> {
    let text = match headers.get(LAST_EVENT_ID) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Refusal::BadCursor("Last-Event-ID is not ASCII"))?
                .trim(),
        ),
        None => query_param(uri, "since"),
    };
    match text {
        None | Some("") => Ok(None),
        Some(text) => Cursor::parse(text)
            .map(Some)
            .map_err(|e| Refusal::BadCursor(e.message())),
    }
}

/// `rooms=a,b,c` (percent-decoded; `EventSource` URLs built with
/// `URLSearchParams` encode `:` and `,`), each valid, no more than `max`,
/// duplicates dropped.
fn rooms_of(uri: &hyper::Uri, max: usize) -> Result<Vec<RoomName>, Refusal> {
    let Some(raw) = query_param(uri, "rooms") else {
        return Ok(Vec::new());
    };
    let decoded =
        percent_decode(raw).ok_or(Refusal::BadRequest("rooms: malformed percent-encoding"))?;
    let mut rooms: Vec<RoomName> = Vec::new();
    for name in decoded.split(',').filter(|n| !n.is_empty()) {
        let room = RoomName::parse(name).ok_or(Refusal::BadRequest(
            "rooms: each room name is 1-128 characters of A-Z a-z 0-9 _ - : . @",
        ))?;
        if !rooms.contains(&room) {
            if rooms.len() >= max {
                return Err(Refusal::BadRequest(
                    "rooms: more than limits.max_rooms_per_socket",
                ));
            }
            rooms.push(room);
        }
    }
    Ok(rooms)
}

/// `%XX` decoding; `None` for a truncated or non-hex escape or a result that
/// is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(q: &str) -> hyper::Uri {
        format!("/sse?{q}").parse().unwrap()
    }

    #[test]
    fn rooms_are_decoded_validated_and_bounded() {
        let names = |q: &str, max| {
            rooms_of(&uri(q), max)
                .map(|r| r.iter().map(|r| r.as_str().to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(names("rooms=a,b%3Ac,a", 5).unwrap(), ["a", "b:c"]);
        assert_eq!(names("rooms=a%2Cb", 5).unwrap(), ["a", "b"]);
        assert_eq!(names("token=x", 5).unwrap(), Vec::<String>::new());
        assert!(names("rooms=a,b,c", 2).is_err());
        for bad in [
            "rooms=a%2",
            "rooms=a%zz",
            "rooms=a%20b",
            "rooms=%ff",
            "rooms=a*",
        ] {
            assert!(names(bad, 5).is_err(), "{bad}");
        }
    }

    #[test]
    fn last_event_id_wins_over_since() {
        let mut c = Cursor::default();
        c.set(&Channel::Broadcast, 7, "e");
        let mut headers = HeaderMap::new();
        let u = uri("since=!!!");
        assert!(cursor_of(&headers, &u).is_err());
        headers.insert(LAST_EVENT_ID, HeaderValue::from_str(&c.encode()).unwrap());
        assert_eq!(cursor_of(&headers, &u).unwrap(), Some(c));
        headers.insert(LAST_EVENT_ID, HeaderValue::from_static(""));
        assert_eq!(cursor_of(&headers, &uri("since=%%")).unwrap(), None);
    }
}
