//! Classic mode (SUBSCRIBE / PUBLISH) against a single Redis: what a Redis
//! without a cluster, or older than 7, serves.

use serde_json::json;

use crate::harness::*;
use crate::require_redis;

async fn numsub(port: u16, channel: &str) -> i64 {
    match Resp::connect(port)
        .await
        .unwrap()
        .cmd(&["PUBSUB", "NUMSUB", channel])
        .await
        .unwrap()
    {
        Reply::Array(items) => items[1].int(),
        other => panic!("unexpected NUMSUB reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_mode_against_a_single_redis() {
    require_redis!();
    let redis = SingleRedis::start().await;
    let port = redis.server.port;
    let gateway = || redis_gateway(vec![redis.server.addr()], false, "classic");
    let a = gateway().ready().await;
    let b = gateway().ready().await;
    let mut on_a = a.connect(&token("carol", &["news"])).await;
    let mut on_b = b.connect(&token("dave", &["news"])).await;
    on_a.subscribe("news").await;
    on_b.subscribe("news").await;
    assert_eq!(numsub(port, "gw:room:news").await, 2);

    let mut backend = Resp::connect(port).await.unwrap();
    assert_eq!(
        backend
            .cmd(&["PUBLISH", "gw:room:news", r#"{"n":1}"#])
            .await
            .unwrap(),
        Reply::Int(2)
    );
    assert_eq!(on_a.recv().await, event("room:news", json!({"n": 1})));
    assert_eq!(on_b.recv().await, event("room:news", json!({"n": 1})));
    assert_eq!(
        backend
            .cmd(&["PUBLISH", "gw:user:dave", "1"])
            .await
            .unwrap(),
        Reply::Int(1)
    );
    assert_eq!(on_b.recv().await, event("user:dave", json!(1)));
    assert_eq!(
        backend
            .cmd(&["PUBLISH", "gw:broadcast", "2"])
            .await
            .unwrap(),
        Reply::Int(2)
    );
    assert_eq!(
        on_a.recv().await,
        event("broadcast", json!(2)),
        "carol got nothing for dave"
    );
    assert_eq!(on_b.recv().await, event("broadcast", json!(2)));
    assert_eq!(a.publish_http("room:news", json!("from A")).await, 202);
    assert_eq!(on_b.recv().await, event("room:news", json!("from A")));
    assert_eq!(on_a.recv().await, event("room:news", json!("from A")));

    on_a.unsubscribe("news").await;
    drop(on_b);
    eventually_async("classic subscriptions released", DEADLINE, || async {
        numsub(port, "gw:room:news").await == 0 && numsub(port, "gw:user:dave").await == 0
    })
    .await;
    assert_eq!(numsub(port, "gw:user:carol").await, 1);
}
