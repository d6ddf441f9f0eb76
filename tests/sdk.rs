//! The TypeScript client SDK's suite (`clients/js`: unit tests, Node
//! integration tests and headless-Chromium tests, all with node's test
//! runner) run against the gateway binary of this build, so that
//! `cargo test --workspace` covers the SDK too. The JS tests start the binary
//! themselves (`GATEWAY_BIN`) on free loopback ports; the two-node drain
//! test also starts a `redis-server` (and fails without one under CI).
//!
//! Without node, npm or Chromium this test skips with a message, except under
//! CI (`CI` set), where `.ci/run` installs them and a missing one fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Debian's Chromium (or `CHROMIUM`).
fn chromium() -> Option<PathBuf> {
    match std::env::var_os("CHROMIUM") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => on_path("chromium")
            .or_else(|| Some(PathBuf::from("/usr/bin/chromium")).filter(|p| p.is_file())),
    }
}

/// Runs `cmd`, echoing its output (captured by the test harness unless the
/// test fails or runs with --nocapture), and returns whether it succeeded.
fn run(cmd: &mut Command, what: &str) -> bool {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("---- {what}: stdout ----\n{stdout}");
    println!("---- {what}: stderr ----\n{stderr}");
    // Skipped JS tests say so loudly here too.
    for line in stdout.lines().chain(stderr.lines()) {
        let line = line.trim_start().trim_start_matches("# ");
        if line.starts_with("SKIPPED") {
            eprintln!("{line}");
        }
    }
    out.status.success()
}

fn npm(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("npm");
    cmd.args(args)
        .current_dir(dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false");
    cmd
}

#[test]
fn the_typescript_sdk_passes_its_suite_against_this_gateway_binary() {
    let missing: Vec<&str> = [
        ("node", on_path("node").is_none()),
        ("npm", on_path("npm").is_none()),
        ("chromium", chromium().is_none()),
    ]
    .into_iter()
    .filter_map(|(name, gone)| gone.then_some(name))
    .collect();
    if !missing.is_empty() {
        let msg = format!(
            "SDK tests need {} (apt-get install chromium nodejs npm; .ci/run installs them)",
            missing.join(", ")
        );
        if std::env::var_os("CI").is_some() {
            panic!("CI is set and {msg}");
        }
        eprintln!("SKIPPED tests/sdk.rs: {msg}");
        return;
    }
    let dir = repo().join("clients/js");
    if !dir.join("node_modules/.package-lock.json").is_file() {
        assert!(
            run(&mut npm(&dir, &["ci"]), "npm ci"),
            "npm ci failed in clients/js"
        );
    }
    let mut test = npm(&dir, &["test"]);
    test.env("GATEWAY_BIN", env!("CARGO_BIN_EXE_gateway"))
        .env("CHROMIUM", chromium().unwrap());
    // The JS harness strips GATEWAY_* from the gateways it starts; strip them
    // here too so that nothing of a developer's shell leaks in.
    for (name, _) in std::env::vars() {
        if name.starts_with("GATEWAY_") && name != "GATEWAY_BIN" {
            test.env_remove(name);
        }
    }
    assert!(
        run(&mut test, "npm test (clients/js)"),
        "the SDK's tests failed (output above)"
    );
}
