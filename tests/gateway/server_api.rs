//! The server API on one node with the embedded broker (contract section
//! 8): disconnect, revoke (by `jti` and by user + `issued_before`), the node
//! registry, and every kind of bad input getting its documented status and
//! JSON error while changing nothing.

use serde_json::{Value, json};

use crate::kit::*;

fn tok(sub: &str, jti: &str, iat: u64) -> String {
    sign(&json!({"sub": sub, "exp": now() + 3600, "iat": iat, "jti": jti, "rooms": ["lobby"]}))
}

#[tokio::test]
async fn disconnect_closes_every_socket_of_the_user_with_4003_or_1012() {
    let gw = TestGateway::start().await;
    let mut a1 = gw.connect(&token("alice", &["lobby"])).await;
    let mut a2 = gw.connect(&token("alice", &["lobby"])).await;
    let mut b = gw.connect(&token("bob", &["lobby"])).await;
    let (status, body) = gw
        .api(
            "POST",
            "/api/disconnect",
            r#"{"user":"alice","reconnect":false}"#,
        )
        .await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    a1.expect_close(4003).await;
    a2.expect_close(4003).await;
    // Bob is untouched and still served.
    b.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(b.recv().await, json!({"type": "pong", "id": 1}));

    let (status, _) = gw
        .api(
            "POST",
            "/api/disconnect",
            r#"{"user":"bob","reconnect":true}"#,
        )
        .await;
    assert_eq!(status, 200);
    b.expect_close(1012).await;
    gw.eventually("closes counted", |n| n.metrics.api_closes.get() == 3)
        .await;
    assert_eq!(gw.metric("gateway_disconnects_applied_total").await, 2.0);
}

#[tokio::test]
async fn revoke_by_jti_closes_refuses_the_upgrade_and_the_refresh() {
    let gw = TestGateway::start().await;
    let stolen = tok("alice", "t-stolen", now());
    let other = tok("alice", "t-other", now());
    let mut victim = gw.connect(&stolen).await;
    let mut kept = gw.connect(&other).await;
    let (status, body) = gw.api("POST", "/api/revoke", r#"{"jti":"t-stolen"}"#).await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    victim.expect_close(4001).await;
    // The upgrade: 401 `revoked`.
    let (status, body) = gw.refused(gw.request(Some(&stolen))).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "revoked", "{body}");
    // A refresh to the revoked token: bad_token, the socket stays open.
    kept.send(json!({"type": "refresh", "token": stolen, "id": 5}))
        .await;
    let reply = kept.recv().await;
    assert_eq!(
        (reply["type"].clone(), reply["code"].clone()),
        (json!("error"), json!("bad_token")),
        "{reply}"
    );
    assert_eq!(reply["id"], 5);
    kept.send(json!({"type": "ping", "id": 6})).await;
    assert_eq!(kept.recv().await["type"], "pong");
    assert_eq!(
        gw.metric(r#"gateway_auth_failures_total{reason="revoked"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn revoke_by_user_covers_tokens_issued_before_the_cut_off_only() {
    let gw = TestGateway::start().await;
    let cut = now();
    let old = tok("alice", "a", cut - 100);
    let fresh = tok("alice", "b", cut);
    let no_iat = sign(&json!({"sub": "alice", "exp": now() + 3600, "rooms": ["lobby"]}));
    let bob = tok("bob", "c", cut - 100);
    let mut s_old = gw.connect(&old).await;
    let mut s_no_iat = gw.connect(&no_iat).await;
    let mut s_fresh = gw.connect(&fresh).await;
    let mut s_bob = gw.connect(&bob).await;
    let body = json!({"user": "alice", "issued_before": cut}).to_string();
    assert_eq!(gw.api("POST", "/api/revoke", &body).await.0, 200);
    s_old.expect_close(4001).await;
    s_no_iat.expect_close(4001).await;
    for c in [&mut s_fresh, &mut s_bob] {
        c.send(json!({"type": "ping", "id": 1})).await;
        assert_eq!(c.recv().await["type"], "pong");
    }
    assert_eq!(gw.refused(gw.request(Some(&old))).await.0, 401);
    gw.connect(&fresh).await;
}

#[tokio::test]
async fn the_registry_lists_this_node() {
    let gw = TestGateway::with(|c| {
        c.server.node_id = "solo".into();
        c.server.registry_ttl_seconds = 3;
    })
    .await;
    let _c = gw.connect(&token("alice", &["lobby"])).await;
    eventually_async("the registry shows the socket", gw.deadline, || async {
        let (_, body) = gw.api("GET", "/api/nodes", "").await;
        body["nodes"][0]["sockets"] == 1
    })
    .await;
    let (status, body) = gw.api("GET", "/api/nodes", "").await;
    assert_eq!(status, 200);
    let nodes = body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{body}");
    let n = &nodes[0];
    assert_eq!(n["id"], "solo");
    assert_eq!(n["draining"], false);
    assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
    for field in ["sockets", "channels", "uptime_seconds"] {
        assert!(n[field].is_u64(), "{field}: {n}");
    }
}

/// Each bad request: its status, its error code, and nothing applied.
#[tokio::test]
async fn bad_input_gets_a_documented_4xx_and_changes_nothing() {
    let gw = TestGateway::start().await;
    let mut alice = gw.connect(&tok("alice", "j1", now())).await;
    let long_user = "u".repeat(10 * 1024);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "GET",
            "/api/presence?channel=room:bad%20room",
            String::new(),
            400,
            "bad_channel",
        ),
        (
            "GET",
            "/api/presence?channel=user:alice",
            String::new(),
            400,
            "bad_channel",
        ),
        ("GET", "/api/presence", String::new(), 400, "bad_channel"),
        (
            "GET",
            "/api/presence?channel=room:lobby&x=1",
            String::new(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/disconnect",
            "{not json".into(),
            400,
            "bad_request",
        ),
        ("POST", "/api/disconnect", "{}".into(), 400, "bad_request"),
        (
            "POST",
            "/api/disconnect",
            r#"{"user":"alice","extra":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/disconnect",
            r#"{"user":""}"#.into(),
            400,
            "bad_user",
        ),
        (
            "POST",
            "/api/disconnect",
            json!({"user": long_user}).to_string(),
            400,
            "bad_user",
        ),
        (
            "POST",
            "/api/disconnect",
            r#"{"user":42}"#.into(),
            400,
            "bad_request",
        ),
        ("POST", "/api/revoke", "{}".into(), 400, "bad_request"),
        (
            "POST",
            "/api/revoke",
            r#"{"user":"alice"}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/revoke",
            r#"{"jti":"j1","user":"alice","issued_before":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/revoke",
            r#"{"user":"alice","issued_before":-1}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/revoke",
            r#"{"jti":""}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/revoke",
            json!({"user": long_user, "issued_before": 1}).to_string(),
            400,
            "bad_user",
        ),
        (
            "POST",
            "/api/revoke",
            format!(r#"{{"jti":"{}"}}"#, "j".repeat(20_000)),
            413,
            "too_large",
        ),
        (
            "GET",
            "/api/revoke",
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/nodes",
            String::new(),
            405,
            "method_not_allowed",
        ),
        ("GET", "/api/nope", String::new(), 404, "not_found"),
        (
            "GET",
            "/api/nodes?verbose=1",
            String::new(),
            400,
            "bad_request",
        ),
    ];
    for (method, path, body, status, code) in &cases {
        let (got, reply) = gw.api(method, path, body).await;
        assert_eq!(got, *status, "{method} {path} {:.80}: {reply}", body);
        assert_eq!(reply["error"]["code"], *code, "{method} {path}: {reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    // A wrong key, and none.
    for auth in [vec![("authorization", "Bearer wrong")], vec![]] {
        let (status, text) = http(gw.addr, "POST", "/api/revoke", &auth, r#"{"jti":"j1"}"#).await;
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (status, reply["error"]["code"].clone()),
            (401, json!("unauthorized"))
        );
    }
    // Nothing was applied: alice is still connected and her token valid.
    alice.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(alice.recv().await["type"], "pong");
    assert!(gw.node.revocations.is_empty());
    assert_eq!(gw.metric("gateway_disconnects_applied_total").await, 0.0);
    gw.connect(&tok("alice", "j1", now())).await;
}

#[tokio::test]
async fn the_api_stays_off_without_keys() {
    let gw = TestGateway::with(|c| c.api.keys.clear()).await;
    for (method, path) in [
        ("GET", "/api/nodes"),
        ("POST", "/api/revoke"),
        ("GET", "/api/presence?channel=room:a"),
    ] {
        let (status, text) = http(
            gw.addr,
            method,
            path,
            &[("authorization", "Bearer x")],
            "{}",
        )
        .await;
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, 401, "{path}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("api.keys"),
            "{reply}"
        );
    }
}
