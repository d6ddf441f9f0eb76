//! TLS (rustls, with a private CA from `broker.redis.tls_ca_file`) and ACL
//! authentication against a single Redis that accepts nothing else: both the
//! subscriber and the publisher side go through them. Wrong credentials keep
//! the node unready instead of half-working.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::harness::*;
use crate::require_redis;

/// A CA and a server certificate for 127.0.0.1, made with `openssl`.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=gw-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_acl_auth_carry_both_directions() {
    require_redis!();
    let dir = TempDir::new("gw-tls");
    make_certs(&dir.0);
    let file = |name: &str| dir.0.join(name).to_string_lossy().into_owned();
    let port = free_ports(1)[0];
    let (cert, key, ca) = (file("srv.crt"), file("srv.key"), file("ca.crt"));
    let _redis = RedisServer::spawn(
        port,
        false,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "gw",
            "on",
            ">s3cret",
            "~*",
            "&*",
            "+@all",
        ],
    );
    let gateway = |password: &str| {
        let password = password.to_owned();
        let ca = ca.clone();
        redis_gateway(vec![format!("127.0.0.1:{port}")], false, "sharded").config(move |c| {
            c.broker.redis.tls = true;
            c.broker.redis.tls_ca_file = ca;
            c.broker.redis.username = "gw".into();
            c.broker.redis.password = password;
        })
    };
    let a = gateway("s3cret").ready().await;
    let b = gateway("s3cret").ready().await;
    let mut on_b = b.connect(&token("tess", &["vault"])).await;
    on_b.subscribe("vault").await;
    assert_eq!(
        a.publish_http("room:vault", json!({"over": "tls"})).await,
        202
    );
    assert_eq!(
        on_b.recv().await,
        event("room:vault", json!({"over": "tls"}))
    );

    // Redis itself counts the refusals (ACL LOG). Three of them: more than
    // the node's two clients (subscriber, publisher) make on a first try, so
    // the node has retried after being refused, and is still not ready.
    let refusals = async || {
        let mut admin = Resp::connect_tls(port, Path::new(&ca)).await.unwrap();
        let auth = admin.cmd(&["AUTH", "gw", "s3cret"]).await.unwrap();
        assert_eq!(auth, Reply::Simple("OK".into()));
        admin.auth_failures("gw").await
    };
    let before = refusals().await;
    let wrong = gateway("wrong").start().await;
    eventually_async("Redis to refuse the node three times", DEADLINE, || async {
        refusals().await >= before + 3
    })
    .await;
    assert_eq!(
        wrong.get("/readyz").await.0,
        503,
        "bad credentials never make a node ready"
    );
}
