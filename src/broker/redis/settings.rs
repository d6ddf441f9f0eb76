//! `[broker.redis]`, validated once into the types the bridge uses. Every
//! problem is reported with its key, all at once, and the same function runs
//! for `gateway check-config` and `gateway serve`, so the two never disagree.

use std::time::Duration;

use super::client;
use super::topology::Addr;
use crate::config::{Problem, PubSub, RedisConfig};

/// `[broker.redis]`, validated and in the types the bridge uses.
pub struct RedisSettings {
    pub(super) nodes: Vec<Addr>,
    pub(super) cluster: bool,
    pub(super) sharded: bool,
    pub(super) prefix: String,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) tls: Option<fred::types::config::TlsConfig>,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    pub(super) subscribe_timeout: Duration,
    pub(super) publish_timeout: Duration,
    pub(super) publish_queue: usize,
    pub(super) inbound_buffer: usize,
    pub(super) probe_interval: Duration,
    pub(super) probe_timeout: Duration,
    pub(super) reconcile_interval: Duration,
    pub(super) reconnect_min: Duration,
    pub(super) reconnect_max: Duration,
}

impl std::fmt::Debug for RedisSettings {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("nodes", &self.nodes)
            .field("cluster", &self.cluster)
            .field("sharded", &self.sharded)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Validates `[broker.redis]`; `Err` holds every problem found.
    pub fn from_config(c: &RedisConfig) -> Result<RedisSettings, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(Problem::new(format!("broker.redis.{key}"), message));
        };
        let mut nodes = Vec::new();
        for n in &c.nodes {
            match Addr::parse(n) {
                Some(addr) => nodes.push(addr),
                None => bad(
                    "nodes",
                    format!("entries must be host:port with a port of 1-65535 (got {n:?})"),
                ),
            }
        }
        if c.nodes.is_empty() {
            bad("nodes", "must list at least one host:port".into());
        }
        let mut ms = |key: &str, v: u64| -> Duration {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
            Duration::from_millis(v)
        };
        let connect_timeout = ms("connect_timeout_ms", c.connect_timeout_ms);
        let command_timeout = ms("command_timeout_ms", c.command_timeout_ms);
        let subscribe_timeout = ms("subscribe_timeout_ms", c.subscribe_timeout_ms);
        let publish_timeout = ms("publish_timeout_ms", c.publish_timeout_ms);
        let probe_interval = ms("probe_interval_ms", c.probe_interval_ms);
        let probe_timeout = ms("probe_timeout_ms", c.probe_timeout_ms);
        let reconcile_interval = ms("reconcile_interval_ms", c.reconcile_interval_ms);
        let reconnect_min = ms("reconnect_min_ms", c.reconnect_min_ms);
        let reconnect_max = ms("reconnect_max_ms", c.reconnect_max_ms);
        if c.probe_interval_ms > 0 && probe_timeout <= probe_interval {
            bad(
                "probe_timeout_ms",
                format!(
                    "must be greater than broker.redis.probe_interval_ms ({})",
                    c.probe_interval_ms
                ),
            );
        }
        if c.reconnect_min_ms > 0 && reconnect_max < reconnect_min {
            bad(
                "reconnect_max_ms",
                "must be at least broker.redis.reconnect_min_ms".into(),
            );
        }
        if c.publish_queue == 0 {
            bad("publish_queue", "must be at least 1".into());
        }
        if c.inbound_buffer < 16 {
            bad("inbound_buffer", "must be at least 16".into());
        }
        if c.prefix.contains(['{', '}']) {
            bad(
                "prefix",
                "must not contain `{` or `}` (a hash tag in the prefix would put every channel in one cluster slot)".into(),
            );
        }
        let tls = match (c.tls, c.tls_ca_file.is_empty()) {
            (true, _) => match client::tls_config(&c.tls_ca_file) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    bad("tls_ca_file", e);
                    None
                }
            },
            (false, true) => None,
            (false, false) => {
                bad("tls_ca_file", "is set but broker.redis.tls is false".into());
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(RedisSettings {
            nodes,
            cluster: c.cluster,
            sharded: c.pubsub == PubSub::Sharded,
            prefix: c.prefix.clone(),
            username: non_empty(&c.username),
            password: non_empty(&c.password),
            tls,
            connect_timeout,
            command_timeout,
            subscribe_timeout,
            publish_timeout,
            publish_queue: c.publish_queue,
            inbound_buffer: c.inbound_buffer,
            probe_interval,
            probe_timeout,
            reconcile_interval,
            reconnect_min,
            reconnect_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &RedisConfig) -> Vec<String> {
        match RedisSettings::from_config(c) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.into_iter().map(|p| p.key).collect(),
        }
    }

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        assert!(RedisSettings::from_config(&RedisConfig::default()).is_ok());
        type Edit = fn(&mut RedisConfig);
        let cases: [(&str, Edit); 7] = [
            ("broker.redis.nodes", |c| c.nodes = vec!["nohost".into()]),
            ("broker.redis.probe_timeout_ms", |c| {
                c.probe_timeout_ms = c.probe_interval_ms
            }),
            ("broker.redis.command_timeout_ms", |c| {
                c.command_timeout_ms = 0
            }),
            ("broker.redis.tls_ca_file", |c| {
                c.tls_ca_file = "/nonexistent.pem".into()
            }),
            ("broker.redis.reconnect_max_ms", |c| c.reconnect_max_ms = 1),
            ("broker.redis.prefix", |c| c.prefix = "{gw}:".into()),
            ("broker.redis.inbound_buffer", |c| c.inbound_buffer = 1),
        ];
        for (key, edit) in cases {
            let mut c = RedisConfig::default();
            edit(&mut c);
            assert_eq!(keys(&c), [key], "{key}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = RedisConfig {
            nodes: vec!["a".into(), "b:0".into()],
            command_timeout_ms: 0,
            publish_queue: 0,
            tls: true,
            tls_ca_file: "/nonexistent.pem".into(),
            ..RedisConfig::default()
        };
        assert_eq!(
            keys(&c),
            [
                "broker.redis.nodes",
                "broker.redis.nodes",
                "broker.redis.command_timeout_ms",
                "broker.redis.publish_queue",
                "broker.redis.tls_ca_file"
            ]
        );
        let Err(problems) = RedisSettings::from_config(&c) else {
            unreachable!()
        };
        assert!(problems[4].message.contains("cannot read"));
    }
}
