//! Every refusal happens before the upgrade, with the contract's status and
//! JSON body, and is counted.

use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::kit::*;

async fn refused_401(gw: &TestGateway, token: &str, reason: &str) {
    let (status, body) = gw.refused(gw.request(Some(token))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(!body.to_string().contains(token), "the token is not echoed");
    assert_eq!(
        gw.metric(&format!(
            "gateway_auth_failures_total{{reason=\"{reason}\"}}"
        ))
        .await,
        1.0,
        "{reason}"
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let gw = TestGateway::start().await;
    let (status, body) = gw.refused(gw.request(None)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    refused_401(&gw, "not-a-jwt", "malformed").await;
    refused_401(
        &gw,
        &sign(&json!({"sub": "a", "exp": now() - 30})),
        "expired",
    )
    .await;
    refused_401(
        &gw,
        &sign(&json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300})),
        "not_yet_valid",
    )
    .await;
    let wrong_key = sign_with(
        Algorithm::HS256,
        &json!({"sub": "a", "exp": now() + 600}),
        b"another-secret-another-secret-xx",
    );
    refused_401(&gw, &wrong_key, "bad_signature").await;
    let hs512 = sign_with(
        Algorithm::HS512,
        &json!({"sub": "a", "exp": now() + 600}),
        SECRET.as_bytes(),
    );
    refused_401(&gw, &hs512, "algorithm").await;
    // alg "none": header {"alg":"none","typ":"JWT"}, empty signature.
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "a", "exp": now() + 600}))
    );
    let (status, _) = gw.refused(gw.request(Some(&none))).await;
    assert_eq!(status, 401);
    assert_eq!(
        gw.metric("gateway_upgrades_refused_total{reason=\"unauthorized\"}")
            .await,
        7.0
    );
    assert_eq!(gw.metric("gateway_upgrades_accepted_total").await, 0.0);
    assert_eq!(gw.node.hub.sizes().conns, 0, "no socket was upgraded");
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let gw = TestGateway::with(|c| {
        c.auth.issuer = "https://auth.example".into();
        c.auth.audience = "gateway".into();
    })
    .await;
    let good = sign(
        &json!({"sub": "a", "exp": now() + 600, "iss": "https://auth.example", "aud": "gateway"}),
    );
    gw.connect(&good).await;
    refused_401(
        &gw,
        &sign(&json!({"sub": "a", "exp": now() + 600, "iss": "https://evil", "aud": "gateway"})),
        "issuer",
    )
    .await;
    refused_401(
        &gw,
        &sign(&json!({"sub": "a", "exp": now() + 600, "iss": "https://auth.example", "aud": "x"})),
        "audience",
    )
    .await;
    let (status, _) = gw
        .refused(gw.request(Some(&sign(&json!({"sub": "a", "exp": now() + 600})))))
        .await;
    assert_eq!(
        status, 401,
        "a token without iss/aud is refused when they are configured"
    );
}

#[tokio::test]
async fn token_in_header_or_query_and_subprotocols() {
    let gw = TestGateway::start().await;
    let t = token("alice", &[]);
    let mut c = gw.try_connect(gw.request(Some(&t))).await.unwrap();
    assert_eq!(c.recv().await["user"], "alice");
    assert_eq!(c.protocol, None, "nothing offered, nothing echoed");
    let mut req = gw.ws_url(&t).into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("v1.msgpack"),
    );
    let mut c = gw.try_connect(req).await.unwrap();
    assert_eq!(c.protocol.as_deref(), Some("v1.msgpack"));
    assert_eq!(c.recv().await["type"], "welcome");
    let mut req = gw.ws_url(&t).into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("v9.xml"));
    assert_eq!(gw.refused(req).await.0, 400);
}

#[tokio::test]
async fn origin_allowlist() {
    let gw =
        TestGateway::with(|c| c.server.allowed_origins = vec!["https://app.example".into()]).await;
    let t = token("alice", &[]);
    let mut req = gw.request(Some(&t));
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("https://evil.example"));
    let (status, body) = gw.refused(req).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden_origin"))
    );
    let mut req = gw.request(Some(&t));
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("https://app.example"));
    gw.try_connect(req).await.unwrap();
    assert_eq!(
        gw.metric("gateway_upgrades_refused_total{reason=\"forbidden_origin\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn capacity_and_per_user_and_per_ip_caps() {
    let gw = TestGateway::builder()
        .config(|c| c.limits.max_sockets_per_user = 1)
        .capacity(2)
        .start()
        .await;
    let _a = gw.connect(&token("alice", &[])).await;
    let (status, body) = gw.refused(gw.request(Some(&token("alice", &[])))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("user_limit"))
    );
    let _b = gw.connect(&token("bob", &[])).await;
    let (status, body) = gw.refused(gw.request(Some(&token("carol", &[])))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("capacity"))
    );
    assert_eq!(gw.get("/readyz").await.0, 503, "a full node is not ready");

    let gw = TestGateway::with(|c| c.limits.max_sockets_per_ip = 2).await;
    let _x = gw.connect(&token("x", &[])).await;
    let _y = gw.connect(&token("y", &[])).await;
    let (status, body) = gw.refused(gw.request(Some(&token("z", &[])))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("ip_limit"))
    );
}

#[tokio::test]
async fn connection_rate_limit() {
    let gw = TestGateway::with(|c| {
        c.limits.connect_rate = 1;
        c.limits.connect_burst = 2;
    })
    .await;
    let _a = gw.connect(&token("a", &[])).await;
    let _b = gw.connect(&token("b", &[])).await;
    let (status, body) = gw.refused(gw.request(Some(&token("c", &[])))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
}

#[tokio::test]
async fn not_websocket_requests_get_400() {
    let gw = TestGateway::start().await;
    let (status, body) = gw.get("/ws").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request"));
    assert_eq!(gw.get("/nope").await.0, 404);
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 200);
}
