//! Local routing: the node's session tables and fan-out.
//!
//! Two sharded tables (DashMap: shard-level RwLocks, so cores do not contend
//! on one lock and a channel's subscribers are found by hash, not by scan):
//! connection id -> socket, and channel -> its local subscribers. Counts are
//! kept at mutation time. `deliver` never awaits: it clones the event's shared
//! bytes into each subscriber's bounded outbox. Broker interest follows local
//! interest: the first subscriber of a channel subscribes the broker, the last
//! one out unsubscribes it, serialised per channel by a striped async lock so a
//! subscribe and an unsubscribe of one channel cannot interleave.
//!
//! Each live channel also carries its continuity [`Track`]: the position the
//! node last delivered. The pump (`hub/pump.rs`) is the one writer of tracks
//! and the one deliverer of broker events, so gap repair keeps per-channel
//! order; `hub/join.rs` subscribes a socket and resumes it from history.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Mutex;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

use crate::broker::{BrokerError, SharedBroker};
use crate::continuity::{RetentionRules, Track};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, PushError};
use crate::protocol::{Channel, Event, Format, Position, ServerFrame, encode_server_frame};

mod join;
mod pump;
mod subs;

use subs::Subs;

/// A node-unique connection id.
pub type ConnId = u64;

/// What fan-out needs to reach one socket.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The socket's bounded queue.
    pub outbox: Arc<Outbox>,
    /// Which encoding of an event this socket takes.
    pub format: Format,
}

/// Whose token a socket holds: what the server API's disconnect and revoke
/// select sockets by.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The `sub`.
    pub user: Arc<str>,
    /// The token's `jti`.
    pub jti: Option<Arc<str>>,
    /// The token's `iat`.
    pub issued_at: Option<u64>,
}

/// One registered socket.
struct Conn {
    sub: Subscriber,
    owner: Option<Owner>,
}

/// One channel's local subscribers. `live` turns true once the broker
/// subscription is established; until then joiners wait on the stripe lock.
#[derive(Default)]
struct ChannelSubs {
    live: bool,
    subs: Subs,
    track: Track,
}

const STRIPES: usize = 1024;

/// The node's session tables.
pub struct Hub {
    conns: DashMap<ConnId, Conn, FxBuildHasher>,
    channels: DashMap<Channel, ChannelSubs, FxBuildHasher>,
    // Held across the broker round trip of a first-subscribe / last-unsubscribe,
    // hence async; striped so unrelated channels do not wait on each other.
    stripes: Box<[tokio::sync::Mutex<()>]>,
    next_id: AtomicU64,
    broker: SharedBroker,
    metrics: Metrics,
    /// Largest event (in either encoding) fan-out will queue: one that does
    /// not fit a socket's queue would evict every subscriber with 4008.
    event_limit: usize,
    /// `broadcast` has no entry in `channels` (it reaches every socket);
    /// its track lives here.
    broadcast_track: Mutex<Track>,
    rules: RetentionRules,
}

/// Room an event frame's envelope (`type`, `channel`, `offset`) takes
/// beside its data, kept free in a socket's queue.
pub const EVENT_ENVELOPE: usize = 1024;

/// Outcome of a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The socket was added.
    Added,
    /// The socket was already subscribed.
    Already,
}

impl Hub {
    /// An empty hub bridged to `broker`; events above `event_limit` bytes in
    /// either encoding are dropped (and counted) instead of delivered.
    pub fn new(broker: SharedBroker, metrics: Metrics, event_limit: usize) -> Hub {
        Self::with_history(
            broker,
            metrics,
            event_limit,
            RetentionRules::new(&crate::config::HistoryConfig::default()),
        )
    }

    /// An empty hub resuming channels by `rules` (the broker's own).
    pub fn with_history(
        broker: SharedBroker,
        metrics: Metrics,
        event_limit: usize,
        rules: RetentionRules,
    ) -> Hub {
        Hub {
            broadcast_track: Mutex::new(Track::default()),
            rules,
            conns: DashMap::with_hasher(FxBuildHasher),
            channels: DashMap::with_hasher(FxBuildHasher),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            next_id: AtomicU64::new(1),
            broker,
            metrics,
            event_limit,
        }
    }

    /// The broker this hub subscribes through.
    pub fn broker(&self) -> &SharedBroker {
        &self.broker
    }

    /// Adds a socket to the connection registry (and so to `broadcast`).
    pub fn register(&self, subscriber: Subscriber) -> ConnId {
        self.register_as(subscriber, None)
    }

    /// Adds a socket held by `owner`'s token.
    pub fn register_as(&self, subscriber: Subscriber, owner: Option<Owner>) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(
            id,
            Conn {
                sub: subscriber,
                owner,
            },
        );
        self.metrics.sockets_open.inc();
        id
    }

    /// Records the token a socket holds now (after a `refresh`).
    pub fn set_owner(&self, id: ConnId, owner: Owner) {
        if let Some(mut conn) = self.conns.get_mut(&id) {
            conn.owner = Some(owner);
        }
    }

    /// Asks every socket whose owner matches to close with `reason` (after
    /// what it has queued). Returns how many.
    pub fn close_where(
        &self,
        matches: impl Fn(&Owner) -> bool,
        reason: crate::protocol::Disconnect,
    ) -> usize {
        let mut closed = 0;
        for conn in self.conns.iter() {
            if conn.owner.as_ref().is_some_and(&matches) {
                conn.sub.outbox.close(reason);
                closed += 1;
            }
        }
        closed
    }

    /// Removes a socket from the registry. Its channels must be left first.
    pub fn unregister(&self, id: ConnId) {
        if self.conns.remove(&id).is_some() {
            self.metrics.sockets_open.dec();
        }
    }

    fn stripe(&self, channel: &Channel) -> &tokio::sync::Mutex<()> {
        let hash = FxBuildHasher.hash_one(channel) as usize;
        &self.stripes[hash % STRIPES]
    }

    /// Adds `id` to `channel`. Resolves once the broker subscription is live;
    /// if the broker refuses, the local subscription is rolled back.
    ///
    /// Joining a channel whose broker subscription is already live takes only
    /// the table's shard lock; the striped async lock is taken on the first
    /// subscriber's path, which waits for the broker.
    pub async fn subscribe(
        &self,
        channel: &Channel,
        id: ConnId,
        subscriber: Subscriber,
    ) -> Result<Joined, BrokerError> {
        if let Some(mut entry) = self.channels.get_mut(channel)
            && entry.live
        {
            return Ok(self.insert(&mut entry, id, subscriber));
        }
        let _serial = self.stripe(channel).lock().await;
        let first = {
            let mut entry = self.channels.entry(channel.clone()).or_default();
            if entry.live {
                return Ok(self.insert(&mut entry, id, subscriber));
            }
            if self.insert(&mut entry, id, subscriber) == Joined::Already {
                return Ok(Joined::Already);
            }
            entry.subs.len() == 1
        };
        if first {
            self.metrics.channels.inc();
        }
        match self.broker.subscribe(channel).await {
            Ok(()) => {
                if let Some(mut entry) = self.channels.get_mut(channel) {
                    entry.live = true;
                }
                Ok(Joined::Added)
            }
            Err(e) => {
                self.remove_local(channel, id);
                Err(e)
            }
        }
    }

    fn insert(&self, entry: &mut ChannelSubs, id: ConnId, subscriber: Subscriber) -> Joined {
        if entry.subs.insert(id, subscriber) {
            return Joined::Already;
        }
        self.metrics.subscriptions.inc();
        Joined::Added
    }

    /// Removes `id` from `channel`; the last one out unsubscribes the broker.
    /// Returns whether the socket was subscribed.
    pub async fn unsubscribe(&self, channel: &Channel, id: ConnId) -> bool {
        match self.remove_local(channel, id) {
            Left::NotThere => false,
            Left::Member => true,
            Left::Last => {
                let _serial = self.stripe(channel).lock().await;
                // Someone may have joined again (and subscribed the broker)
                // between the removal and this lock: then the broker stays.
                if !self.channels.contains_key(channel)
                    && let Err(e) = self.broker.unsubscribe(channel).await
                {
                    // The broker reconciles its own subscriptions; a stale one
                    // only costs traffic this node drops.
                    tracing::warn!(error = %e, "broker unsubscribe failed");
                }
                true
            }
        }
    }

    fn remove_local(&self, channel: &Channel, id: ConnId) -> Left {
        let mut outcome = Left::NotThere;
        let emptied = self.channels.remove_if_mut(channel, |_, entry| {
            if entry.subs.remove(id) {
                outcome = Left::Member;
            }
            entry.subs.is_empty()
        });
        if outcome == Left::NotThere {
            return outcome;
        }
        self.metrics.subscriptions.dec();
        if emptied.is_some() {
            self.metrics.channels.dec();
            return Left::Last;
        }
        outcome
    }

    /// Runs `f` on `channel`'s track; `None` when the channel has no local
    /// subscriber (its events are dropped anyway).
    fn with_track<R>(&self, channel: &Channel, f: impl FnOnce(&mut Track) -> R) -> Option<R> {
        match channel {
            Channel::Broadcast => Some(f(&mut self
                .broadcast_track
                .lock()
                .unwrap_or_else(|e| e.into_inner()))),
            channel => self.channels.get_mut(channel).map(|mut e| f(&mut e.track)),
        }
    }

    /// The position this node last delivered on `channel`, if it knows one.
    pub fn position(&self, channel: &Channel) -> Option<Position> {
        self.with_track(channel, |t| t.position().cloned())
            .flatten()
    }

    /// Queues `event` to every local subscriber of its channel without
    /// waiting. Returns how many sockets got it.
    pub fn deliver(&self, event: &Event) -> usize {
        let delivered = self.push_to(event.channel(), |sub| {
            sub.outbox.push_event(
                event.channel(),
                event.message(sub.format).clone(),
                event.offset(),
                event.received_at(),
            )
        });
        self.metrics.deliveries.inc_by(delivered as u64);
        delivered
    }

    /// Queues a frame about `channel` (`resync`, `join`, `leave`), encoded
    /// once per format, to every local subscriber of the channel, in its
    /// order with the channel's events. Returns how many sockets got it.
    pub fn deliver_frame(&self, channel: &Channel, frame: &ServerFrame) -> usize {
        let encoded = std::sync::OnceLock::new();
        let encoded_msgpack = std::sync::OnceLock::new();
        let now = std::time::Instant::now();
        self.push_to(channel, |sub| {
            let message = match sub.format {
                Format::Json => encoded.get_or_init(|| encode_server_frame(Format::Json, frame)),
                Format::MsgPack => {
                    encoded_msgpack.get_or_init(|| encode_server_frame(Format::MsgPack, frame))
                }
            };
            sub.outbox.push_event(channel, message.clone(), None, now)
        })
    }

    fn push_to(
        &self,
        channel: &Channel,
        push: impl Fn(&Subscriber) -> Result<(), PushError>,
    ) -> usize {
        let mut delivered = 0;
        let mut push = |sub: &Subscriber| match push(sub) {
            Ok(()) => delivered += 1,
            // The outbox marked itself; its session closes with 4008 and counts it.
            Err(PushError::Full) | Err(PushError::Closed) => {}
        };
        match channel {
            Channel::Broadcast => self.conns.iter().for_each(|entry| push(&entry.value().sub)),
            channel => {
                if let Some(entry) = self.channels.get(channel) {
                    entry.subs.for_each(&mut push);
                }
            }
        }
        delivered
    }

    /// Every open socket's outbox (a snapshot, for drain).
    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.conns
            .iter()
            .map(|e| e.value().sub.outbox.clone())
            .collect()
    }

    /// Table sizes, for tests and leak checks.
    pub fn sizes(&self) -> TableSizes {
        TableSizes {
            conns: self.conns.len(),
            channels: self.channels.len(),
            subscriptions: self.channels.iter().map(|e| e.value().subs.len()).sum(),
        }
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &Channel) -> usize {
        self.channels.get(channel).map_or(0, |e| e.subs.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    NotThere,
    Member,
    Last,
}

/// Sizes of the hub's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableSizes {
    /// Registered sockets.
    pub conns: usize,
    /// Channels with local subscribers.
    pub channels: usize,
    /// (socket, channel) memberships.
    pub subscriptions: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{BoxFuture, Broker, BrokerState, MemoryBroker, Published};
    use crate::protocol::{Publication, RoomName};
    use bytes::Bytes;
    use std::collections::VecDeque;

    fn hub() -> (Arc<Hub>, Arc<MemoryBroker>) {
        let (broker, _rx) = MemoryBroker::new(16);
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        (Arc::new(Hub::new(broker.clone(), metrics, 1 << 20)), broker)
    }

    fn sub(format: Format) -> Subscriber {
        Subscriber {
            outbox: Arc::new(Outbox::new(8, 1 << 16)),
            format,
        }
    }

    fn room(name: &str) -> Channel {
        Channel::Room(RoomName::parse(name).unwrap())
    }

    fn event(channel: Channel) -> Event {
        Event::new(
            Publication::new(channel, Bytes::from_static(b"{}")),
            1 << 20,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn broker_interest_follows_first_and_last_subscriber() {
        let (hub, broker) = hub();
        let (a, b) = (sub(Format::Json), sub(Format::MsgPack));
        let (ia, ib) = (hub.register(a.clone()), hub.register(b.clone()));
        let lobby = room("lobby");
        assert_eq!(
            hub.subscribe(&lobby, ia, a.clone()).await,
            Ok(Joined::Added)
        );
        assert_eq!(hub.subscribe(&lobby, ia, a).await, Ok(Joined::Already));
        hub.subscribe(&lobby, ib, b).await.unwrap();
        assert_eq!(broker.subscription_count(), 1);
        assert!(hub.unsubscribe(&lobby, ia).await);
        assert_eq!(broker.subscription_count(), 1);
        assert!(hub.unsubscribe(&lobby, ib).await);
        assert!(!hub.unsubscribe(&lobby, ib).await);
        assert_eq!(broker.subscription_count(), 0);
        hub.unregister(ia);
        hub.unregister(ib);
        assert_eq!(hub.sizes(), TableSizes::default());
    }

    #[tokio::test]
    async fn deliver_reaches_room_members_and_broadcast_reaches_all() {
        let (hub, _) = hub();
        let (a, b) = (sub(Format::Json), sub(Format::MsgPack));
        let ia = hub.register(a.clone());
        hub.register(b.clone());
        hub.subscribe(&room("lobby"), ia, a.clone()).await.unwrap();
        assert_eq!(hub.deliver(&event(room("lobby"))), 1);
        assert_eq!(hub.deliver(&event(room("empty"))), 0);
        assert_eq!(hub.deliver(&event(Channel::Broadcast)), 2);
        let mut batch = VecDeque::new();
        a.outbox.take(&mut batch, usize::MAX);
        assert_eq!(batch.len(), 2);
        assert!(batch[0].message.is_text());
        batch.clear();
        b.outbox.take(&mut batch, usize::MAX);
        assert!(batch[0].message.is_binary());
    }

    struct Refusing;
    impl Broker for Refusing {
        fn subscribe<'a>(&'a self, _: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async { Err(BrokerError::Unavailable) })
        }
        fn unsubscribe<'a>(&'a self, _: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async { Ok(()) })
        }
        fn publish(
            &self,
            _: Channel,
            _: Bytes,
        ) -> BoxFuture<'static, Result<Published, BrokerError>> {
            Box::pin(async { Err(BrokerError::Unavailable) })
        }
        fn close(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn state(&self) -> tokio::sync::watch::Receiver<BrokerState> {
            tokio::sync::watch::channel(BrokerState::Down).1
        }
        fn subscription_count(&self) -> usize {
            0
        }
    }

    #[tokio::test]
    async fn a_failed_broker_subscribe_rolls_back() {
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let hub = Hub::new(Arc::new(Refusing), metrics.clone(), 1 << 20);
        let a = sub(Format::Json);
        let ia = hub.register(a.clone());
        assert_eq!(
            hub.subscribe(&room("lobby"), ia, a).await,
            Err(BrokerError::Unavailable)
        );
        assert_eq!(hub.sizes().channels, 0);
        assert_eq!(metrics.subscriptions.get(), 0);
        assert_eq!(metrics.channels.get(), 0);
    }

    /// A broker that yields inside subscribe/unsubscribe, widening the window
    /// in which a first-subscribe and a last-unsubscribe could interleave.
    struct Yielding(Arc<MemoryBroker>);
    impl Broker for Yielding {
        fn subscribe<'a>(&'a self, c: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async move {
                tokio::task::yield_now().await;
                self.0.subscribe(c).await
            })
        }
        fn unsubscribe<'a>(&'a self, c: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async move {
                tokio::task::yield_now().await;
                self.0.unsubscribe(c).await
            })
        }
        fn publish(
            &self,
            c: Channel,
            p: Bytes,
        ) -> BoxFuture<'static, Result<Published, BrokerError>> {
            self.0.publish(c, p)
        }
        fn close(&self) -> BoxFuture<'_, ()> {
            self.0.close()
        }
        fn state(&self) -> tokio::sync::watch::Receiver<BrokerState> {
            self.0.state()
        }
        fn subscription_count(&self) -> usize {
            self.0.subscription_count()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribe_unsubscribe_storms_end_in_the_right_broker_state() {
        let (memory, _rx) = MemoryBroker::new(16);
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let hub = Arc::new(Hub::new(
            Arc::new(Yielding(memory.clone())),
            metrics,
            1 << 20,
        ));
        let rooms: Vec<Channel> = (0..3).map(|i| room(&format!("storm{i}"))).collect();
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let (hub, rooms) = (hub.clone(), rooms.clone());
                tokio::spawn(async move {
                    let s = sub(Format::Json);
                    let id = hub.register(s.clone());
                    for i in 0..300u64 {
                        let r = &rooms[((i * 7 + t) % 3) as usize];
                        hub.subscribe(r, id, s.clone()).await.unwrap();
                        if (i + t) % 5 != 0 {
                            hub.unsubscribe(r, id).await;
                        }
                    }
                    (id, t)
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let interested = rooms.iter().filter(|r| hub.subscriber_count(r) > 0).count();
        assert_eq!(
            memory.subscription_count(),
            interested,
            "broker interest equals local interest"
        );
        for (id, _) in ids {
            for r in &rooms {
                hub.unsubscribe(r, id).await;
            }
            hub.unregister(id);
        }
        assert_eq!(memory.subscription_count(), 0);
        assert_eq!(hub.sizes(), TableSizes::default());
    }
}
