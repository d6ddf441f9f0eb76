//! The publish path: a bounded queue served by one task and one fred client
//! of its own, so `Broker::publish` never waits for Redis and a stalled
//! cluster (a master failing over stalls fred's cluster client for every
//! shard for seconds) never stalls the subscriber side or a socket.
//!
//! The task drains the queue in batches, sends each as one pipeline and waits
//! at most `publish_timeout_ms` for it. Batches go out one after another, in
//! queue order, so events of one channel keep their order.
//!
//! A publication to a channel with history goes out as `FCALL gw_publish`
//! and carries a reply slot: its caller learns the offset once Redis stored
//! it (or the error). One without history is a plain (S)PUBLISH, answered
//! when queued.

use std::sync::Arc;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, FunctionInterface, PubsubInterface};
use fred::types::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::RedisSettings;
use super::names::Names;
use super::shared::Shared;
use crate::broker::{BrokerError, Published};
use crate::metrics::Metrics;
use crate::protocol::Channel;

/// Most publications sent in one pipeline.
const BATCH: usize = 512;

/// Where a stored publication's outcome goes.
pub(super) type Reply = oneshot::Sender<Result<Published, BrokerError>>;

/// A queued publication; `reply` is set for channels with history.
pub(super) struct Outgoing {
    pub(super) channel: Channel,
    pub(super) payload: Bytes,
    pub(super) reply: Option<Reply>,
}

/// Starts the publisher task on `client`; returns the sending side of its queue.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    client: Client,
    cancel: CancellationToken,
) -> mpsc::Sender<Outgoing> {
    let settings = shared.settings.clone();
    let (names, metrics) = (shared.names.clone(), shared.metrics.clone());
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
    tx
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
        let mut replies = Vec::with_capacity(sent);
        for Outgoing {
            channel,
            payload,
            reply,
        } in batch.drain(..)
        {
            let name = names.channel(&channel);
            // Queuing into a pipeline only buffers the command locally.
            let queued: Result<(), _> = match &reply {
                Some(_) => {
                    pipeline
                        .fcall("gw_publish", vec![name], vec![Value::Bytes(payload)])
                        .await
                }
                None if settings.sharded => pipeline.spublish(name, Value::Bytes(payload)).await,
                None => pipeline.publish(name, Value::Bytes(payload)).await,
            };
            if let Err(e) = queued {
                tracing::debug!(error = %e, "publish not queued");
            }
            replies.push(reply);
        }
        let results =
            tokio::time::timeout(settings.publish_timeout, pipeline.try_all::<Value>()).await;
        let failed = match results {
            Ok(results) => {
                let mut failed = 0;
                let mut first = None;
                for (result, reply) in results.into_iter().zip(replies) {
                    let outcome = match result {
                        Ok(Value::Integer(offset)) if offset > 0 => Ok(Published {
                            offset: Some(offset as u64),
                        }),
                        Ok(_) => Ok(Published::default()),
                        Err(e) => {
                            failed += 1;
                            first.get_or_insert(e);
                            Err(BrokerError::Unavailable)
                        }
                    };
                    if outcome.as_ref().is_ok_and(|p| p.offset.is_some()) {
                        metrics.history_appends.inc();
                    }
                    if let Some(reply) = reply {
                        // A caller that gave up no longer listens.
                        let _ = reply.send(outcome);
                    }
                }
                if let Some(e) = first {
                    tracing::warn!(error = %e, failed, sent, "redis publish failed");
                }
                failed
            }
            Err(_) => {
                tracing::warn!(
                    sent,
                    timeout_ms = settings.publish_timeout.as_millis() as u64,
                    "redis publish timed out"
                );
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(BrokerError::Timeout));
                }
                sent
            }
        };
        metrics.broker_publish_errors.inc_by(failed as u64);
    }
}
