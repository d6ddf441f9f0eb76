//! The Redis bridge (`broker.kind = "redis"`): many gateway nodes, one
//! fan-out. A node subscribes to `<prefix>room:<R>` while it has a local
//! subscriber of R, to `<prefix>user:<U>` while U has a socket on it, and to
//! `<prefix>broadcast` always; backends (and this node's HTTP and client
//! publishes) publish there, and every interested node delivers.
//!
//! Layout: `publisher.rs` (bounded queue, own fred client, timeouts),
//! `reconciler.rs` (one subscriber connection per master, readers, the
//! reconcile passes), `probe.rs` (liveness and Up/Down), `table.rs` (desired
//! vs live subscriptions), `topology.rs` (slot map), `names.rs`, `client.rs`.
//!
//! Modes: Redis Cluster with sharded pub/sub (SSUBSCRIBE/SPUBLISH, the
//! default: each channel lives on the master owning its slot), classic
//! (SUBSCRIBE/PUBLISH, one subscriber connection; for a single Redis or
//! Redis < 7), or a single Redis in either mode.
//!
//! Delivery guarantees, and their limit: a subscribe resolves only once Redis
//! confirmed the channel on the master that owns it, so an event published
//! after a client's `ok` is delivered. Events of one channel arrive over one
//! connection, in order. After a connection loss, a failover or a slot
//! migration the bridge re-establishes every subscription by itself (no
//! client action), but **events published while a channel's subscription
//! was down are lost**: Redis pub/sub keeps nothing. History and resume are
//! not part of this bridge. The gap is typically the cluster's own failover
//! time plus up to `reconcile_interval_ms`.
//!
//! Keys the gateway may later keep beside a channel (history, presence) should
//! use the hash tag `{<prefix>room:<R>}`, which hashes to the channel's own
//! slot, so one script can publish and write them atomically.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::bytes_utils::Str;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Broker, BrokerError, BrokerState, Inbound};
use crate::config::{BrokerConfig, RedisConfig};
use crate::metrics::Metrics;
use crate::protocol::Channel;

mod client;
mod names;
mod probe;
mod publisher;
mod reconciler;
mod table;
mod topology;

use names::Names;
use reconciler::Shared;
use topology::Addr;

/// A `[broker.redis]` value the bridge cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSetupError {
    /// The key, e.g. `broker.redis.tls_ca_file`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for RedisSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for RedisSetupError {}

/// `[broker.redis]`, validated and in the types the bridge uses.
struct Settings {
    nodes: Vec<Addr>,
    cluster: bool,
    sharded: bool,
    prefix: String,
    username: Option<String>,
    password: Option<String>,
    tls: Option<fred::types::config::TlsConfig>,
    connect_timeout: Duration,
    command_timeout: Duration,
    subscribe_timeout: Duration,
    publish_timeout: Duration,
    publish_queue: usize,
    inbound_buffer: usize,
    probe_interval: Duration,
    probe_timeout: Duration,
    reconcile_interval: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl Settings {
    fn from_config(c: &RedisConfig) -> Result<Settings, RedisSetupError> {
        let bad = |key: &str, message: String| RedisSetupError {
            key: format!("broker.redis.{key}"),
            message,
        };
        let nodes = c
            .nodes
            .iter()
            .map(|n| {
                Addr::parse(n)
                    .ok_or_else(|| bad("nodes", format!("entries must be host:port (got {n:?})")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(bad("nodes", "must list at least one host:port".into()));
        }
        let sharded = match c.pubsub.as_str() {
            "sharded" => true,
            "classic" => false,
            other => {
                return Err(bad(
                    "pubsub",
                    format!("must be \"sharded\" or \"classic\" (got {other:?})"),
                ));
            }
        };
        let ms = |key: &str, v: u64| -> Result<Duration, RedisSetupError> {
            if v == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
            Ok(Duration::from_millis(v))
        };
        let probe_interval = ms("probe_interval_ms", c.probe_interval_ms)?;
        let probe_timeout = ms("probe_timeout_ms", c.probe_timeout_ms)?;
        if probe_timeout <= probe_interval {
            return Err(bad(
                "probe_timeout_ms",
                format!(
                    "must be greater than broker.redis.probe_interval_ms ({})",
                    c.probe_interval_ms
                ),
            ));
        }
        let reconnect_min = ms("reconnect_min_ms", c.reconnect_min_ms)?;
        let reconnect_max = ms("reconnect_max_ms", c.reconnect_max_ms)?;
        if reconnect_max < reconnect_min {
            return Err(bad(
                "reconnect_max_ms",
                "must be at least broker.redis.reconnect_min_ms".into(),
            ));
        }
        if c.publish_queue == 0 {
            return Err(bad("publish_queue", "must be at least 1".into()));
        }
        if c.inbound_buffer < 16 {
            return Err(bad("inbound_buffer", "must be at least 16".into()));
        }
        let tls = match (c.tls, c.tls_ca_file.is_empty()) {
            (true, _) => {
                Some(client::tls_config(&c.tls_ca_file).map_err(|e| bad("tls_ca_file", e))?)
            }
            (false, true) => None,
            (false, false) => {
                return Err(bad(
                    "tls_ca_file",
                    "is set but broker.redis.tls is false".into(),
                ));
            }
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(Settings {
            nodes,
            cluster: c.cluster,
            sharded,
            prefix: c.prefix.clone(),
            username: non_empty(&c.username),
            password: non_empty(&c.password),
            tls,
            connect_timeout: ms("connect_timeout_ms", c.connect_timeout_ms)?,
            command_timeout: ms("command_timeout_ms", c.command_timeout_ms)?,
            subscribe_timeout: ms("subscribe_timeout_ms", c.subscribe_timeout_ms)?,
            publish_timeout: ms("publish_timeout_ms", c.publish_timeout_ms)?,
            publish_queue: c.publish_queue,
            inbound_buffer: c.inbound_buffer,
            probe_interval,
            probe_timeout,
            reconcile_interval: ms("reconcile_interval_ms", c.reconcile_interval_ms)?,
            reconnect_min,
            reconnect_max,
        })
    }
}

/// The Redis (Cluster) broker. Starts Down and connects in the background:
/// a Redis that is unreachable at start-up delays readiness, not start-up.
pub struct RedisBroker {
    shared: Arc<Shared>,
    publish: mpsc::Sender<publisher::Outgoing>,
    state: watch::Receiver<BrokerState>,
    broadcast: Str,
    cancel: CancellationToken,
}

impl RedisBroker {
    /// Validates `[broker.redis]`, spawns the publisher, the reconciler and
    /// the prober on the current runtime, and returns the broker with the
    /// queue of inbound publications (`broker.queue_capacity` deep).
    pub fn start(
        config: &BrokerConfig,
        metrics: Metrics,
    ) -> Result<(Arc<RedisBroker>, Inbound), RedisSetupError> {
        let settings = Arc::new(Settings::from_config(&config.redis)?);
        let names = Names::new(&settings.prefix);
        let cancel = CancellationToken::new();
        let publish = publisher::spawn(
            settings.clone(),
            names.clone(),
            metrics.clone(),
            cancel.clone(),
        )
        .map_err(|e| RedisSetupError {
            key: "broker.redis".into(),
            message: e.to_string(),
        })?;
        let (inbound_tx, inbound) = mpsc::channel(config.queue_capacity.max(1));
        let broadcast = names.channel(&Channel::Broadcast);
        let shared = Arc::new(Shared::new(settings, names, metrics, broadcast.clone()));
        let state = shared.state();
        reconciler::spawn(shared.clone(), inbound_tx, cancel.clone());
        Ok((
            Arc::new(RedisBroker {
                shared,
                publish,
                state,
                broadcast,
                cancel,
            }),
            inbound,
        ))
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Broker for RedisBroker {
    fn subscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if *channel == Channel::Broadcast {
                return Ok(());
            }
            let name = self.shared.names.channel(channel);
            let live = self.shared.table().want(name.clone());
            self.shared.wake();
            match tokio::time::timeout(self.shared.settings.subscribe_timeout, live).await {
                Ok(Ok(())) => Ok(()),
                _ => {
                    // The hub rolls its side back; roll ours back too, or a
                    // late confirmation would leave a subscription nobody wants.
                    self.shared.table().unwant(&name);
                    self.shared.wake();
                    Err(if *self.state.borrow() == BrokerState::Up {
                        BrokerError::Timeout
                    } else {
                        BrokerError::Unavailable
                    })
                }
            }
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        // The reconciler sends the SUNSUBSCRIBE; a message arriving meanwhile
        // finds no local subscriber and is dropped by the hub.
        if *channel != Channel::Broadcast {
            self.shared
                .table()
                .unwant(&self.shared.names.channel(channel));
            self.shared.wake();
        }
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, channel: Channel, payload: Bytes) -> Result<(), BrokerError> {
        self.publish
            .try_send((channel, payload))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BrokerError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => BrokerError::Unavailable,
            })
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.clone()
    }

    /// Room and user channels live on Redis (broadcast, always subscribed,
    /// and the probe channels are not counted).
    fn subscription_count(&self) -> usize {
        self.shared.table().live_count(&self.broadcast)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        assert!(Settings::from_config(&RedisConfig::default()).is_ok());
        type Edit = fn(&mut RedisConfig);
        let cases: [(&str, Edit); 6] = [
            ("broker.redis.nodes", |c| c.nodes = vec!["nohost".into()]),
            ("broker.redis.pubsub", |c| c.pubsub = "fancy".into()),
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
        ];
        for (key, edit) in cases {
            let mut c = RedisConfig::default();
            edit(&mut c);
            match Settings::from_config(&c) {
                Err(e) => assert_eq!(e.key, key),
                Ok(_) => panic!("{key} accepted"),
            }
        }
        let mut c = RedisConfig {
            tls: true,
            tls_ca_file: "/nonexistent.pem".into(),
            ..RedisConfig::default()
        };
        assert!(
            Settings::from_config(&c)
                .err()
                .unwrap()
                .message
                .contains("cannot read")
        );
        c.tls_ca_file = String::new();
        c.tls = false;
        assert!(Settings::from_config(&c).is_ok());
    }
}
