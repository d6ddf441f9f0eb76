//! The built `gateway` binary: `check-config` exit codes and messages, `token` output.
//!
//! Each run drops inherited `GATEWAY_*` variables so a developer's shell cannot
//! change the outcome; the "no gateway.toml" cases run in a fresh temp dir.

// Helpers are shared between the modules of one test binary: `pub` is
// their visibility inside it, not an API.
#![allow(unreachable_pub)]

use std::process::{Command, Output};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[path = "support/kit.rs"]
mod kit;
use kit::{SECRET, TempDir, gateway_command, repo};

/// A scratch directory for one test: no gateway.toml unless the test writes one.
fn scratch() -> TempDir {
    TempDir::new("gateway-cli-test")
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = scratch();
    let file = dir.file("good.toml", &format!("[auth]\nhs_secret = \"{SECRET}\"\n"));
    let (code, stdout, stderr) = run(gateway_command(&dir.0)
        .arg("check-config")
        .arg("--config")
        .arg(&file));
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, format!("config OK ({})\n", file.display()));
}

#[test]
fn check_config_rejects_a_bad_file_naming_every_key() {
    let dir = scratch();
    let file = dir.file(
        "bad.toml",
        &format!("[auth]\nhs_secret = \"{SECRET}\"\n[websocket]\nmax_frame_bytes = 5\nbogus = 1\n"),
    );
    let (code, stdout, stderr) = run(gateway_command(&dir.0)
        .arg("check-config")
        .arg("--config")
        .arg(&file));
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("websocket.max_frame_bytes: must be between 128"),
        "{stderr}"
    );
    assert!(stderr.contains("websocket.bogus: unknown key"), "{stderr}");
}

#[test]
fn without_gateway_toml_key_material_is_required_and_explained() {
    let dir = scratch();
    let (code, _, stderr) = run(gateway_command(&dir.0).arg("check-config"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("auth.hs_secret"), "{stderr}");
    assert!(stderr.contains("GATEWAY_AUTH_HS_SECRET"), "{stderr}");

    let (code, stdout, stderr) = run(gateway_command(&dir.0)
        .arg("check-config")
        .env("GATEWAY_AUTH_HS_SECRET", SECRET));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "config OK (built-in defaults)\n");
}

#[test]
fn the_repository_config_is_ok_with_a_warning() {
    let (code, stdout, stderr) = run(gateway_command(&repo()).arg("check-config"));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "config OK (gateway.toml)\n");
    assert!(stderr.contains("DEVELOPMENT secret"), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_configuration_before_starting() {
    let dir = scratch();
    let (code, _, stderr) = run(gateway_command(&dir.0)
        .args(["serve", "--listen", "not-an-address"])
        .env("GATEWAY_AUTH_HS_SECRET", SECRET));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("server.listen"), "{stderr}");
    assert!(
        stderr.contains("--listen"),
        "names the flag that set it: {stderr}"
    );
}

#[test]
fn token_prints_only_a_jwt_from_the_repository_root() {
    let (code, stdout, stderr) =
        run(gateway_command(&repo()).args(["token", "--sub", "alice", "--rooms", "lobby"]));
    assert_eq!(code, Some(0), "{stderr}");
    let token = stdout.strip_suffix('\n').expect("ends with a newline");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    for part in &parts {
        assert!(!part.is_empty());
        URL_SAFE_NO_PAD
            .decode(part)
            .unwrap_or_else(|e| panic!("{part:?} is not base64url: {e}"));
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["rooms"], serde_json::json!(["lobby"]));
}

#[test]
fn token_refuses_without_an_hmac_key() {
    let dir = scratch();
    let (code, stdout, _) = run(gateway_command(&dir.0).args(["token", "--sub", "alice"]));
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty());

    let file = dir.file(
        "rsa.toml",
        "[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"k.pem\"\n",
    );
    let mut cmd = gateway_command(&dir.0);
    cmd.args(["token", "--sub", "alice", "--config"]).arg(&file);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!stderr.is_empty());
}

/// Runs `check-config` and `serve` on the same file. `serve` is given a
/// port-0 listener; when it starts (the configuration is valid) it is
/// stopped with SIGTERM once it logs `listening`. Returns both outcomes as
/// (exit code, the problem lines of stderr).
fn both_commands(dir: &TempDir, file: &std::path::Path) -> [(Option<i32>, Vec<String>); 2] {
    let problems = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter(|l| {
                l.starts_with("auth.") || l.starts_with("broker.") || l.starts_with("server.")
            })
            .map(str::to_owned)
            .collect()
    };
    let (check, _, check_err) = run(gateway_command(&dir.0)
        .arg("check-config")
        .arg("--config")
        .arg(file));
    let mut child = gateway_command(&dir.0)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(file)
        .env("GATEWAY_SERVER_DRAIN_SECONDS", "0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut serve_err = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        use std::io::Read;
        let n = stderr.read(&mut buf).unwrap_or(0);
        serve_err.push_str(&String::from_utf8_lossy(&buf[..n]));
        if serve_err.contains("listening") {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        if n == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve neither started nor stopped: {serve_err}"
        );
    }
    let status = child.wait().unwrap();
    [
        (check, problems(&check_err)),
        (status.code(), problems(&serve_err)),
    ]
}

#[test]
fn check_config_and_serve_agree_on_every_case() {
    let dir = scratch();
    let short = dir.file("short.secret", "too-short\n");
    let rsa = repo().join("tests/keys/rsa_public.pem");
    let cases: [(&str, String, Option<i32>, &[&str]); 6] = [
        (
            "redis settings: every problem, not the first",
            format!(
                "[auth]\nhs_secret = \"{SECRET}\"\n[broker]\nkind = \"redis\"\n[broker.redis]\n\
                 nodes = [\"nohost\"]\nprobe_interval_ms = 1000\nprobe_timeout_ms = 1000\n\
                 tls_ca_file = \"/nonexistent.pem\"\n"
            ),
            Some(2),
            &[
                "broker.redis.nodes",
                "broker.redis.probe_timeout_ms",
                "broker.redis.tls_ca_file",
            ],
        ),
        (
            "a short secret from a file is refused like an inline one",
            format!("[auth]\nhs_secret_file = \"{}\"\n", short.display()),
            Some(2),
            &["auth.hs_secret_file"],
        ),
        (
            "a short inline secret",
            "[auth]\nhs_secret = \"too-short\"\n".to_owned(),
            Some(2),
            &["auth.hs_secret"],
        ),
        (
            "an unsupported algorithm",
            format!("[auth]\nhs_secret = \"{SECRET}\"\nalgorithms = [\"HS256\", \"RS1\"]\n"),
            Some(2),
            &["auth.algorithms"],
        ),
        (
            "PS384 and PS512 are advertised, so they are accepted",
            format!(
                "[auth]\nalgorithms = [\"PS384\", \"PS512\"]\npublic_key_file = \"{}\"\n",
                rsa.display()
            ),
            Some(0),
            &[],
        ),
        (
            "an unreadable key file is found by both",
            "[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"/nonexistent.pem\"\n".to_owned(),
            Some(2),
            &["auth.public_key_file"],
        ),
    ];
    for (what, toml, expected, keys) in cases {
        let file = dir.file("case.toml", &toml);
        let [(check, check_problems), (serve, serve_problems)] = both_commands(&dir, &file);
        assert_eq!(check, expected, "{what}: check-config {check_problems:?}");
        // A valid configuration: `serve` started, then stopped by SIGTERM (0).
        assert_eq!(serve, expected, "{what}: serve {serve_problems:?}");
        assert_eq!(
            check_problems, serve_problems,
            "{what}: the two commands agree"
        );
        for key in keys {
            assert!(
                check_problems
                    .iter()
                    .any(|p| p.starts_with(&format!("{key}: "))),
                "{what}: {key} missing from {check_problems:?}"
            );
        }
    }
}

#[tokio::test]
async fn trace_logs_never_carry_tokens() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncBufReadExt;
    let dir = scratch();
    let file = dir.file("trace.toml", &format!("[auth]\nhs_secret = \"{SECRET}\"\n"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .current_dir(&dir.0)
        .env("RUST_LOG", "trace")
        .env("GATEWAY_SERVER_DRAIN_SECONDS", "0")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let addr = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("the gateway logs in time")
            .unwrap()
            .expect("the gateway starts");
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |marker: &str| {
        let claims = serde_json::json!({"sub": "alice", "exp": now + 600, "marker": marker});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let (upgrade, refresh) = (sign("upgrade"), sign("refresh"));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={upgrade}"))
        .await
        .unwrap();
    let frame = serde_json::json!({"type": "refresh", "token": refresh, "id": 1}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
        .await
        .unwrap();
    // welcome, then the refresh's ok: the frame was read (and would have
    // been traced) before the reply.
    for _ in 0..2 {
        ws.next().await.unwrap().unwrap();
    }
    ws.close(None).await.unwrap();
    let _ = Command::new("kill")
        .arg(child.id().unwrap().to_string())
        .status();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await
    {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log ran at trace: {log}"
    );
    for (what, token) in [("upgrade", &upgrade), ("refresh", &refresh)] {
        // The signature part alone is enough to misuse a leaked token.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "the {what} token reached the log");
    }
    assert!(
        !log.contains("Received message"),
        "tungstenite frame contents traced"
    );
}
