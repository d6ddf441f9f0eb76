//! The built `gateway` binary: `check-config` exit codes and messages, `token` output.
//!
//! Each run drops inherited `GATEWAY_*` variables so a developer's shell cannot
//! change the outcome; the "no gateway.toml" cases run in a fresh temp dir.

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
