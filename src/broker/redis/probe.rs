//! Liveness: every subscriber connection subscribes to a probe channel of its
//! own (on a slot its master owns), and the prober publishes a timestamp to
//! it every `probe_interval_ms` through that same connection. A probe that
//! comes back proves the connection still receives, and its age feeds
//! `gateway_broker_inbound_lag_seconds`; one silent for `probe_timeout_ms`
//! gets the connection rebuilt. The broker is Up only while every master it
//! needs has a connection whose probe is fresh: an open socket that no longer
//! delivers is reported, not trusted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shared::{Event, Shared};
use super::topology::Addr;

/// Probe state of one subscriber connection, shared with its reader.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// When the probe channel was confirmed (ns on the broker's clock; 0 = not subscribed).
    subscribed_at: AtomicU64,
    /// When a probe last came back (ns; 0 = never).
    last_seen: AtomicU64,
}

impl Health {
    /// The probe channel is live as of `now`.
    pub(super) fn subscribed(&self, now: u64) {
        self.subscribed_at.store(now, Ordering::Release);
    }

    /// The probe subscription is gone (connection lost or rebuilt).
    pub(super) fn unsubscribed(&self) {
        self.subscribed_at.store(0, Ordering::Release);
    }

    /// Whether the probe channel is subscribed.
    pub(super) fn is_subscribed(&self) -> bool {
        self.subscribed_at.load(Ordering::Acquire) != 0
    }

    /// A probe came back at `now`.
    pub(super) fn seen(&self, now: u64) {
        self.last_seen.store(now, Ordering::Release);
    }

    /// A probe came back since the subscription and within `timeout`.
    fn fresh(&self, now: u64, timeout: u64) -> bool {
        let (since, seen) = (
            self.subscribed_at.load(Ordering::Acquire),
            self.last_seen.load(Ordering::Acquire),
        );
        since != 0 && seen >= since && now.saturating_sub(seen) <= timeout
    }

    /// Subscribed, yet nothing came back for longer than `timeout`.
    fn quiet(&self, now: u64, timeout: u64) -> bool {
        let (since, seen) = (
            self.subscribed_at.load(Ordering::Acquire),
            self.last_seen.load(Ordering::Acquire),
        );
        since != 0 && now.saturating_sub(since.max(seen)) > timeout
    }
}

/// What the prober and the state computation see of one connection.
#[derive(Clone)]
pub(super) struct NodeView {
    /// The master.
    pub(super) addr: Addr,
    /// Which connection to that master (a rebuilt one gets a new number).
    pub(super) generation: u64,
    /// Its client.
    pub(super) client: Client,
    /// Its probe channel; `None` when no probe name hashes to its slots.
    pub(super) probe: Option<Str>,
    /// Its probe state.
    pub(super) health: Arc<Health>,
}

impl NodeView {
    fn healthy(&self, now: u64, timeout: u64) -> bool {
        match self.probe {
            Some(_) => self.health.fresh(now, timeout),
            None => self.client.is_connected(),
        }
    }
}

/// Every connection the broker needs, and whether it has all of them.
#[derive(Default, Clone)]
pub(super) struct Fleet {
    /// Subscriber connections.
    pub(super) nodes: Vec<NodeView>,
    /// Every master the broker needs has a connection (and the slot map is whole).
    pub(super) complete: bool,
}

impl Fleet {
    /// Up: complete, non-empty and every probe fresh.
    pub(super) fn is_up(&self, now: u64, timeout: u64) -> bool {
        self.complete
            && !self.nodes.is_empty()
            && self.nodes.iter().all(|n| n.healthy(now, timeout))
    }
}

fn publish_command(sharded: bool) -> CustomCommand {
    CustomCommand::new_static(
        if sharded { "SPUBLISH" } else { "PUBLISH" },
        ClusterHash::FirstKey,
        false,
    )
}

/// Publishes one probe (the send time, in ns on the broker's clock) without
/// waiting longer than `timeout`.
pub(super) fn send(
    shared: &Shared,
    client: Client,
    probe: Str,
    sharded: bool,
    now: u64,
    timeout: Duration,
) {
    shared.tasks.spawn(async move {
        let args: Vec<Value> = vec![probe.into(), Value::String(now.to_string().into())];
        let sent = tokio::time::timeout(
            timeout,
            client.custom::<Value, Value>(publish_command(sharded), args),
        )
        .await;
        if let Ok(Err(e)) = sent {
            tracing::debug!(error = %e, "redis probe publish failed");
        }
    });
}

/// Publishes probes, reports quiet connections to the reconciler and keeps
/// the broker state current.
pub(super) async fn run(
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) {
    let settings = shared.settings.clone();
    let timeout = settings.probe_timeout.as_nanos() as u64;
    let mut tick = tokio::time::interval(settings.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Vec<(Addr, u64)> = Vec::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let nodes = shared.fleet().nodes;
        let now = shared.now();
        for node in &nodes {
            if let Some(probe) = node.probe.as_ref().filter(|_| node.health.is_subscribed()) {
                send(
                    &shared,
                    node.client.clone(),
                    probe.clone(),
                    settings.sharded,
                    now,
                    settings.command_timeout,
                );
            }
            let key = (node.addr.clone(), node.generation);
            if node.health.quiet(now, timeout) && !reported.contains(&key) {
                tracing::warn!(node = %node.addr, "redis probe went quiet: rebuilding the subscriber connection");
                reported.push(key);
                let _ = events.send(Event::Quiet(node.addr.clone(), node.generation));
            }
        }
        reported.retain(|(addr, generation)| {
            nodes
                .iter()
                .any(|n| &n.addr == addr && n.generation == *generation)
        });
        shared.refresh_state();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_and_quiet_follow_the_probe_clock() {
        let h = Health::default();
        assert!(
            !h.fresh(10, 5) && !h.quiet(10, 5),
            "unsubscribed is neither"
        );
        h.subscribed(10);
        assert!(!h.fresh(11, 5), "no probe back yet");
        assert!(!h.quiet(15, 5));
        assert!(h.quiet(16, 5));
        h.seen(16);
        assert!(h.fresh(16, 5) && !h.quiet(16, 5));
        assert!(!h.fresh(22, 5) && h.quiet(22, 5));
        h.unsubscribed();
        assert!(!h.fresh(16, 5) && !h.quiet(100, 5));
    }
}
