//! The SSE fallback (contract section 9) over real sockets: admission as
//! `/ws` (statuses and JSON bodies), the stream's frames, `id:` cursors and
//! resume through `Last-Event-ID` and `?since=`, refused rooms, heartbeat
//! comments, drain and expiry close frames, and the stream's place in the
//! node's counts and tables.

use serde_json::json;

use crate::kit::sse::{Item, open, stream};
use crate::kit::*;

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
async fn a_page_of_an_allowed_origin_may_read_the_stream() {
    // EventSource on another origin than the gateway's needs CORS: without
    // the header the browser drops the stream (the SDK's fallback test in
    // Chromium found it).
    let gw =
        TestGateway::with(|c| c.server.allowed_origins = vec!["https://app.example".into()]).await;
    gw.wait_ready().await;
    let q = query(&token("alice", &[]), "");
    let s = stream(&gw, &q, &[("origin", "https://app.example")]).await;
    assert_eq!(
        s.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(s.headers["vary"], "origin");
    // Another origin is refused before any byte of the stream.
    let refused = open(
        &gw,
        &format!("/sse?{q}"),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(403));
    // Without an Origin (not a browser) there is nothing to allow.
    let s = stream(&gw, &q, &[]).await;
    assert!(!s.headers.contains_key("access-control-allow-origin"));
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

#[tokio::test]
async fn the_server_api_disconnects_a_stream_with_its_close_code() {
    let gw = TestGateway::start().await;
    gw.wait_ready().await;
    let mut s = stream(&gw, &format!("token={}", token("alice", &[])), &[]).await;
    s.start(&[]).await;
    let (status, body) = gw
        .api(
            "POST",
            "/api/disconnect",
            r#"{"user":"alice","reconnect":false}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.frame().await, json!({"type": "close", "code": 4003}));
    assert_eq!(s.next().await, None);
    gw.assert_tables_empty().await;
}
