//! Liveness: every subscriber connection subscribes to a probe channel of its
//! own (on a slot its master owns), and the prober publishes a timestamp to
//! it every `probe_interval_ms` through that same connection. A probe that
//! comes back proves the connection still receives, and its age feeds
//! `gateway_broker_inbound_lag_seconds`; one silent for `probe_timeout_ms`
//! gets the connection rebuilt. The broker is Up only while every master it
//! needs has a connection whose probe is fresh: an open socket that no longer
//! delivers is reported, not trusted.

use std::sync::Arc;
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shared::{Event, Shared};
use super::topology::Addr;

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
