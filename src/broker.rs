//! The seam between this node and the bus that carries publications between
//! nodes. The hub tells the broker which channels have local interest (first
//! subscriber in, last subscriber out); the broker hands inbound publications
//! to the hub through one bounded queue ([`Inbound`]).
//!
//! `publish` never blocks the caller on the bus: it hands the publication to
//! the broker and returns a future of the outcome, so a socket's read path or
//! an HTTP handler decides itself whether to wait for it.
//!
//! History (contract section 6) lives in the broker too: a publication on a
//! channel with history is stored and numbered atomically with its
//! delivery, and [`Broker::history`] reads it back for resuming clients and
//! for the node's own gap repair.
//!
//! A broker owns its background tasks; [`Broker::close`] stops them and waits
//! until they are gone (the lifecycle calls it on shutdown).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::cluster::{Control, NodeInfo, Revocation};
use crate::continuity::HistoryPage;
use crate::protocol::{Channel, Position, PresenceInfo, Publication, RoomName};

mod memory;
mod redis;

pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisSettings};

/// A boxed future, so `Broker` can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the broker hands the hub, in the order it happened.
#[derive(Debug)]
pub enum BrokerEvent {
    /// A publication to deliver.
    Publication(Publication),
    /// Publications of these channels may have been missed (their pub/sub
    /// connection was rebuilt, or its reader fell behind): check their
    /// positions against history.
    Check(Vec<Channel>),
    /// A user's first socket joined (or last socket left) a room, across
    /// every node: `join` / `leave` for the room's subscribers.
    Presence {
        /// The room.
        room: RoomName,
        /// The user.
        user: Arc<str>,
        /// Joined (true) or left.
        joined: bool,
    },
    /// A message for every node (disconnect, revoke).
    Control(Control),
}

/// One node's presence changes for one room, sent as one call.
#[derive(Debug, Clone)]
pub struct PresenceChange {
    /// The room.
    pub room: RoomName,
    /// The node sending them.
    pub node: Arc<str>,
    /// Per user, the change in this node's socket count (or, with `full`,
    /// the count itself).
    pub users: Vec<(Arc<str>, i64)>,
    /// `users` is this node's whole state in the room, replacing what the
    /// broker held for it (its entries expired, or it is new there).
    pub full: bool,
    /// This node's entries vanish unless refreshed within this many ms.
    pub ttl_ms: u64,
    /// Whether the room delivers `join` / `leave`, and up to how many users.
    pub events: Option<usize>,
}

/// What the broker said about a presence change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PresenceApplied {
    /// The broker had no live entries of this node in the room (they
    /// expired, or it never had any): it needs the node's whole state.
    pub unknown: bool,
}

/// The queue from the broker to the hub.
pub type Inbound = mpsc::Receiver<BrokerEvent>;

/// Whether the broker can currently carry publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Connected and subscribed.
    Up,
    /// Not (yet) reachable; new sockets are refused until it is up.
    Down,
}

/// Errors at the broker boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The bus is not reachable.
    Unavailable,
    /// The publish queue is full.
    Overloaded,
    /// The bus did not answer in time.
    Timeout,
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Unavailable => f.write_str("broker unavailable"),
            BrokerError::Overloaded => f.write_str("broker publish queue full"),
            BrokerError::Timeout => f.write_str("broker timed out"),
        }
    }
}

impl std::error::Error for BrokerError {}

/// What the broker did with a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// The offset history gave it; `None` for channels without history.
    pub offset: Option<u64>,
}

/// A bus that carries publications to every interested node.
pub trait Broker: Send + Sync + 'static {
    /// Starts receiving `channel`. Resolves once the subscription is live, so a
    /// publication made after it resolves is delivered.
    fn subscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stops receiving `channel` (the last local subscriber left).
    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Hands a publication to the broker for every node. The future resolves
    /// once the broker took it (queued, or stored where the channel keeps
    /// history); dropping it does not cancel the publication.
    fn publish(
        &self,
        channel: Channel,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Published, BrokerError>>;

    /// The broker's state, watched by readiness and metrics.
    fn state(&self) -> watch::Receiver<BrokerState>;

    /// Channels currently subscribed on the bus (for tests and metrics).
    fn subscription_count(&self) -> usize;

    /// Reads `channel`'s history: its position, and the publications after
    /// `since` (the newest ones without it), at most `limit`, oldest first.
    /// `Ok(None)`: the channel keeps no history (or the broker cannot keep
    /// any, e.g. Redis < 7). A channel never published to has offset 0 and
    /// an epoch already.
    fn history(
        &self,
        channel: &Channel,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Option<HistoryPage>, BrokerError>> {
        // A broker without history (test doubles) says so for every channel.
        let _ = (channel, since, limit);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Starts a new epoch for `channel` if its history still stands at
    /// `stale`'s epoch below `stale`'s offset (its top went backwards: a
    /// master lost acknowledged writes), so that no offset is reused for
    /// other data within one epoch. Returns the position after.
    fn new_epoch(
        &self,
        channel: &Channel,
        stale: &Position,
    ) -> BoxFuture<'static, Result<Option<Position>, BrokerError>> {
        let _ = (channel, stale);
        Box::pin(std::future::ready(Ok(None)))
    }

    // The directory: presence, control, revocations, the node registry. The
    // defaults are those of a broker that keeps none of it (test doubles);
    // both real brokers implement every one.

    /// Applies one node's presence changes to a room, across every node.
    fn presence_apply(
        &self,
        change: PresenceChange,
    ) -> BoxFuture<'static, Result<PresenceApplied, BrokerError>> {
        let _ = change;
        ready(Ok(PresenceApplied::default()))
    }

    /// Who is in `room`, across every node.
    fn presence(
        &self,
        room: &RoomName,
        max_members: usize,
    ) -> BoxFuture<'static, Result<PresenceInfo, BrokerError>> {
        let _ = (room, max_members);
        ready(Ok(PresenceInfo::default()))
    }

    /// Sends a control message to every node (this one included).
    fn control(&self, message: Control) -> BoxFuture<'static, Result<(), BrokerError>> {
        let _ = message;
        ready(Err(BrokerError::Unavailable))
    }

    /// Keeps a revocation until it expires, for nodes that start later.
    fn store_revocation(
        &self,
        revocation: Revocation,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let _ = revocation;
        ready(Err(BrokerError::Unavailable))
    }

    /// Every revocation still kept.
    fn revocations(&self) -> BoxFuture<'static, Result<Vec<Revocation>, BrokerError>> {
        ready(Ok(Vec::new()))
    }

    /// Lists this node in the registry for `ttl_seconds`.
    fn register_node(
        &self,
        info: NodeInfo,
        ttl_seconds: u64,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let _ = (info, ttl_seconds);
        ready(Ok(()))
    }

    /// Every node that refreshed its registry entry within its TTL.
    fn nodes(&self) -> BoxFuture<'static, Result<Vec<NodeInfo>, BrokerError>> {
        ready(Ok(Vec::new()))
    }

    /// Stops the broker's background tasks and waits for them to end.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A shared broker handle.
pub type SharedBroker = Arc<dyn Broker>;

/// A future that is already resolved.
fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}
