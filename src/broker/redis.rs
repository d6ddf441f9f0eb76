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

use super::{
    BoxFuture, Broker, BrokerError, BrokerState, Inbound, PresenceApplied, PresenceChange,
    Published,
};
use crate::cluster::{Control, NodeInfo, Revocation};
use crate::config::PresenceConfig;
use crate::continuity::{HistoryPage, RetentionRules};
use crate::metrics::Metrics;
use crate::protocol::{Channel, Position, PresenceInfo, RoomName};

mod client;
mod connection;
mod directory;
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
        presence: &PresenceConfig,
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
            presence,
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

impl RedisBroker {
    /// The client for keys of `name`'s slot: the subscriber connection of
    /// its master as the bridge knows it (fresh after a failover), else the
    /// publisher's cluster-aware client.
    fn client_for(&self, name: &Str) -> fred::clients::Client {
        self.shared
            .client_for(name.as_bytes())
            .unwrap_or_else(|| self.client.clone())
    }

    fn without_functions<T: Send + 'static>(
        &self,
    ) -> Option<BoxFuture<'static, Result<T, BrokerError>>> {
        (!self.shared.needs_functions()).then(|| {
            Box::pin(std::future::ready(Err(BrokerError::Unavailable))) as BoxFuture<'static, _>
        })
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
        Box::pin(history::read(
            self.client_for(&name),
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

    fn presence_apply(
        &self,
        change: PresenceChange,
    ) -> BoxFuture<'static, Result<PresenceApplied, BrokerError>> {
        if let Some(refused) = self.without_functions() {
            return refused;
        }
        let name = self
            .shared
            .names
            .channel(&Channel::Room(change.room.clone()));
        Box::pin(directory::presence_apply(
            self.client_for(&name),
            name,
            change,
            self.shared.settings.command_timeout,
        ))
    }

    fn presence(
        &self,
        room: &RoomName,
        max_members: usize,
    ) -> BoxFuture<'static, Result<PresenceInfo, BrokerError>> {
        if let Some(refused) = self.without_functions() {
            return refused;
        }
        let name = self.shared.names.channel(&Channel::Room(room.clone()));
        Box::pin(directory::presence(
            self.client_for(&name),
            name,
            max_members,
            self.shared.settings.command_timeout,
        ))
    }

    fn control(&self, message: Control) -> BoxFuture<'static, Result<(), BrokerError>> {
        let name = self.shared.control.clone();
        Box::pin(directory::control(
            self.client_for(&name),
            name,
            self.shared.settings.sharded,
            message,
            self.shared.settings.command_timeout,
        ))
    }

    fn store_revocation(
        &self,
        revocation: Revocation,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(directory::store_revocation(
            self.client.clone(),
            self.shared.names.revoked(),
            revocation,
            self.shared.settings.command_timeout,
        ))
    }

    fn revocations(&self) -> BoxFuture<'static, Result<Vec<Revocation>, BrokerError>> {
        Box::pin(directory::revocations(
            self.client.clone(),
            self.shared.names.revoked(),
            self.shared.settings.command_timeout,
        ))
    }

    fn register_node(
        &self,
        info: NodeInfo,
        ttl_seconds: u64,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(directory::register_node(
            self.client.clone(),
            self.shared.names.nodes(),
            info,
            ttl_seconds,
            self.shared.settings.command_timeout,
        ))
    }

    fn nodes(&self) -> BoxFuture<'static, Result<Vec<NodeInfo>, BrokerError>> {
        Box::pin(directory::nodes(
            self.client.clone(),
            self.shared.names.nodes(),
            self.shared.settings.command_timeout,
        ))
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.clone()
    }

    /// Room and user channels live on Redis (broadcast and control, always
    /// subscribed, and the probe channels are not counted).
    fn subscription_count(&self) -> usize {
        self.shared
            .table()
            .live_count(&[&self.broadcast, &self.shared.control])
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
