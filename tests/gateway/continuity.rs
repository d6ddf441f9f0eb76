//! Continuity on one node with the embedded broker (contract section 6):
//! offsets on events and replies, resume after a drop and after a 4008,
//! the user channel at connect, `recovered: false` whenever history cannot
//! reach, the seam between replay and live, the history API, and bad input.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::kit::*;

async fn history_gateway(edit: impl FnOnce(&mut gateway::config::Config)) -> TestGateway {
    TestGateway::with(|c| {
        with_history(c);
        edit(c);
    })
    .await
}

/// Subscribes (optionally resuming) and returns the `ok`.
async fn subscribe(c: &mut Client, room: &str, since: Option<Value>) -> Value {
    let mut frame = json!({"type": "subscribe", "room": room, "id": room});
    if let Some(since) = since {
        frame["since"] = since;
    }
    c.send(frame).await;
    let ok = c.recv().await;
    assert_eq!(
        (ok["type"].as_str(), ok["id"].as_str()),
        (Some("ok"), Some(room)),
        "{ok}"
    );
    ok
}

/// Reads `n` frames into `seen`.
async fn read_into(c: &mut Client, seen: &mut Seen, n: usize) {
    for _ in 0..n {
        let frame = c.recv().await;
        seen.record(&frame);
    }
}

#[tokio::test]
async fn events_and_replies_carry_offsets() {
    let gw = history_gateway(|_| {}).await;
    let tok = token("alice", &["lobby"]);
    let mut c = gw.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", None).await;
    assert_eq!(
        ok["offset"], 0,
        "a room never published to is at offset 0: {ok}"
    );
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty() && epoch.len() <= 64);
    assert_eq!(publish_offset(&gw, "room:lobby", json!({"n": 1})).await, 1);
    c.send(json!({"type": "publish", "room": "lobby", "data": {"n": 2}, "id": "p"}))
        .await;
    let mut frames = vec![c.recv().await, c.recv().await, c.recv().await];
    frames.sort_by_key(|f| f["type"].as_str().map(str::to_owned));
    assert_eq!(
        frames,
        [
            json!({"type": "event", "channel": "room:lobby", "offset": 1, "data": {"n": 1}}),
            json!({"type": "event", "channel": "room:lobby", "offset": 2, "data": {"n": 2}}),
            json!({"type": "ok", "id": "p", "offset": 2}),
        ]
    );
    // The user channel and broadcast have positions in `welcome`.
    let (mut c2, welcome) = reconnect(&gw, &tok, "alice", &Seen::default()).await;
    assert_eq!(welcome["position"]["offset"], 0, "{welcome}");
    assert!(
        welcome["broadcast_position"]["epoch"].is_string(),
        "{welcome}"
    );
    assert!(
        welcome.get("recovered").is_none(),
        "no resume asked: {welcome}"
    );
    assert_eq!(publish_offset(&gw, "user:alice", json!("hi")).await, 1);
    assert_eq!(c2.recv().await["offset"], 1);
}

#[tokio::test]
async fn a_dropped_client_resumes_every_offset_once_in_order() {
    let gw = history_gateway(|_| {}).await;
    let tok = token("alice", &["lobby"]);
    let mut c = gw.connect(&tok).await;
    let mut seen = Seen::default();
    let ok = subscribe(&mut c, "lobby", None).await;
    seen.subscribed("lobby", &ok);
    for n in 1..=5 {
        publish_offset(&gw, "room:lobby", json!(n)).await;
    }
    read_into(&mut c, &mut seen, 5).await;
    // TCP gone without a close frame: the client never saw what follows.
    drop(c);
    for n in 6..=20 {
        publish_offset(&gw, "room:lobby", json!(n)).await;
    }
    let mut c = gw.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", seen.of("room:lobby").since()).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(ok["offset"], 20);
    seen.subscribed("lobby", &ok);
    read_into(&mut c, &mut seen, 15).await;
    // Live events follow the replay without a gap or a duplicate.
    publish_offset(&gw, "room:lobby", json!(21)).await;
    read_into(&mut c, &mut seen, 1).await;
    seen.of("room:lobby").assert_exactly(1..=21, "after a drop");
    assert_eq!(
        gw.metric(r#"gateway_history_recoveries_total{outcome="recovered"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_user_channel_resumes_at_connect() {
    let gw = history_gateway(|_| {}).await;
    let tok = token("alice", &[]);
    let (mut c, welcome) = reconnect(&gw, &tok, "alice", &Seen::default()).await;
    let mut seen = Seen::default();
    seen.welcome(&welcome, "alice");
    for n in 1..=3 {
        publish_offset(&gw, "user:alice", json!(n)).await;
        publish_offset(&gw, "broadcast", json!(n)).await;
    }
    read_into(&mut c, &mut seen, 6).await;
    drop(c);
    for n in 4..=9 {
        publish_offset(&gw, "user:alice", json!(n)).await;
    }
    publish_offset(&gw, "broadcast", json!(4)).await;
    let (mut c, welcome) = reconnect(&gw, &tok, "alice", &seen).await;
    assert_eq!(
        (&welcome["recovered"], &welcome["broadcast_recovered"]),
        (&json!(true), &json!(true)),
        "{welcome}"
    );
    seen.welcome(&welcome, "alice");
    read_into(&mut c, &mut seen, 7).await;
    seen.of("user:alice").assert_exactly(1..=9, "user channel");
    seen.of("broadcast").assert_exactly(1..=4, "broadcast");
}

#[tokio::test]
async fn recovered_false_whenever_history_cannot_reach() {
    let gw = history_gateway(|c| {
        c.history.size = 5;
        c.history.max_recover = 3;
    })
    .await;
    let tok = token("alice", &["lobby", "other"]);
    let mut c = gw.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    for n in 1..=10 {
        publish_offset(&gw, "room:lobby", json!(n)).await;
    }
    let mut fresh = gw.connect(&tok).await;
    for (why, since) in [
        ("trimmed by size", json!({"offset": 2, "epoch": epoch})),
        (
            "more missed than max_recover",
            json!({"offset": 6, "epoch": epoch}),
        ),
        (
            "another epoch",
            json!({"offset": 9, "epoch": "not-this-one"}),
        ),
        ("beyond the top", json!({"offset": 11, "epoch": epoch})),
    ] {
        let ok = subscribe(&mut fresh, "lobby", Some(since)).await;
        assert_eq!(ok["recovered"], false, "{why}: {ok}");
        assert_eq!(ok["offset"], 10, "{why}");
        fresh.unsubscribe("lobby").await;
    }
    // Nothing was replayed: the next frame is the next live event.
    subscribe(&mut fresh, "lobby", None).await;
    publish_offset(&gw, "room:lobby", json!(11)).await;
    assert_eq!(fresh.recv().await["offset"], 11);
    assert_eq!(
        gw.metric(r#"gateway_history_recoveries_total{outcome="not_recovered"}"#)
            .await,
        4.0
    );
}

#[tokio::test]
async fn retention_by_age_and_a_new_epoch_after_a_restart() {
    let gw = history_gateway(|c| c.history.ttl_seconds = 1).await;
    let tok = token("alice", &["lobby"]);
    let mut c = gw.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    publish_offset(&gw, "room:lobby", json!(1)).await;
    c.recv().await;
    // Publications older than ttl_seconds are gone (the offsets remain).
    let gone = until(Duration::from_secs(5), || async {
        let (_, body) = history(&gw, "channel=room:lobby&since=0").await;
        body["events"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert!(gone, "publication still kept after its ttl");
    let mut late = gw.connect(&tok).await;
    let ok = subscribe(
        &mut late,
        "lobby",
        Some(json!({"offset": 0, "epoch": epoch})),
    )
    .await;
    assert_eq!(
        (&ok["recovered"], &ok["offset"]),
        (&json!(false), &json!(1)),
        "{ok}"
    );
    // Another process (a restarted embedded node) has another epoch.
    let restarted = history_gateway(|_| {}).await;
    let mut c = restarted.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", Some(json!({"offset": 1, "epoch": epoch}))).await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_ne!(ok["epoch"], json!(epoch));
}

#[tokio::test]
async fn a_room_without_history_resumes_as_not_recovered() {
    let gw = history_gateway(|c| {
        c.history.rooms = vec![gateway::config::RoomHistory {
            pattern: "ticker:*".into(),
            size: Some(0),
            ttl_seconds: None,
        }];
    })
    .await;
    let mut c = gw.connect(&token("alice", &["ticker:btc"])).await;
    let ok = subscribe(
        &mut c,
        "ticker:btc",
        Some(json!({"offset": 3, "epoch": "e"})),
    )
    .await;
    assert_eq!(
        ok,
        json!({"type": "ok", "id": "ticker:btc", "recovered": false})
    );
    assert_eq!(gw.publish_http("room:ticker:btc", json!(1)).await, 202);
    assert_eq!(
        c.recv().await,
        json!({"type": "event", "channel": "room:ticker:btc", "data": 1}),
        "no offset without history"
    );
    let (status, body) = history(&gw, "channel=room:ticker:btc").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("no_history"))
    );
}

#[tokio::test]
async fn a_slow_consumer_closed_4008_resumes_everything() {
    let gw = history_gateway(|c| {
        c.history.size = 5000;
        c.history.max_recover = 5000;
        c.websocket.outbox_max_frames = 16;
    })
    .await;
    let tok = token("alice", &["lobby"]);
    let mut seen = Seen::default();
    let mut slow = gw.connect(&tok).await;
    let ok = subscribe(&mut slow, "lobby", None).await;
    seen.subscribed("lobby", &ok);
    // A burst the 16-frame queue cannot hold while nobody reads.
    let channel = gateway::protocol::Channel::parse("room:lobby").unwrap();
    for n in 1..=2000u64 {
        gw.node
            .broker()
            .publish(channel.clone(), bytes::Bytes::from(n.to_string()))
            .await
            .unwrap();
    }
    // Whatever arrived before the 4008 counts; the rest comes by resume.
    let code = loop {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        match tokio::time::timeout(DEADLINE, slow.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                seen.record(&serde_json::from_str(&t).unwrap());
            }
            Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 4008);
    let mut c = gw.connect(&tok).await;
    let ok = subscribe(&mut c, "lobby", seen.of("room:lobby").since()).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    seen.subscribed("lobby", &ok);
    let missing = 2000 - seen.of("room:lobby").offset;
    // The replay is paced to the socket, not bounded by its 16-frame queue.
    read_into(&mut c, &mut seen, missing as usize).await;
    seen.of("room:lobby")
        .assert_exactly(1..=2000, "after a 4008");
}

#[tokio::test]
async fn the_seam_between_replay_and_live_has_no_gap_and_no_duplicate() {
    let gw = history_gateway(|c| {
        c.history.size = 100_000;
        c.history.max_recover = 100_000;
    })
    .await;
    let tok = token("alice", &["seam"]);
    let publisher = {
        let node = gw.node.clone();
        tokio::spawn(async move {
            let channel = gateway::protocol::Channel::parse("room:seam").unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            for n in 1..=4000u64 {
                tick.tick().await;
                node.broker()
                    .publish(channel.clone(), bytes::Bytes::from(n.to_string()))
                    .await
                    .unwrap();
            }
        })
    };
    // 50 subscribes with `since` while ~1,000 events/s arrive.
    for round in 0..50 {
        let mut c = gw.connect(&tok).await;
        let since = json!({"offset": 0, "epoch": gw_epoch(&gw, "room:seam").await});
        let ok = subscribe(&mut c, "seam", Some(since)).await;
        assert_eq!(ok["recovered"], true, "round {round}: {ok}");
        let top = ok["offset"].as_u64().unwrap();
        let mut seen = Seen::default();
        seen.subscribed("seam", &ok);
        // The replay, then a stretch of live events.
        read_into(&mut c, &mut seen, top as usize + 20).await;
        seen.of("room:seam")
            .assert_exactly(1..=top + 20, &format!("round {round}"));
    }
    publisher.abort();
}

async fn gw_epoch(gw: &TestGateway, channel: &str) -> String {
    let (_, body) = history(gw, &format!("channel={channel}&limit=1")).await;
    body["epoch"].as_str().unwrap().to_owned()
}

/// `GET /api/history?<query>`: status and JSON body.
async fn history(gw: &TestGateway, query: &str) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http(
        gw.addr,
        "GET",
        &format!("/api/history?{query}"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_history_api_reads_what_resuming_clients_get() {
    let gw = history_gateway(|_| {}).await;
    for n in 1..=12 {
        publish_offset(&gw, "room:lobby", json!({"n": n})).await;
    }
    let (status, newest) = history(&gw, "channel=room:lobby&limit=3").await;
    assert_eq!(status, 200, "{newest}");
    let epoch = newest["epoch"].as_str().unwrap().to_owned();
    assert_eq!(newest["offset"], 12);
    assert_eq!(newest["recovered"], false, "no since: nothing to recover");
    assert_eq!(
        newest["events"],
        json!([{"offset": 10, "data": {"n": 10}}, {"offset": 11, "data": {"n": 11}}, {"offset": 12, "data": {"n": 12}}])
    );
    let (_, after) = history(
        &gw,
        &format!("channel=room:lobby&since=4&epoch={epoch}&limit=2"),
    )
    .await;
    assert_eq!(after["recovered"], true, "{after}");
    assert_eq!(
        after["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [5, 6],
        "the first `limit` after since, oldest first"
    );
    let (_, other) = history(&gw, "channel=room:lobby&since=4&epoch=zz").await;
    assert_eq!(other["recovered"], false);
    let (_, encoded) = history(&gw, "channel=room%3Alobby&limit=1").await;
    assert_eq!(encoded["offset"], 12, "percent-encoded channel names work");

    for (query, code) in [
        ("", "bad_channel"),
        ("channel=room:bad%20name", "bad_channel"),
        ("channel=room:lobby&since=-1", "bad_request"),
        ("channel=room:lobby&since=1.5", "bad_request"),
        ("channel=room:lobby&since=x", "bad_request"),
        (
            "channel=room:lobby&since=99999999999999999999",
            "bad_request",
        ),
        ("channel=room:lobby&limit=0", "bad_request"),
        ("channel=room:lobby&limit=1001", "bad_request"),
        ("channel=room:lobby&limit=ten", "bad_request"),
        ("channel=room:lobby&bogus=1", "bad_request"),
    ] {
        let (status, body) = history(&gw, query).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!(code)),
            "{query}: {body}"
        );
    }
    let long = "e".repeat(10_000);
    let (status, _) = history(&gw, &format!("channel=room:lobby&since=1&epoch={long}")).await;
    assert_eq!(status, 400);
    let (status, _) = http(gw.addr, "GET", "/api/history?channel=room:lobby", &[], "").await;
    assert_eq!(status, 401, "the API key is required");
}

#[tokio::test]
async fn bad_since_values_get_bad_frame_with_the_id() {
    let gw = history_gateway(|_| {}).await;
    let mut c = gw.connect(&token("alice", &["lobby"])).await;
    for since in [
        json!({"offset": -1, "epoch": "e"}),
        json!({"offset": 1.5, "epoch": "e"}),
        json!({"offset": "41", "epoch": "e"}),
        json!({"offset": 1e30, "epoch": "e"}),
        json!({"offset": 1, "epoch": "x".repeat(10_000)}),
        json!({"offset": 1}),
        json!("41"),
    ] {
        c.send(json!({"type": "subscribe", "room": "lobby", "id": 9, "since": since}))
            .await;
        let reply = c.recv().await;
        assert_eq!(
            (
                reply["type"].as_str(),
                reply["code"].as_str(),
                reply["id"].as_i64()
            ),
            (Some("error"), Some("bad_frame"), Some(9)),
            "{since}: {reply}"
        );
    }
    // Nothing was joined and the socket still works.
    assert_eq!(
        gw.node.hub.sizes().subscriptions,
        1,
        "the user channel only"
    );
    c.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 1}));
}

#[tokio::test]
async fn bad_resume_parameters_are_refused_before_the_upgrade() {
    let gw = history_gateway(|_| {}).await;
    let tok = token("alice", &[]);
    for query in [
        "&user_offset=-1&user_epoch=e",
        "&user_offset=1.5&user_epoch=e",
        "&user_offset=x&user_epoch=e",
        "&user_offset=1",
        "&broadcast_epoch=e",
    ] {
        let req = format!("{}{query}", gw.ws_url(&tok))
            .into_client_request()
            .unwrap();
        let (status, body) = gw.refused(req).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("bad_request")),
            "{query}"
        );
    }
    let long = format!(
        "{}&user_offset=1&user_epoch={}",
        gw.ws_url(&tok),
        "e".repeat(100)
    );
    let (status, _) = gw.refused(long.into_client_request().unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(gw.node.metrics.upgrades_accepted.get(), 0);
}
