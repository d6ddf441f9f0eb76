//! The publish path: a bounded queue served by one task and one fred client
//! of its own, so `Broker::publish` never waits for Redis and a stalled
//! cluster (a master failing over stalls fred's cluster client for every
//! shard for seconds) never stalls the subscriber side or a socket.
//!
//! The task drains the queue in batches, sends each as one pipeline and waits
//! at most `publish_timeout_ms` for it. Batches go out one after another, in
//! queue order, so events of one channel keep their order.

use std::sync::Arc;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RedisSettings;
use super::names::Names;
use super::shared::Shared;
use crate::metrics::Metrics;
use crate::protocol::Channel;

/// Most publications sent in one pipeline.
const BATCH: usize = 512;

/// A queued publication.
pub(super) type Outgoing = (Channel, Bytes);

/// Starts the publisher task; returns the sending side of its queue.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    cancel: CancellationToken,
) -> Result<mpsc::Sender<Outgoing>, fred::error::Error> {
    let settings = shared.settings.clone();
    let (names, metrics) = (shared.names.clone(), shared.metrics.clone());
    let client = super::client::publisher(&settings)?;
    let (tx, rx) = mpsc::channel(settings.publish_queue);
    shared.tasks.spawn(async move {
        let connection = client.connect();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = run(&client, rx, &settings, &names, &metrics) => {}
        }
        let _ = client.quit().await;
        connection.abort();
    });
    Ok(tx)
}

async fn run(
    client: &Client,
    mut rx: mpsc::Receiver<Outgoing>,
    settings: &RedisSettings,
    names: &Names,
    metrics: &Metrics,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let sent = batch.len();
        let pipeline = client.pipeline();
        for (channel, payload) in batch.drain(..) {
            let name = names.channel(&channel);
            // Queuing into a pipeline only buffers the command locally.
            let queued: Result<(), _> = if settings.sharded {
                pipeline.spublish(name, Value::Bytes(payload)).await
            } else {
                pipeline.publish(name, Value::Bytes(payload)).await
            };
            if let Err(e) = queued {
                tracing::debug!(error = %e, "publish not queued");
            }
        }
        let failed = match tokio::time::timeout(
            settings.publish_timeout,
            pipeline.try_all::<Value>(),
        )
        .await
        {
            Ok(results) => {
                let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
                if let Some(e) = failed.first() {
                    tracing::warn!(error = %e, failed = failed.len(), sent, "redis publish failed");
                }
                failed.len()
            }
            Err(_) => {
                tracing::warn!(
                    sent,
                    timeout_ms = settings.publish_timeout.as_millis() as u64,
                    "redis publish timed out"
                );
                sent
            }
        };
        metrics.broker_publish_errors.inc_by(failed as u64);
    }
}
