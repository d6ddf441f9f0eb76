//! Scenario files and flags: parsing, precedence, defaults, and validation
//! that reports every problem at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway_loadtest::dur::Dur;
use gateway_loadtest::scenario::{
    Codec, Plan, PublishTarget, PublishVia, RedisCommand, RedisMode, Scenario, Settings, TokenIn,
};

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// Settings with no key material. Tests run in `loadtest/`, which holds no
/// gateway.toml, so none is picked up.
fn no_config() -> Settings {
    Settings::default()
}

const FILE: &str = r#"
scenario = "fanout"
name = "fanout-1k"
targets = ["ws://127.0.0.1:8080/ws", "127.0.0.1:8081"]
sockets = 1000
rooms = 1
connect_rate = 500
concurrency = 100
duration = "30s"
grace = 3
codec = "msgpack"
token_in = "query"
secret = "a-development-secret-of-at-least-32-bytes"
rate_steps = [1, 10, 100]
step_duration = "5s"
publish_via = "redis"
redis = ["127.0.0.1:7000", "127.0.0.1:7001"]
redis_mode = "sharded"
payload_bytes = 64
out = "results/fanout-1k"
"#;

#[test]
fn a_full_scenario_file_becomes_a_plan() {
    let settings = no_config().overlay(Settings::from_toml(FILE).unwrap());
    let plan = Plan::build(None, settings, false, &env(&[])).unwrap();
    assert_eq!(plan.scenario, Scenario::Fanout);
    assert_eq!(plan.name, "fanout-1k");
    assert_eq!(plan.targets.len(), 2);
    assert_eq!(plan.targets[1].url, "ws://127.0.0.1:8081/ws");
    assert_eq!((plan.sockets, plan.rooms, plan.users), (1000, 1, 1000));
    assert_eq!((plan.connect_rate, plan.concurrency), (500.0, 100));
    assert_eq!(
        (plan.codec, plan.token_in),
        (Codec::Msgpack, TokenIn::Query)
    );
    assert_eq!(plan.grace, Duration::from_secs(3));
    // Stepped publishing replaces the plain duration: 3 steps of 5 s.
    assert_eq!(plan.duration, Duration::from_secs(15));
    let p = plan.publish.as_ref().unwrap();
    assert_eq!(
        (p.via, p.target, p.redis_mode),
        (PublishVia::Redis, PublishTarget::Rooms, RedisMode::Sharded)
    );
    assert_eq!(p.steps, vec![1.0, 10.0, 100.0]);
    assert_eq!(p.step_duration, Duration::from_secs(5));
    assert_eq!(p.redis.len(), 2);
    assert_eq!(p.payload_bytes, 64);
    assert_eq!(
        plan.auth.secret.as_deref(),
        Some("a-development-secret-of-at-least-32-bytes")
    );
    assert_eq!(plan.out_dir, PathBuf::from("results/fanout-1k"));
    assert_eq!(plan.workers, 1);
    assert!(
        plan.source_ips.is_empty(),
        "1,000 sockets need no extra source address"
    );
    assert!(plan.max_runtime >= plan.duration + plan.grace);
}

#[test]
fn flags_override_the_file() {
    let file = Settings::from_toml(FILE).unwrap();
    let flags = Settings {
        sockets: Some(50),
        duration: Some(Dur(Duration::from_secs(2))),
        ..Settings::default()
    };
    let merged = no_config().overlay(file).overlay(flags);
    assert_eq!(merged.sockets, Some(50));
    assert_eq!(merged.rooms, Some(1), "untouched file values stay");
    assert_eq!(merged.duration, Some(Dur(Duration::from_secs(2))));
}

#[test]
fn unknown_keys_and_bad_values_are_rejected_by_name() {
    let err = Settings::from_toml("socket = 5").unwrap_err();
    assert!(err.contains("socket"), "{err}");
    let err = Settings::from_toml("duration = \"5 parsecs\"").unwrap_err();
    assert!(err.contains("duration"), "{err}");
    let err = Settings::from_toml("codec = \"xml\"").unwrap_err();
    assert!(err.contains("codec"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let s = Settings {
        sockets: Some(0),
        slow_share: Some(2.0),
        payload_bytes: Some(1 << 30),
        name: Some("bad name!".into()),
        ..no_config()
    };
    let err = Plan::build(Some(Scenario::Fanout), s, false, &env(&[])).unwrap_err();
    let text = err.to_string();
    for key in [
        "sockets",
        "slow_share",
        "payload_bytes",
        "name",
        "secret",
        "api_key",
    ] {
        assert!(
            err.problems.iter().any(|p| p.starts_with(key)),
            "missing {key} in:\n{text}"
        );
    }
}

#[test]
fn the_scenario_comes_from_the_command_or_the_file_but_must_agree() {
    let base = || Settings {
        secret: Some("s".into()),
        ..no_config()
    };
    let err = Plan::build(None, base(), false, &env(&[])).unwrap_err();
    assert!(err.problems[0].starts_with("scenario"));
    let file = Settings {
        scenario: Some(Scenario::Broadcast),
        ..base()
    };
    let err = Plan::build(Some(Scenario::Connect), file.clone(), false, &env(&[])).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.contains("broadcast") && p.contains("connect"))
    );
    let plan = Plan::build(None, file, false, &env(&[("LOADTEST_API_KEY", "k")])).unwrap();
    assert_eq!(plan.scenario, Scenario::Broadcast);
    assert_eq!(plan.publish.unwrap().target, PublishTarget::Broadcast);
}

#[test]
fn scenario_defaults_differ_where_they_should() {
    let e = env(&[
        ("GATEWAY_AUTH_HS_SECRET", "from-env"),
        ("GATEWAY_API_KEYS", "k1,k2"),
    ]);
    let connect = Plan::build(Some(Scenario::Connect), no_config(), false, &e).unwrap();
    assert!(
        connect.publish.is_none(),
        "connect does not publish by default"
    );
    assert_eq!(connect.rooms, 1);
    assert!(connect.auth.source.contains("GATEWAY_AUTH_HS_SECRET"));

    let users = Plan::build(Some(Scenario::Users), no_config(), false, &e).unwrap();
    let p = users.publish.as_ref().unwrap();
    assert_eq!(p.target, PublishTarget::Users);
    assert_eq!(p.api_key, "k1", "first of GATEWAY_API_KEYS");
    assert_eq!(users.publish_channels(None).len(), 1000);
    assert_eq!(users.publish_channels(None)[7], "user:lt-user-7");

    let churn = Plan::build(Some(Scenario::Churn), no_config(), false, &e).unwrap();
    assert!(churn.churn.is_some());
    let slow = Plan::build(Some(Scenario::Slow), no_config(), false, &e).unwrap();
    assert!(slow.slow_share > 0.0);
    let slow_count = (0..1000).filter(|&i| slow.socket_is_slow(i)).count();
    assert_eq!(slow_count, 100, "10% of every 1,000 sockets");
}

#[test]
fn big_runs_get_workers_and_source_addresses() {
    let s = Settings {
        sockets: Some(100_000),
        secret: Some("s".into()),
        ..no_config()
    };
    let plan = Plan::build(Some(Scenario::Connect), s, false, &env(&[])).unwrap();
    assert!(
        plan.workers >= 6,
        "100k sockets need >= 6 workers of 18k, got {}",
        plan.workers
    );
    assert_eq!(plan.source_ips.len(), 20);
    assert_eq!(plan.source_ips[19], "127.0.0.20".parse::<IpAddr>().unwrap());

    let s = Settings {
        sockets: Some(100_000),
        workers: Some(2),
        secret: Some("s".into()),
        ..no_config()
    };
    let err = Plan::build(Some(Scenario::Connect), s, false, &env(&[])).unwrap_err();
    assert!(
        err.problems.iter().any(|p| p.starts_with("workers")),
        "{err}"
    );
}

#[test]
fn keys_can_come_from_a_gateway_config_file() {
    let dir = std::env::temp_dir().join(format!("lt-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        "[auth]\nhs_secret = \"cfg-secret\"\n[api]\nkeys = [\"cfg-key\"]\n",
    )
    .unwrap();
    let s = Settings {
        gateway_config: Some(path),
        ..Settings::default()
    };
    let plan = Plan::build(Some(Scenario::Fanout), s, false, &env(&[])).unwrap();
    assert_eq!(plan.auth.secret.as_deref(), Some("cfg-secret"));
    assert_eq!(plan.publish.as_ref().unwrap().api_key, "cfg-key");
    // Secrets never reach the serialised plan (the report and the workers' plan).
    let json = serde_json::to_string(&plan).unwrap();
    assert!(
        !json.contains("cfg-secret") && !json.contains("cfg-key"),
        "{json}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_tokens_file_replaces_the_secret() {
    let s = Settings {
        tokens_file: Some(PathBuf::from("/nonexistent/tokens.txt")),
        ..no_config()
    };
    let err = Plan::build(Some(Scenario::Connect), s, false, &env(&[])).unwrap_err();
    assert!(err.problems.iter().any(|p| p.starts_with("tokens_file")));
    assert!(!err.problems.iter().any(|p| p.starts_with("secret")));
}

#[test]
fn resume_mode_and_the_publish_command_come_from_flags_or_files() {
    let file = Settings::from_toml(
        r#"
scenario = "fanout"
secret = "s"
resume = true
reconnect = false
reconnect_min = "100ms"
publish_via = "fcall"
redis = ["127.0.0.1:7000"]
"#,
    )
    .unwrap();
    let plan = Plan::build(None, no_config().overlay(file), false, &env(&[])).unwrap();
    let r = plan.resume.as_ref().expect("resume plan");
    assert!(!r.reconnect);
    assert_eq!(r.backoff_min, Duration::from_millis(100));
    assert_eq!(r.backoff_max, Duration::from_secs(2));
    let p = plan.publish.as_ref().unwrap();
    assert_eq!(
        (p.via, p.redis_command, p.redis_mode),
        (PublishVia::Redis, RedisCommand::Fcall, RedisMode::Sharded)
    );

    // `--resume` alone on the command line means true; publish/spublish imply the mode.
    use clap::Parser;
    let cli = gateway_loadtest::cli::Cli::try_parse_from([
        "gateway-loadtest",
        "fanout",
        "--resume",
        "--publish-via",
        "publish",
        "--redis",
        "127.0.0.1:7000",
        "--secret",
        "s",
    ])
    .unwrap();
    let gateway_loadtest::cli::Cmd::Fanout(args) = cli.command else {
        panic!("fanout expected")
    };
    assert_eq!(args.settings.resume, Some(true));
    let plan = Plan::build(Some(Scenario::Fanout), args.settings, false, &env(&[])).unwrap();
    assert!(plan.resume.as_ref().is_some_and(|r| r.reconnect));
    let p = plan.publish.unwrap();
    assert_eq!(
        (p.redis_command, p.redis_mode),
        (RedisCommand::Publish, RedisMode::Classic)
    );

    // Contradictions and resume-only keys without resume are named.
    let bad = Settings {
        secret: Some("s".into()),
        publish_via: Some(PublishVia::Spublish),
        redis_mode: Some(RedisMode::Classic),
        redis: Some(vec!["127.0.0.1:7000".into()]),
        reconnect: Some(false),
        reconnect_max: Some(Dur(Duration::from_secs(1))),
        ..Settings::default()
    };
    let err = Plan::build(Some(Scenario::Fanout), bad, false, &env(&[])).unwrap_err();
    let all = err.problems.join("\n");
    assert!(all.contains("redis_mode"), "{all}");
    assert!(all.contains("reconnect: only applies with resume"), "{all}");
    assert!(
        all.contains("reconnect_max: only applies with resume"),
        "{all}"
    );
    let tight = Settings {
        secret: Some("s".into()),
        resume: Some(true),
        reconnect_min: Some(Dur(Duration::from_secs(3))),
        reconnect_max: Some(Dur(Duration::from_secs(1))),
        ..Settings::default()
    };
    let err = Plan::build(Some(Scenario::Connect), tight, false, &env(&[])).unwrap_err();
    assert!(
        err.problems.iter().any(|p| p.starts_with("reconnect_max")),
        "{:?}",
        err.problems
    );
}

#[test]
fn shipped_scenario_files_are_valid_plans() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let e = env(&[("LOADTEST_SECRET", "s"), ("LOADTEST_API_KEY", "k")]);
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let settings = Settings::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let plan = Plan::build(None, no_config().overlay(settings), false, &e)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert!(
            plan.max_runtime < Duration::from_secs(3600),
            "{} is not bounded",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 6, "expected one file per scenario, found {seen}");
}
