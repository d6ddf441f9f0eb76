//! Configuration loading through the `load()` seam: layers, precedence, problems.
//!
//! The environment is an injected map and files are unique temp files, so these
//! tests never read or change the process environment or working directory.

// Helpers are shared between the modules of one test binary: `pub` is
// their visibility inside it, not an API.
#![allow(unreachable_pub)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use gateway::app::{Parts, check};
use gateway::config::{
    BrokerKind, Config, ConfigError, DEV_HS_SECRET, LoadOptions, Loaded, PubSub,
};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

/// A temp file deleted on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "gateway-config-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_file(contents: &str, vars: &[(&str, &str)]) -> Result<Loaded<Parts>, ConfigError> {
    let file = TempFile::new(contents);
    check(&LoadOptions {
        file: Some(file.0.clone()),
        env: env(vars),
        ..LoadOptions::default()
    })
}

fn problem<'a>(e: &'a ConfigError, key: &str) -> &'a str {
    match e.problems.iter().find(|p| p.key == key) {
        Some(p) => &p.message,
        None => panic!("no problem for {key} in:\n{e}"),
    }
}

fn repo_gateway_toml() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway.toml")
}

#[test]
fn an_empty_file_gives_the_defaults_plus_the_secret() {
    let loaded = load_file("", &[("GATEWAY_AUTH_HS_SECRET", SECRET)]).unwrap();
    let mut expected = Config::default();
    expected.auth.hs_secret = SECRET.into();
    assert_eq!(loaded.config, expected);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        expected.broker.kind,
        BrokerKind::Memory,
        "defaults must run without Redis"
    );
}

#[test]
fn the_file_overrides_defaults() {
    let loaded = load_file(
        &format!(
            "[server]\nlisten = \"127.0.0.1:9000\"\ndrain_seconds = 30\n\
             [auth]\nhs_secret = \"{SECRET}\"\n\
             [broker.redis]\nnodes = [\"r1:7000\"]\npubsub = \"classic\"\n"
        ),
        &[],
    )
    .unwrap();
    let c = loaded.config;
    assert_eq!(c.server.listen, "127.0.0.1:9000");
    assert_eq!(c.server.drain_seconds, 30);
    assert_eq!(c.broker.redis.nodes, ["r1:7000"]);
    assert_eq!(c.broker.redis.pubsub, PubSub::Classic);
    assert_eq!(
        c.websocket,
        Config::default().websocket,
        "untouched sections keep defaults"
    );
    assert!(
        loaded.source.ends_with(".toml"),
        "source names the file: {}",
        loaded.source
    );
}

#[test]
fn the_environment_overrides_with_typed_values() {
    let loaded = load_file(
        "[broker]\nkind = \"memory\"\n",
        &[
            ("GATEWAY_AUTH_HS_SECRET", SECRET),
            ("GATEWAY_BROKER_KIND", "redis"),
            ("GATEWAY_BROKER_REDIS_NODES", "a:1,b:2"),
            ("GATEWAY_BROKER_REDIS_CLUSTER", "0"),
            ("GATEWAY_WEBSOCKET_MAX_FRAME_BYTES", "4096"),
            ("GATEWAY_API_KEYS", ""),
            ("PATH", "/usr/bin"), // not ours: ignored
        ],
    )
    .unwrap();
    let c = loaded.config;
    assert_eq!(c.auth.hs_secret, SECRET);
    assert_eq!(c.broker.kind, BrokerKind::Redis);
    assert_eq!(c.broker.redis.nodes, ["a:1", "b:2"]);
    assert!(!c.broker.redis.cluster);
    assert_eq!(c.websocket.max_frame_bytes, 4096);
    assert!(c.api.keys.is_empty());
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file() {
    let file = TempFile::new(&format!(
        "[server]\nlisten = \"127.0.0.1:1111\"\nnode_id = \"from-file\"\ndrain_seconds = 7\n\
         [auth]\nhs_secret = \"{SECRET}\"\n"
    ));
    let loaded = check(&LoadOptions {
        file: Some(file.0.clone()),
        env: env(&[
            ("GATEWAY_SERVER_LISTEN", "127.0.0.1:2222"),
            ("GATEWAY_SERVER_NODE_ID", "from-env"),
        ]),
        listen: Some("127.0.0.1:3333".into()),
        node_id: None,
    })
    .unwrap();
    assert_eq!(loaded.config.server.listen, "127.0.0.1:3333", "flag > env");
    assert_eq!(loaded.config.server.node_id, "from-env", "env > file");
    assert_eq!(loaded.config.server.drain_seconds, 7, "file > default");
}

#[test]
fn an_unknown_key_in_the_file_is_named() {
    let e = load_file(
        &format!("[auth]\nhs_secret = \"{SECRET}\"\nhs_secrt = \"x\"\n[websocket]\nmax_frames = 1\n[nope]\n"),
        &[],
    )
    .unwrap_err();
    assert!(
        problem(&e, "auth.hs_secrt").contains("did you mean `hs_secret`"),
        "{e}"
    );
    assert!(
        problem(&e, "websocket.max_frames").contains("unknown key"),
        "{e}"
    );
    assert!(problem(&e, "nope").contains("unknown key"), "{e}");
}

#[test]
fn an_unknown_gateway_variable_is_named() {
    let e = load_file(
        "",
        &[
            ("GATEWAY_AUTH_HS_SECRET", SECRET),
            ("GATEWAY_AUTH_HS_SECRT", SECRET),
        ],
    )
    .unwrap_err();
    let message = problem(&e, "GATEWAY_AUTH_HS_SECRT");
    assert!(
        message.contains("did you mean GATEWAY_AUTH_HS_SECRET"),
        "{e}"
    );
    assert!(
        !e.to_string().contains(SECRET),
        "values are never echoed: {e}"
    );
    assert_eq!(e.problems.len(), 1, "{e}");
}

#[test]
fn bad_values_are_named_with_their_key_and_origin() {
    let e = load_file(
        &format!("[auth]\nhs_secret = \"{SECRET}\"\n[server]\ndrain_seconds = \"ten\"\n"),
        &[
            ("GATEWAY_WEBSOCKET_HEARTBEAT_SECONDS", "soon"),
            ("GATEWAY_SERVER_FD_RESERVE", "-1"),
        ],
    )
    .unwrap_err();
    assert!(
        problem(&e, "server.drain_seconds").contains("the config file"),
        "{e}"
    );
    let heartbeat = problem(&e, "websocket.heartbeat_seconds");
    assert!(
        heartbeat.contains("GATEWAY_WEBSOCKET_HEARTBEAT_SECONDS"),
        "{e}"
    );
    assert!(heartbeat.contains("integer"), "{e}");
    assert!(
        problem(&e, "server.fd_reserve").contains("GATEWAY_SERVER_FD_RESERVE"),
        "{e}"
    );
}

#[test]
fn a_range_problem_reads_as_documented() {
    let e = load_file(
        "[websocket]\nmax_frame_bytes = 5\n",
        &[("GATEWAY_AUTH_HS_SECRET", SECRET)],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "websocket.max_frame_bytes: must be between 128 and 16777216 (got 5)"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = load_file(
        "[server]\nlisten = \"not an address\"\ndrain_seconds = 99999\n\
         [websocket]\nheartbeat_seconds = 30\nheartbeat_timeout_seconds = 30\n\
         outbox_max_frames = 0\noutbox_max_bytes = 10\n\
         [broker]\nkind = \"kafka\"\n[broker.redis]\npubsub = \"loud\"\n\
         [auth]\nalgorithms = [\"HS256\", \"none\"]\n[api]\nkeys = [\"\"]\n",
        &[],
    )
    .unwrap_err();
    for key in [
        "server.listen",
        "server.drain_seconds",
        "websocket.heartbeat_timeout_seconds",
        "websocket.outbox_max_frames",
        "websocket.outbox_max_bytes",
        "broker.kind",
        "broker.redis.pubsub",
        "auth.algorithms",
        "auth.hs_secret",
        "api.keys",
    ] {
        problem(&e, key);
    }
    // One line per problem, each starting with its key.
    let text = e.to_string();
    assert_eq!(text.lines().count(), e.problems.len());
    for (line, p) in text.lines().zip(&e.problems) {
        assert!(line.starts_with(&format!("{}: ", p.key)), "{line}");
    }
}

#[test]
fn redis_needs_host_port_nodes() {
    let e = load_file(
        "[broker]\nkind = \"redis\"\n[broker.redis]\nnodes = [\"10.0.0.5\"]\n",
        &[("GATEWAY_AUTH_HS_SECRET", SECRET)],
    )
    .unwrap_err();
    assert!(
        problem(&e, "broker.redis.nodes").contains("host:port"),
        "{e}"
    );
    let e = load_file(
        "",
        &[
            ("GATEWAY_AUTH_HS_SECRET", SECRET),
            ("GATEWAY_BROKER_KIND", "redis"),
            ("GATEWAY_BROKER_REDIS_NODES", ""),
        ],
    )
    .unwrap_err();
    assert!(
        problem(&e, "broker.redis.nodes").contains("at least one"),
        "{e}"
    );
}

#[test]
fn missing_key_material_says_how_to_provide_it() {
    let e = load_file("", &[]).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(
        problem(&e, "auth.hs_secret").contains(
            "set auth.hs_secret in the config file, GATEWAY_AUTH_HS_SECRET in the environment, \
             or auth.hs_secret_file"
        ),
        "{e}"
    );

    let e = load_file("[auth]\nalgorithms = [\"RS256\"]\n", &[]).unwrap_err();
    assert!(
        problem(&e, "auth.public_key_file").contains("auth.jwks_file"),
        "{e}"
    );
    // Key files are read by the check itself, as `serve` would read them.
    let e = load_file(
        "[auth]\nalgorithms = [\"RS256\"]\njwks_file = \"keys.json\"\n",
        &[],
    )
    .unwrap_err();
    assert!(
        problem(&e, "auth.jwks_file").contains("cannot read keys.json"),
        "{e}"
    );

    let e = load_file("", &[("GATEWAY_AUTH_HS_SECRET", "short")]).unwrap_err();
    let message = problem(&e, "auth.hs_secret");
    assert!(message.contains("at least 32 bytes"), "{e}");
    assert!(
        message.contains("GATEWAY_AUTH_HS_SECRET"),
        "names where the value came from: {e}"
    );

    let e = load_file(
        &format!("[auth]\nhs_secret = \"{SECRET}\"\nhs_secret_file = \"/run/secret\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(
        problem(&e, "auth.hs_secret_file").contains("only one"),
        "{e}"
    );
}

#[test]
fn a_broken_file_is_named_with_its_position() {
    let file = TempFile::new("[server]\nlisten = = 1\n");
    let e = check(&LoadOptions {
        file: Some(file.0.clone()),
        ..LoadOptions::default()
    })
    .unwrap_err();
    let expected_key = format!("{}:2:", file.0.display());
    assert!(e.problems[0].key.starts_with(&expected_key), "{e}");
    assert_eq!(
        e.problems.len(),
        1,
        "no noise about defaults the file may have set: {e}"
    );

    let missing = std::env::temp_dir().join("gateway-config-test-does-not-exist.toml");
    let e = check(&LoadOptions {
        file: Some(missing.clone()),
        ..LoadOptions::default()
    })
    .unwrap_err();
    assert_eq!(e.problems[0].key, missing.display().to_string());
}

#[test]
fn the_development_secret_loads_with_a_warning() {
    let loaded = load_file("", &[("GATEWAY_AUTH_HS_SECRET", DEV_HS_SECRET)]).unwrap();
    assert_eq!(
        loaded.warnings,
        [
            "auth.hs_secret is the repository's DEVELOPMENT secret: anyone can mint tokens; \
          set GATEWAY_AUTH_HS_SECRET in production"
        ]
    );
}

#[test]
fn the_repository_gateway_toml_equals_the_defaults_but_for_the_dev_secret() {
    let loaded = check(&LoadOptions {
        file: Some(repo_gateway_toml()),
        ..LoadOptions::default()
    })
    .unwrap();
    let mut expected = Config::default();
    expected.auth.hs_secret = DEV_HS_SECRET.into();
    assert_eq!(loaded.config, expected);
    assert_eq!(loaded.warnings.len(), 1);

    // Equal values could hide an omitted key (it would default); the raw file
    // must spell out every section and key of the tree.
    let text = std::fs::read_to_string(repo_gateway_toml()).unwrap();
    let raw: toml::Table = text.parse().unwrap();
    assert_eq!(raw, toml::Table::try_from(&expected).unwrap());
    assert!(text.contains("DEVELOPMENT ONLY"));
}
