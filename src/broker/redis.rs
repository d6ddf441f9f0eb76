//! The Redis bridge (`broker.kind = "redis"`): many gateway nodes, one
//! fan-out. A node subscribes to `<prefix>room:<R>` while it has a local
//! subscriber of R, to `<prefix>user:<U>` while U has a socket on it, and to
//! `<prefix>broadcast` always; backends (and this node's HTTP and client
//! publishes) publish there, and every interested node delivers.
//!
//! Layout: `settings.rs` (`[broker.redis]` validated, every problem at once),
//! `shared.rs` (state shared by every part, and the tracker owning every
//! task), `publisher.rs` (bounded queue, own fred client, timeouts),
//! `reconciler.rs` (the reconcile passes), `connection.rs` (one subscriber
//! connection per master with its reader and watcher), `probe.rs` (liveness
//! and Up/Down), `table.rs` (desired vs live subscriptions), `topology.rs`
//! (slot map), `names.rs`, `client.rs`.
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

use super::{BoxFuture, Broker, BrokerError, BrokerState, Inbound, Published};
use crate::continuity::{HistoryPage, RetentionRules};
use crate::metrics::Metrics;
use crate::protocol::{Channel, Position};

mod client;
mod connection;
mod fleet;
mod functions;
mod history;
mod names;
mod probe;
mod publisher;
mod reconciler;
mod settings;
mod shared;
mod table;
mod topology;

use names::Names;
pub use settings::RedisSettings;
use shared::Shared;

/// Time allowed for the bridge's tasks to end once it is closed.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The Redis (Cluster) broker. Starts Down and connects in the background:
/// a Redis that is unreachable at start-up delays readiness, not start-up.
pub struct RedisBroker {
    shared: Arc<Shared>,
    publish: mpsc::Sender<publisher::Outgoing>,
    /// The publisher's cluster-aware client, also used for history reads.
    client: fred::clients::Client,
    state: watch::Receiver<BrokerState>,
    broadcast: Str,
    cancel: CancellationToken,
}

impl RedisBroker {
    /// Spawns the publisher, the reconciler and the prober on the current
    /// runtime, and returns the broker with the queue of inbound publications
    /// (`queue_capacity` deep).
    pub fn start(
        settings: RedisSettings,
        rules: RetentionRules,
        queue_capacity: usize,
        metrics: Metrics,
    ) -> Result<(Arc<RedisBroker>, Inbound), fred::error::Error> {
        let settings = Arc::new(settings);
        let names = Names::new(&settings.prefix);
        let cancel = CancellationToken::new();
        let broadcast = names.channel(&Channel::Broadcast);
        let shared = Arc::new(Shared::new(
            settings.clone(),
            names.clone(),
            metrics.clone(),
            broadcast.clone(),
            rules,
        ));
        let client = client::publisher(&settings)?;
        let publish = publisher::spawn(&shared, client.clone(), cancel.clone());
        let (inbound_tx, inbound) = mpsc::channel(queue_capacity.max(1));
        let state = shared.state();
        reconciler::spawn(shared.clone(), inbound_tx, cancel.clone());
        Ok((
            Arc::new(RedisBroker {
                shared,
                publish,
                client,
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

    fn publish(
        &self,
        channel: Channel,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Published, BrokerError>> {
        let (reply, stored) = match self.shared.keeps_history(&channel) {
            true => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let queued = self
            .publish
            .try_send(publisher::Outgoing {
                channel,
                payload,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BrokerError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => BrokerError::Unavailable,
            });
        match (queued, stored) {
            (Err(e), _) => Box::pin(std::future::ready(Err(e))),
            (Ok(()), None) => Box::pin(std::future::ready(Ok(Published::default()))),
            // With history, the caller learns the offset once Redis stored it.
            (Ok(()), Some(rx)) => {
                Box::pin(async move { rx.await.unwrap_or(Err(BrokerError::Unavailable)) })
            }
        }
    }

    fn history(
        &self,
        channel: &Channel,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Option<HistoryPage>, BrokerError>> {
        if !self.shared.keeps_history(channel) {
            return Box::pin(std::future::ready(Ok(None)));
        }
        let name = self.shared.names.channel(channel);
        // The channel's own master, as the subscriber side knows it (fresh
        // after a failover); fred's cluster client catches up later.
        let client = self
            .shared
            .client_for(name.as_bytes())
            .unwrap_or_else(|| self.client.clone());
        Box::pin(history::read(
            client,
            name,
            since,
            limit,
            self.shared.settings.command_timeout,
            self.shared.metrics.clone(),
        ))
    }

    fn new_epoch(
        &self,
        channel: &Channel,
        stale: &Position,
    ) -> BoxFuture<'static, Result<Option<Position>, BrokerError>> {
        if !self.shared.keeps_history(channel) {
            return Box::pin(std::future::ready(Ok(None)));
        }
        Box::pin(history::new_epoch(
            self.client.clone(),
            self.shared.names.channel(channel),
            stale.clone(),
            self.shared.settings.command_timeout,
        ))
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.clone()
    }

    /// Room and user channels live on Redis (broadcast, always subscribed,
    /// and the probe channels are not counted).
    fn subscription_count(&self) -> usize {
        self.shared.table().live_count(&self.broadcast)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.cancel.cancel();
            self.shared.tasks.close();
            if tokio::time::timeout(CLOSE_GRACE, self.shared.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("redis bridge tasks did not end in time");
            }
        })
    }
}
