//! A real nginx, configured from `deploy/nginx/templates/gateway.conf.template`
//! (the production file, only its `${NGINX_*}` placeholders filled in), in
//! front of two real gateway processes: `wss://` through nginx's TLS
//! termination, least-connections spreading, and a drained node whose
//! sockets get 1012 and reconnect through nginx to the other node.
//!
//! Skips (passing, with a message) only when no `nginx` binary exists and `CI`
//! is unset: CI runs `.ci/deploy-checks` first, which installs nginx.

// Helpers are shared between the modules of one test binary: `pub` is
// their visibility inside it, not an API.
#![allow(unreachable_pub)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

#[path = "support/kit.rs"]
mod kit;
use kit::{
    Client, Ended, Proc, SECRET, TempDir, eventually_async, free_port, gateway_command, now, repo,
};

/// Drain window of the nodes: short, but long enough to show the spread.
const DRAIN_SECONDS: u64 = 2;
/// Bound on any single awaited event; a test failure, never a synchronisation.
const DEADLINE: Duration = Duration::from_secs(20);
const TEMPLATE: &str = "deploy/nginx/templates/gateway.conf.template";
const UPSTREAMS_EXAMPLE: &str = "deploy/nginx/upstreams.example.conf";

/// A test socket through nginx's TLS listener.
type Wss = Client<TlsStream<TcpStream>>;

/// The nginx binary on PATH or in the sbin directories (Debian installs it in
/// /usr/sbin, which a non-root PATH may lack).
fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    Stdio::from(File::create(dir.join(name)).unwrap())
}

/// One gateway node on the embedded broker, with its own node id.
fn start_node(dir: &Path, node_id: &str, port: u16) -> Proc {
    // In the scratch directory, away from the repository's gateway.toml: only
    // what is set here counts.
    let child = gateway_command(dir)
        .arg("serve")
        .env("GATEWAY_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_SERVER_NODE_ID", node_id)
        .env("GATEWAY_SERVER_DRAIN_SECONDS", DRAIN_SECONDS.to_string())
        .env("GATEWAY_AUTH_HS_SECRET", SECRET)
        .stdout(log_file(dir, &format!("{node_id}.out")))
        .stderr(log_file(dir, &format!("{node_id}.err")))
        .spawn()
        .unwrap();
    Proc::terminate_on_drop(child, "gateway")
}

/// Sends one HTTP/1.1 request on `stream` and returns the status and the
/// whole response (`Connection: close`, so the response ends at EOF).
async fn request<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, path: &str) -> (u16, String) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // A TLS peer may close without close_notify; what was read still counts.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    Some(request(&mut stream, path).await)
}

/// Polls `GET path` until it answers 200; fails the test past the deadline
/// (the scratch directory, with the logs, is kept then).
async fn wait_ok(port: u16, path: &str, what: &str) {
    let what = format!("{what} to answer 200 on {path}");
    eventually_async(&what, DEADLINE, || async {
        matches!(get(port, path).await, Some((200, _)))
    })
    .await;
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA and a server certificate for localhost/127.0.0.1 signed by
/// it (rustls, rightly, refuses a self-signed CA certificate as a server
/// certificate). Returns (CA cert, server cert, server key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=gateway test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "tls.crt",
    ]);
    (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"))
}

/// The first two `server` lines of the production example, with their
/// parameters (max_fails, fail_timeout, max_conns) kept and the addresses
/// replaced by the test nodes'.
fn upstreams(ports: &[u16]) -> String {
    let example = std::fs::read_to_string(repo().join(UPSTREAMS_EXAMPLE)).unwrap();
    let servers: Vec<&str> = example
        .lines()
        .filter(|l| l.starts_with("server "))
        .collect();
    assert!(
        servers.len() >= ports.len(),
        "{UPSTREAMS_EXAMPLE} lists fewer nodes than the test needs"
    );
    servers
        .iter()
        .zip(ports)
        .map(|(line, port)| {
            let mut words: Vec<String> = line.split(' ').map(str::to_owned).collect();
            words[1] = format!("127.0.0.1:{port}");
            words.join(" ") + "\n"
        })
        .collect()
}

/// The production template with its placeholders filled in; any placeholder
/// left over (a new one the test does not know) fails the test.
fn render_template(vars: &HashMap<&str, String>) -> String {
    let mut text = std::fs::read_to_string(repo().join(TEMPLATE)).unwrap();
    for (name, value) in vars {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !text.contains("${NGINX_"),
        "unrendered placeholder in {TEMPLATE}"
    );
    text
}

/// The test's own main configuration: what deploy/nginx/nginx.conf sizes for
/// production (and .ci/deploy-checks validates with `nginx -t`) is replaced
/// by paths inside the scratch prefix, so nginx needs no root and leaves no
/// trace; the gateway part is the rendered production file.
fn main_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/gateway.conf;\n}}\n"
    )
}

fn tls_connector(ca: &Path) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls(connector: &TlsConnector, port: u16) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with nginx")
}

/// A token for `sub` that may join the lobby (and publish nowhere).
fn token(sub: &str) -> String {
    kit::sign(&json!({"sub": sub, "exp": now() + 3600, "iat": now(), "rooms": ["lobby"]}))
}

/// Opens wss://localhost:<port>/ws through nginx and returns the socket and
/// the node that welcomed it.
async fn connect(connector: &TlsConnector, port: u16, sub: &str) -> (Wss, String) {
    let stream = tls(connector, port).await;
    let url = format!("wss://localhost:{port}/ws?token={}", token(sub));
    let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("upgrade in time")
        .expect("upgrade through nginx");
    let mut ws = Client::new(ws, None).with_deadline(DEADLINE);
    let welcome = ws.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let node = welcome["node"]
        .as_str()
        .expect("welcome names its node")
        .to_owned();
    (ws, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_balances_wss_and_moves_sockets_off_a_draining_node() {
    let Some(nginx) = nginx_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but nginx is not installed: .ci/deploy-checks installs it"
        );
        eprintln!(
            "SKIPPED nginx_balances_wss_and_moves_sockets_off_a_draining_node: no nginx binary (apt-get install nginx)"
        );
        return;
    };
    let dir = TempDir::new("gateway-nginx-test");
    let d = dir.0.as_path();
    let (port_a, port_b, http_port, https_port) =
        (free_port(), free_port(), free_port(), free_port());

    let node_a = start_node(d, "node-a", port_a);
    let _node_b = start_node(d, "node-b", port_b);
    wait_ok(port_a, "/healthz", "node-a").await;
    wait_ok(port_b, "/healthz", "node-b").await;

    let (ca, cert, key) = make_certificates(d);
    std::fs::write(d.join("upstreams.conf"), upstreams(&[port_a, port_b])).unwrap();
    let vars = HashMap::from([
        ("NGINX_LISTEN_HTTP", format!("127.0.0.1:{http_port}")),
        ("NGINX_LISTEN_HTTPS", format!("127.0.0.1:{https_port}")),
        ("NGINX_TLS_CERT", cert.display().to_string()),
        ("NGINX_TLS_KEY", key.display().to_string()),
        (
            "NGINX_UPSTREAMS",
            d.join("upstreams.conf").display().to_string(),
        ),
    ]);
    std::fs::write(d.join("gateway.conf"), render_template(&vars)).unwrap();
    std::fs::write(d.join("nginx.conf"), main_conf(d)).unwrap();
    let child = Command::new(&nginx)
        .arg("-p")
        .arg(format!("{}/", d.display()))
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .args(["-e", "stderr"])
        .stdout(log_file(d, "nginx.out"))
        .stderr(log_file(d, "nginx.err"))
        .spawn()
        .unwrap();
    let _nginx = Proc::terminate_on_drop(child, "nginx");
    wait_ok(http_port, "/nginx-health", "nginx").await;

    // Plain HTTP only redirects to TLS.
    let (status, response) = get(http_port, "/ws").await.unwrap();
    assert_eq!(status, 308, "{response}");
    assert!(
        response.contains("Location: https://localhost/ws"),
        "{response}"
    );

    // Over TLS, probes and metrics stay off the public listener.
    let connector = tls_connector(&ca);
    let (status, response) = request(&mut tls(&connector, https_port).await, "/metrics").await;
    assert_eq!(
        status, 404,
        "/metrics must not be exposed through nginx: {response}"
    );

    // The SSE fallback passes unbuffered: the welcome arrives while the
    // stream is still open.
    let mut sse = tls(&connector, https_port).await;
    let head = format!(
        "GET /sse?token={} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        token("sse-user")
    );
    sse.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let welcomed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(r#"data: {"type":"welcome""#) {
            let n = sse.read(&mut chunk).await.unwrap();
            assert!(n > 0, "stream ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(welcomed.is_ok(), "no welcome through nginx: {text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    drop(sse);

    // Sockets through nginx spread over both nodes (least_conn).
    let mut sockets = Vec::new();
    for i in 0..6 {
        sockets.push(connect(&connector, https_port, &format!("user{i}")).await);
    }
    let on_a = sockets.iter().filter(|(_, n)| n == "node-a").count();
    let on_b = sockets.iter().filter(|(_, n)| n == "node-b").count();
    assert_eq!(
        on_a + on_b,
        sockets.len(),
        "every welcome names node-a or node-b"
    );
    assert!(
        on_a >= 1 && on_b >= 1,
        "least_conn spreads sockets: {on_a} on node-a, {on_b} on node-b"
    );

    // Drain node-a: its sockets get 1012 and reconnect through nginx to
    // node-b, whether node-a still refuses upgrades with 503 or has already
    // closed its listener (proxy_next_upstream covers both).
    node_a.terminate();
    let (drained, mut kept): (Vec<_>, Vec<_>) =
        sockets.into_iter().partition(|(_, n)| n == "node-a");
    for (i, (mut ws, _)) in drained.into_iter().enumerate() {
        assert_eq!(
            ws.ended().await,
            Ended::Closed(1012),
            "a draining node closes with 1012 (service restart)"
        );
        let (_ws, node) = connect(&connector, https_port, &format!("again{i}")).await;
        assert_eq!(
            node, "node-b",
            "the reconnect lands on the node that is not draining"
        );
    }
    // node-b's sockets never noticed.
    for (i, (ws, _)) in kept.iter_mut().enumerate() {
        ws.send(json!({"type": "ping", "id": i})).await;
        assert_eq!(ws.recv().await, json!({"type": "pong", "id": i}));
    }

    // The drained process exits 0 within its drain window (plus the deadline).
    let mut node_a = node_a;
    let status = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || {
            let status = node_a.child.wait().unwrap();
            (status, node_a)
        }),
    )
    .await
    .expect("node-a exits after its drain")
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0), "a drain ends with exit code 0");

    // With node-a gone, new sockets still get in, on node-b.
    let (_ws, node) = connect(&connector, https_port, "late").await;
    assert_eq!(node, "node-b");
}
