//! The loopback guard as a user meets it: a plan naming any address off the
//! loopback range is refused, for every kind of address, unless the run
//! explicitly allows remote targets.

use gateway_loadtest::scenario::{Plan, PublishVia, Scenario, Settings};

fn settings() -> Settings {
    Settings {
        secret: Some("s".into()),
        api_key: Some("k".into()),
        ..Settings::default()
    }
}

fn problems(s: Settings, allow_remote: bool) -> Vec<String> {
    match Plan::build(Some(Scenario::Fanout), s, allow_remote, &|_| None) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems,
    }
}

#[test]
fn loopback_everything_is_accepted() {
    let s = Settings {
        targets: Some(vec![
            "ws://127.0.0.1:8080/ws".into(),
            "ws://localhost:8081/ws".into(),
            "ws://[::1]:8082/ws".into(),
        ]),
        publish_url: Some("http://127.0.0.2:8080".into()),
        ..settings()
    };
    assert_eq!(problems(s, false), Vec::<String>::new());
    let s = Settings {
        redis: Some(vec!["127.0.0.1:7000".into()]),
        source_ips: Some(vec!["127.0.0.9".into()]),
        ..settings()
    };
    assert_eq!(problems(s, false), Vec::<String>::new());
}

#[test]
fn each_kind_of_remote_address_is_refused() {
    let cases: Vec<(&str, Settings)> = vec![
        (
            "target",
            Settings {
                targets: Some(vec!["ws://10.1.2.3:8080/ws".into()]),
                ..settings()
            },
        ),
        (
            "target",
            Settings {
                targets: Some(vec!["ws://gateway.example.com/ws".into()]),
                ..settings()
            },
        ),
        (
            "publish_url",
            Settings {
                publish_url: Some("http://192.168.0.10:8080".into()),
                ..settings()
            },
        ),
        (
            "redis",
            Settings {
                publish_via: Some(PublishVia::Redis),
                redis: Some(vec!["172.16.0.5:7000".into()]),
                ..settings()
            },
        ),
        (
            "source_ips",
            Settings {
                source_ips: Some(vec!["10.0.0.2".into()]),
                ..settings()
            },
        ),
    ];
    for (key, s) in cases {
        let p = problems(s, false);
        assert!(
            p.iter()
                .any(|m| m.starts_with(key) && m.contains("--allow-remote")),
            "{key} should be refused: {p:?}"
        );
    }
}

#[test]
fn allow_remote_lifts_the_guard_for_ip_literals() {
    let s = Settings {
        targets: Some(vec!["ws://10.1.2.3:8080/ws".into()]),
        publish_url: Some("http://10.1.2.3:8080".into()),
        ..settings()
    };
    assert_eq!(problems(s, true), Vec::<String>::new());
}

#[test]
fn a_scenario_file_cannot_allow_remote_targets() {
    let err = Settings::from_toml("allow_remote = true").unwrap_err();
    assert!(err.contains("allow_remote"), "{err}");
}
