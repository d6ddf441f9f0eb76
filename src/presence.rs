//! Presence (contract section 7), this node's side. The node keeps, per room,
//! how many sockets each user has here, and tells the broker in batches: one
//! call per room with every change since the last one (not one per socket),
//! and a refresh per room every third of `presence.ttl_seconds` (so a node
//! that dies without a word has its entries dropped within the TTL). A
//! subscribe waits for its change to be sent, so a socket is present from
//! its `ok`.
//!
//! The broker holds the cluster-wide state (in Redis, in the room's own
//! slot; in memory for the embedded broker) and answers queries; when it
//! says it lost this node's entries (they expired, or Redis lost data), the
//! next call for that room carries this node's whole state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, oneshot};

use crate::auth::Grants;
use crate::broker::{BrokerError, PresenceChange, SharedBroker};
use crate::config::PresenceConfig;
use crate::metrics::Metrics;
use crate::protocol::{PresenceInfo, RoomName};

/// Calls in flight at once during a flush.
const CONCURRENCY: usize = 256;
/// Longest a subscribe waits for its presence change to be sent.
const JOIN_WAIT: Duration = Duration::from_secs(2);
/// Pause after a failed call before what it owed is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Pending {
    /// Changes per user since the last call.
    deltas: HashMap<Arc<str>, i64>,
    /// The broker needs this node's whole state for the room.
    full: bool,
    /// A refresh is due even without changes.
    refresh: bool,
}

#[derive(Default)]
struct State {
    /// room -> user -> this node's sockets.
    local: HashMap<RoomName, HashMap<Arc<str>, i64>>,
    pending: HashMap<RoomName, Pending>,
    waiters: Vec<oneshot::Sender<()>>,
}

/// This node's presence.
pub struct Presence {
    node: Arc<str>,
    broker: SharedBroker,
    ttl: Duration,
    max_members: usize,
    events: Grants,
    events_max: usize,
    metrics: Metrics,
    state: Mutex<State>,
    wake: Notify,
}

impl Presence {
    /// Presence of node `node` through `broker`.
    pub fn new(
        node: Arc<str>,
        broker: SharedBroker,
        config: &PresenceConfig,
        metrics: Metrics,
    ) -> Presence {
        Presence {
            node,
            broker,
            ttl: Duration::from_secs(config.ttl_seconds),
            max_members: config.max_members,
            events: Grants::parse(&config.events),
            events_max: config.events_max_members,
            metrics,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A socket of `user` joined `room`; resolves once the broker has it
    /// (or after a short bound, if the broker is slow).
    pub async fn join(&self, room: &RoomName, user: &Arc<str>) {
        let sent = self.change(room, user, 1);
        let _ = tokio::time::timeout(JOIN_WAIT, sent).await;
    }

    /// A socket of `user` left `room` (unsubscribe or close). The returned
    /// receiver resolves once the broker has it; a close need not wait.
    pub fn leave(&self, room: &RoomName, user: &Arc<str>) -> oneshot::Receiver<()> {
        self.change(room, user, -1)
    }

    /// Waits (boundedly) for what `leave` returned.
    pub async fn sent(receiver: oneshot::Receiver<()>) {
        let _ = tokio::time::timeout(JOIN_WAIT, receiver).await;
    }

    fn change(&self, room: &RoomName, user: &Arc<str>, delta: i64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.lock();
            let fresh = !state.local.contains_key(room);
            if delta < 0 && fresh {
                // Nothing of it here (a join that never happened).
                return rx;
            }
            let users = state.local.entry(room.clone()).or_default();
            let count = users.entry(user.clone()).or_insert(0);
            *count += delta;
            if *count <= 0 {
                users.remove(user);
            }
            if users.is_empty() {
                state.local.remove(room);
            }
            let pending = state.pending.entry(room.clone()).or_default();
            if fresh {
                // New here: the whole (one-socket) state at once.
                pending.full = true;
            } else if !pending.full {
                *pending.deltas.entry(user.clone()).or_insert(0) += delta;
            }
            state.waiters.push(tx);
        }
        self.wake.notify_one();
        rx
    }

    /// Who is in `room`, across every node.
    pub async fn query(&self, room: &RoomName) -> Result<PresenceInfo, BrokerError> {
        self.metrics.presence_queries.inc();
        self.broker.presence(room, self.max_members).await
    }

    /// Sends changes as they come and refreshes every room every third of
    /// the TTL, until cancelled.
    pub async fn run(self: Arc<Self>) {
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = refresh.tick() => self.mark_refresh(),
            }
            if self.flush().await {
                // The broker failed: what is owed goes again after a pause,
                // not in a tight loop against a Redis that is away.
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    fn mark_refresh(&self) {
        let mut state = self.lock();
        let rooms: Vec<RoomName> = state.local.keys().cloned().collect();
        for room in rooms {
            state.pending.entry(room).or_default().refresh = true;
        }
    }

    /// Sends every pending change now (the last one at shutdown too).
    /// Returns whether a call failed.
    pub async fn flush(&self) -> bool {
        let (changes, waiters) = {
            let mut state = self.lock();
            let pending = std::mem::take(&mut state.pending);
            let waiters = std::mem::take(&mut state.waiters);
            let changes: Vec<(PresenceChange, &'static str)> = pending
                .into_iter()
                .filter_map(|(room, p)| {
                    let (users, kind): (Vec<(Arc<str>, i64)>, _) = if p.full {
                        let users = state
                            .local
                            .get(&room)
                            .map(|u| u.iter().map(|(k, v)| (k.clone(), *v)).collect())
                            .unwrap_or_default();
                        (users, "full")
                    } else {
                        let users: Vec<_> = p.deltas.into_iter().filter(|(_, d)| *d != 0).collect();
                        if users.is_empty() && !p.refresh {
                            return None;
                        }
                        let kind = if users.is_empty() {
                            "refresh"
                        } else {
                            "update"
                        };
                        (users, kind)
                    };
                    let events = self.events.allows(room.as_str()).then_some(self.events_max);
                    Some((
                        PresenceChange {
                            room,
                            node: self.node.clone(),
                            users,
                            full: p.full,
                            ttl_ms: self.ttl.as_millis() as u64,
                            events,
                        },
                        kind,
                    ))
                })
                .collect();
            (changes, waiters)
        };
        let calls = changes.into_iter().map(|(change, kind)| {
            let room = change.room.clone();
            let call = self.broker.presence_apply(change);
            async move { (room, kind, call.await) }
        });
        // Each call is already a boxed 'static future: run them with bounded
        // concurrency without borrowing `self` across the await.
        let results: Vec<_> = futures_util::stream::iter(calls.collect::<Vec<_>>())
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut owed = Vec::new();
        let mut failed = false;
        for (room, kind, result) in results {
            self.metrics.presence_calls.with_label_values(&[kind]).inc();
            match result {
                Ok(applied) if applied.unknown => {
                    self.metrics
                        .presence_errors
                        .with_label_values(&["unknown"])
                        .inc();
                    owed.push(room);
                }
                Ok(_) => {}
                Err(e) => {
                    failed = true;
                    self.metrics
                        .presence_errors
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::debug!(room = room.as_str(), error = %e, "presence update failed; the whole state follows");
                    owed.push(room);
                }
            }
        }
        if !owed.is_empty() {
            let mut state = self.lock();
            for room in owed {
                if state.local.contains_key(&room) {
                    state.pending.entry(room).or_default().full = true;
                }
            }
            drop(state);
            self.wake.notify_one();
        }
        for waiter in waiters {
            let _ = waiter.send(());
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;

    fn presence() -> Presence {
        let (broker, _rx) = MemoryBroker::new(64);
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        Presence::new("n1".into(), broker, &PresenceConfig::default(), metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn joins_are_sent_before_they_return_and_leaves_follow() {
        let p = Arc::new(presence());
        let runner = tokio::spawn(p.clone().run());
        let room = RoomName::parse("lobby").unwrap();
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        p.join(&room, &alice).await;
        p.join(&room, &alice).await;
        p.join(&room, &bob).await;
        let info = p.query(&room).await.unwrap();
        assert_eq!((info.users, info.clients), (2, 3));
        p.leave(&room, &alice);
        Presence::sent(p.leave(&room, &bob)).await;
        let info = p.query(&room).await.unwrap();
        assert_eq!(
            (info.users, info.clients, info.members),
            (1, 1, vec!["alice".to_owned()])
        );
        runner.abort();
    }
}
