//! The SSE fallback (contract section 9) over real sockets: admission as
//! `/ws` (statuses and JSON bodies), the stream's frames, `id:` cursors and
//! resume through `Last-Event-ID` and `?since=`, refused rooms, heartbeat
//! comments, drain and expiry close frames, and the stream's place in the
//! node's counts and tables.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kit::*;

/// One SSE message, or a comment.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// A message: its `id:` (if it had one) and its `data:` as JSON.
    Message { id: Option<String>, data: Value },
    /// A comment line (`: ping`).
    Comment(String),
}

/// A raw SSE client: HTTP/1.1 over a TCP socket, chunked decoding, the
/// `text/event-stream` line format. Nothing hides a byte the server sent.
struct Sse {
    stream: TcpStream,
    /// Bytes read, not yet de-chunked.
    raw: Vec<u8>,
    /// The body, de-chunked, not yet parsed.
    text: Vec<u8>,
    ended: bool,
    headers: HashMap<String, String>,
    deadline: Duration,
}

/// Opens `path` (with `headers`): the stream, or the refusal's status and body.
async fn open(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Result<Sse, (u16, Value)> {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(gw.deadline, stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response head");
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let raw = raw[end + 4..].to_vec();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if status != 200 {
        let len: usize = headers["content-length"].parse().unwrap();
        let mut body = raw;
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(headers["content-type"], "application/json");
        return Err((status, serde_json::from_slice(&body[..len]).unwrap()));
    }
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["transfer-encoding"], "chunked");
    Ok(Sse {
        stream,
        raw,
        text: Vec::new(),
        ended: false,
        headers,
        deadline: gw.deadline,
    })
}

/// `/sse?token=..&rooms=..` (and more query), which must be accepted.
async fn stream(gw: &TestGateway, query: &str, headers: &[(&str, &str)]) -> Sse {
    match open(gw, &format!("/sse?{query}"), headers).await {
        Ok(s) => s,
        Err(refusal) => panic!("stream refused: {refusal:?}"),
    }
}

impl Sse {
    /// The next item; `None` once the stream ended.
    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.parse_item() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            if !self.dechunk() {
                let mut chunk = [0u8; 8192];
                let n = tokio::time::timeout(self.deadline, self.stream.read(&mut chunk))
                    .await
                    .expect("stream item in time")
                    .unwrap_or(0);
                if n == 0 {
                    self.ended = true;
                }
                self.raw.extend_from_slice(&chunk[..n]);
            }
        }
    }

    /// Moves one whole chunk from `raw` to `text`; `false` if none is whole.
    fn dechunk(&mut self) -> bool {
        let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&self.raw[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            self.ended = true;
            self.raw.clear();
            return true;
        }
        let start = line + 2;
        if self.raw.len() < start + size + 2 {
            return false;
        }
        self.text.extend_from_slice(&self.raw[start..start + size]);
        assert_eq!(&self.raw[start + size..start + size + 2], b"\r\n");
        self.raw.drain(..start + size + 2);
        true
    }

    fn parse_item(&mut self) -> Option<Item> {
        let end = self.text.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8(self.text[..end].to_vec()).unwrap();
        self.text.drain(..end + 2);
        let (mut id, mut data, mut comment) = (None, Vec::new(), None);
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                comment = Some(c.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_owned());
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
        if data.is_empty() {
            return Some(Item::Comment(comment.expect("a comment or a message")));
        }
        assert!(comment.is_none(), "no comment inside a message: {block:?}");
        let data = serde_json::from_str(&data.join("\n")).expect("data is JSON");
        Some(Item::Message { id, data })
    }

    /// The next message (comments skipped): (id, frame).
    async fn message(&mut self) -> (Option<String>, Value) {
        loop {
            match self.next().await.expect("stream open") {
                Item::Message { id, data } => return (id, data),
                Item::Comment(_) => {}
            }
        }
    }

    /// The next frame.
    async fn frame(&mut self) -> Value {
        self.message().await.1
    }

    /// Reads the welcome and each room's reply (in the URL's order).
    async fn start(&mut self, rooms: &[&str]) -> (Value, Vec<Value>, Option<String>) {
        let (mut last_id, welcome) = self.message().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let mut replies = Vec::new();
        for room in rooms {
            let (id, reply) = self.message().await;
            assert_eq!(reply["room"], *room, "{reply}");
            last_id = id.or(last_id);
            replies.push(reply);
        }
        (welcome, replies, last_id)
    }
}

async fn history_gateway() -> TestGateway {
    TestGateway::with(with_history).await
}

fn query(tok: &str, rooms: &str) -> String {
    format!("token={tok}&rooms={rooms}")
}

#[tokio::test]
async fn welcome_then_rooms_then_events_of_every_channel() {
    let gw = history_gateway().await;
    let tok = token("alice", &["lobby", "team-1:*"]);
    // `:` and `,` percent-encoded, as URLSearchParams writes them.
    let mut s = stream(&gw, &query(&tok, "lobby%2Cteam-1%3Aops"), &[]).await;
    assert_eq!(s.headers["cache-control"], "no-store");
    let (welcome, replies, id) = s.start(&["lobby", "team-1:ops"]).await;
    assert_eq!(welcome["user"], "alice");
    assert!(welcome["position"]["epoch"].is_string(), "{welcome}");
    assert!(id.is_some(), "positions come with a cursor");
    for reply in &replies {
        assert_eq!(reply["type"], "ok", "{reply}");
        assert_eq!(reply["offset"], 0, "{reply}");
        assert!(reply.get("id").is_none(), "{reply}");
    }
    publish_offset(&gw, "room:lobby", json!({"n": 1})).await;
    publish_offset(&gw, "room:team-1:ops", json!({"n": 2})).await;
    publish_offset(&gw, "user:alice", json!({"n": 3})).await;
    publish_offset(&gw, "broadcast", json!({"n": 4})).await;
    let mut ids = vec![id.unwrap()];
    for (channel, n) in [
        ("room:lobby", 1),
        ("room:team-1:ops", 2),
        ("user:alice", 3),
        ("broadcast", 4),
    ] {
        let (id, frame) = s.message().await;
        assert_eq!(
            frame,
            json!({"type": "event", "channel": channel, "offset": 1, "data": {"n": n}})
        );
        let id = id.expect("an event with an offset carries the cursor");
        assert!(!ids.contains(&id), "every move gives a new cursor");
        assert!(id.len() < 200, "a small cursor: {id}");
        ids.push(id);
    }
    // A line break in the data cannot end the SSE line.
    publish_offset(&gw, "room:lobby", json!({"text": "two\nlines"})).await;
    let (_, frame) = s.message().await;
    assert_eq!(frame["data"]["text"], "two\nlines");
}

#[tokio::test]
async fn last_event_id_resumes_every_channel_without_loss_or_duplicate() {
    let gw = history_gateway().await;
    let tok = token("alice", &["lobby"]);
    let mut s = stream(&gw, &query(&tok, "lobby"), &[]).await;
    let (_, _, mut last) = s.start(&["lobby"]).await;
    for n in 1..=3 {
        publish_offset(&gw, "room:lobby", json!({"n": n})).await;
        let (id, frame) = s.message().await;
        assert_eq!(frame["offset"], n);
        last = id;
    }
    drop(s);
    gw.eventually("stream gone", |n| n.metrics.sse_streams_open.get() == 0)
        .await;
    // Published while disconnected, on every channel.
    for n in 4..=6 {
        publish_offset(&gw, "room:lobby", json!({"n": n})).await;
    }
    publish_offset(&gw, "user:alice", json!({"u": 1})).await;
    publish_offset(&gw, "broadcast", json!({"b": 1})).await;
    let last = last.unwrap();
    let mut s = stream(&gw, &query(&tok, "lobby"), &[("last-event-id", &last)]).await;
    let (welcome, replies) = {
        let (w, r, _) = s.start(&[]).await;
        (w, r)
    };
    assert!(replies.is_empty());
    assert_eq!(
        (
            welcome["recovered"].as_bool(),
            welcome["broadcast_recovered"].as_bool()
        ),
        (Some(true), Some(true)),
        "{welcome}"
    );
    // The user channel's and broadcast's missed events follow the welcome,
    // then the room's reply and its missed events.
    let mut frames = Vec::new();
    for _ in 0..6 {
        frames.push(s.frame().await);
    }
    let ok = frames
        .iter()
        .find(|f| f["type"] == "ok")
        .expect("room reply")
        .clone();
    assert_eq!(
        (
            ok["room"].as_str(),
            ok["recovered"].as_bool(),
            ok["offset"].as_u64()
        ),
        (Some("lobby"), Some(true), Some(6)),
        "{ok}"
    );
    let events: Vec<(String, u64)> = frames
        .iter()
        .filter(|f| f["type"] == "event")
        .map(|f| {
            (
                f["channel"].as_str().unwrap().to_owned(),
                f["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let room: Vec<u64> = events
        .iter()
        .filter(|(c, _)| c == "room:lobby")
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(room, [4, 5, 6], "{frames:?}");
    assert!(events.contains(&("user:alice".into(), 1)), "{frames:?}");
    assert!(events.contains(&("broadcast".into(), 1)), "{frames:?}");
    // Live after the seam: the next offset, once.
    publish_offset(&gw, "room:lobby", json!({"n": 7})).await;
    let frame = s.frame().await;
    assert_eq!(
        (frame["channel"].as_str(), frame["offset"].as_u64()),
        (Some("room:lobby"), Some(7)),
        "{frame}"
    );
}

#[tokio::test]
async fn a_cursor_taken_before_the_replay_still_gets_all_of_it() {
    let gw = history_gateway().await;
    let tok = token("alice", &["lobby"]);
    let mut s = stream(&gw, &query(&tok, "lobby"), &[]).await;
    let (_, _, last) = s.start(&["lobby"]).await;
    drop(s);
    for n in 1..=3 {
        publish_offset(&gw, "room:lobby", json!({"n": n})).await;
        publish_offset(&gw, "user:alice", json!({"u": n})).await;
    }
    // Resume, but drop the stream right after the welcome (its id) and
    // again right after the room's `ok` (its id): neither may skip the replay
    // that was still to come.
    let mut s = stream(
        &gw,
        &query(&tok, "lobby"),
        &[("last-event-id", last.as_deref().unwrap())],
    )
    .await;
    let (welcome_id, welcome) = s.message().await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    drop(s);
    let mut s = stream(
        &gw,
        &query(&tok, "lobby"),
        &[("last-event-id", welcome_id.as_deref().unwrap())],
    )
    .await;
    let (_, welcome) = s.message().await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let mut user = Vec::new();
    for _ in 0..3 {
        let f = s.frame().await;
        assert_eq!(f["channel"], "user:alice", "{f}");
        user.push(f["offset"].as_u64().unwrap());
    }
    assert_eq!(user, [1, 2, 3], "the user channel's replay, whole");
    let (ok_id, ok) = s.message().await;
    assert_eq!(
        (ok["type"].as_str(), ok["recovered"].as_bool()),
        (Some("ok"), Some(true)),
        "{ok}"
    );
    drop(s);
    let mut s = stream(
        &gw,
        &query(&tok, "lobby"),
        &[("last-event-id", ok_id.as_deref().unwrap())],
    )
    .await;
    let (_, welcome) = s.message().await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let (_, ok) = s.message().await;
    assert_eq!(
        (ok["room"].as_str(), ok["recovered"].as_bool()),
        (Some("lobby"), Some(true)),
        "{ok}"
    );
    for n in 1..=3 {
        assert_eq!(s.frame().await["offset"], n, "the room's replay, whole");
    }
}

#[tokio::test]
async fn since_resumes_and_last_event_id_wins_over_it() {
    let gw = history_gateway().await;
    let tok = token("alice", &["lobby"]);
    let mut s = stream(&gw, &query(&tok, "lobby"), &[]).await;
    let (_, _, start) = s.start(&["lobby"]).await;
    let start = start.unwrap();
    publish_offset(&gw, "room:lobby", json!({"n": 1})).await;
    let (after_one, _) = s.message().await;
    drop(s);
    publish_offset(&gw, "room:lobby", json!({"n": 2})).await;
    // `?since=` from before event 1: both follow.
    let mut s = stream(&gw, &format!("{}&since={start}", query(&tok, "lobby")), &[]).await;
    let (_, replies, _) = s.start(&["lobby"]).await;
    assert_eq!(replies[0]["recovered"], true);
    assert_eq!(s.frame().await["offset"], 1);
    assert_eq!(s.frame().await["offset"], 2);
    drop(s);
    // Both: the header's cursor (after event 1) wins over `since` (before it).
    let mut s = stream(
        &gw,
        &format!("{}&since={start}", query(&tok, "lobby")),
        &[("last-event-id", after_one.as_deref().unwrap())],
    )
    .await;
    s.start(&["lobby"]).await;
    assert_eq!(
        s.frame().await["offset"],
        2,
        "resumed from the header's cursor"
    );
}

#[tokio::test]
async fn a_lost_position_says_recovered_false() {
    let gw = TestGateway::with(|c| {
        with_history(c);
        c.history.max_recover = 2;
    })
    .await;
    let tok = token("alice", &["lobby"]);
    let mut s = stream(&gw, &query(&tok, "lobby"), &[]).await;
    let (_, _, last) = s.start(&["lobby"]).await;
    drop(s);
    for n in 1..=5 {
        publish_offset(&gw, "room:lobby", json!({"n": n})).await;
    }
    let mut s = stream(
        &gw,
        &query(&tok, "lobby"),
        &[("last-event-id", &last.unwrap())],
    )
    .await;
    let (_, replies, _) = s.start(&["lobby"]).await;
    assert_eq!(
        (
            replies[0]["recovered"].as_bool(),
            replies[0]["offset"].as_u64()
        ),
        (Some(false), Some(5)),
        "{}",
        replies[0]
    );
    // Nothing replayed: the next frame is live.
    publish_offset(&gw, "room:lobby", json!({"n": 6})).await;
    assert_eq!(s.frame().await["offset"], 6);
}

#[tokio::test]
async fn a_refused_room_is_an_error_frame_and_the_others_deliver() {
    let gw = TestGateway::start().await;
    gw.wait_ready().await;
    let tok = token("alice", &["lobby"]);
    let mut s = stream(&gw, &query(&tok, "secret,lobby"), &[]).await;
    let (_, replies, _) = s.start(&["secret", "lobby"]).await;
    assert_eq!(
        (replies[0]["type"].as_str(), replies[0]["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{}",
        replies[0]
    );
    assert_eq!(replies[1]["type"], "ok");
    assert_eq!(gw.publish_http("room:secret", json!("no")).await, 202);
    assert_eq!(gw.publish_http("room:lobby", json!("yes")).await, 202);
    assert_eq!(
        s.frame().await,
        json!({"type": "event", "channel": "room:lobby", "data": "yes"})
    );
}

#[tokio::test]
async fn admission_refuses_as_ws_does() {
    let gw = TestGateway::builder()
        .capacity(2)
        .config(|c| c.limits.max_sockets_per_user = 1)
        .start()
        .await;
    gw.wait_ready().await;
    let good = token("alice", &["lobby"]);
    let expired = sign(&json!({"sub": "alice", "exp": now() - 10}));
    let forged = sign_with(
        jsonwebtoken::Algorithm::HS256,
        &json!({"sub": "alice", "exp": now() + 60}),
        b"another-secret-another-secret-xx",
    );
    for (tok, why) in [
        ("not.a.jwt", "malformed"),
        (expired.as_str(), "expired"),
        (forged.as_str(), "signature"),
    ] {
        let sse = open(&gw, &format!("/sse?token={tok}"), &[])
            .await
            .err()
            .expect("refused");
        let ws = gw.refused(gw.request(Some(tok))).await;
        assert_eq!(sse.0, 401, "{why}: {sse:?}");
        assert_eq!(sse, ws, "{why}: the same status and body as /ws");
    }
    let none = open(&gw, "/sse", &[]).await.err().expect("refused");
    assert_eq!(
        (none.0, none.1["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let room = open(&gw, &format!("/sse?token={good}&rooms=bad%20room"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (room.0, room.1["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let post = http(gw.addr, "POST", &format!("/sse?token={good}"), &[], "").await;
    assert_eq!(post.0, 400);

    // A Bearer header token, as /ws takes it. Alice's one stream counts
    // against her per-user limit, for SSE and WebSocket alike.
    let auth = format!("Bearer {good}");
    let mut s = stream(&gw, "", &[("authorization", &auth)]).await;
    s.start(&[]).await;
    assert_eq!(gw.node.metrics.sockets_open.get(), 1);
    let again = open(&gw, &format!("/sse?token={good}"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (again.0, again.1["error"]["code"].as_str()),
        (429, Some("user_limit"))
    );
    let ws = gw.refused(gw.request(Some(&good))).await;
    assert_eq!(ws, again);
    // Capacity: a second user fills the node; the third is refused.
    let _b = gw.connect(&token("bob", &[])).await;
    let full = open(&gw, &format!("/sse?token={}", token("carol", &[])), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (full.0, full.1["error"]["code"].as_str()),
        (503, Some("capacity"))
    );
    assert!(
        gw.metric(r#"gateway_upgrades_refused_total{reason="capacity"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_malformed_cursor_is_400_and_counted() {
    let gw = TestGateway::start().await;
    gw.wait_ready().await;
    let tok = token("alice", &["lobby"]);
    let long = "A".repeat(9000);
    for (i, bad) in ["!!!", "AA", "Ag", "AQAAAAEF", long.as_str(), "%00"]
        .iter()
        .enumerate()
    {
        let by_header = open(&gw, &format!("/sse?token={tok}"), &[("last-event-id", bad)]).await;
        let by_query = open(&gw, &format!("/sse?token={tok}&since={bad}"), &[]).await;
        for refusal in [by_header, by_query] {
            let (status, body) = refusal.err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (400, Some("bad_cursor")),
                "{bad:?}: {body}"
            );
        }
        assert_eq!(
            gw.metric(r#"gateway_upgrades_refused_total{reason="bad_cursor"}"#)
                .await,
            2.0 * (i + 1) as f64
        );
    }
    // Nothing was admitted or left behind.
    gw.assert_tables_empty().await;
}

#[tokio::test]
async fn heartbeat_comments_arrive() {
    let gw = TestGateway::with(|c| c.websocket.heartbeat_seconds = 1).await;
    gw.wait_ready().await;
    let mut s = stream(&gw, &query(&token("alice", &[]), ""), &[]).await;
    let (welcome, _, _) = s.start(&[]).await;
    assert_eq!(welcome["heartbeat"], 1);
    // Two pings, and the stream is not closed for the client's silence
    // (SSE clients never answer).
    for _ in 0..3 {
        assert_eq!(s.next().await, Some(Item::Comment("ping".into())));
    }
    assert_eq!(gw.node.metrics.sse_streams_open.get(), 1);
}

#[tokio::test]
async fn drain_sends_the_close_frame_then_ends_the_stream() {
    let gw = TestGateway::start().await;
    gw.wait_ready().await;
    let mut s = stream(&gw, &query(&token("alice", &["lobby"]), "lobby"), &[]).await;
    s.start(&["lobby"]).await;
    gw.node.lifecycle.begin_drain();
    assert_eq!(s.frame().await, json!({"type": "close", "code": 1012}));
    assert_eq!(
        s.next().await,
        None,
        "the stream ends after the close frame"
    );
    assert!(
        gw.run.await.unwrap(),
        "every session finished within the drain"
    );
}

#[tokio::test]
async fn an_expiring_token_closes_the_stream_with_4001() {
    let gw = TestGateway::start().await;
    gw.wait_ready().await;
    let tok = sign(&json!({"sub": "alice", "exp": now() + 2}));
    let mut s = stream(&gw, &format!("token={tok}"), &[]).await;
    s.start(&[]).await;
    assert_eq!(s.frame().await, json!({"type": "close", "code": 4001}));
    assert_eq!(s.next().await, None);
    assert!(gw.metric(r#"gateway_closes_total{code="4001"}"#).await >= 1.0);
}

#[tokio::test]
async fn a_stream_counts_as_a_socket_and_leaves_no_trace() {
    let gw = TestGateway::start().await;
    gw.wait_ready().await;
    let tok = token("alice", &["lobby"]);
    let mut s = stream(&gw, &query(&tok, "lobby"), &[]).await;
    s.start(&["lobby"]).await;
    assert_eq!(gw.metric("gateway_sockets_open").await, 1.0);
    assert_eq!(gw.metric("gateway_sse_streams_open").await, 1.0);
    assert_eq!(
        gw.presence("lobby").await["clients"],
        1,
        "present like a socket"
    );
    assert_eq!(gw.live_subscriptions(), 2, "its user channel and its room");
    // The client goes away without a word.
    drop(s);
    gw.assert_tables_empty().await;
    assert_eq!(gw.node.metrics.sse_streams_open.get(), 0);
    assert_eq!(gw.presence("lobby").await["clients"], 0);
}
