//! The embedded broker: a single node's in-process bus, the default.
//!
//! It behaves like the Redis bridge where it matters to the rest of the node:
//! publishes travel through it (one bounded queue, one order), only channels
//! with local interest (plus broadcast) are delivered, and channels with
//! history get offsets and a bounded log (`memory/history.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{
    BoxFuture, Broker, BrokerError, BrokerEvent, BrokerState, Inbound, PresenceApplied,
    PresenceChange, Published,
};
use crate::cluster::{Control, NodeInfo, Revocation};
use crate::continuity::{HistoryPage, RetentionRules};
use crate::protocol::{Channel, Position, PresenceInfo, Publication, RoomName};

mod directory;
mod history;

use directory::Directory;
use history::History;

/// In-process broker.
#[derive(Debug)]
pub struct MemoryBroker {
    // Touched on first-subscriber / last-subscriber transitions and publishes
    // only; a short std mutex is cheaper than a concurrent set here.
    subscribed: Mutex<HashSet<Channel>>,
    tx: mpsc::Sender<BrokerEvent>,
    state: watch::Sender<BrokerState>,
    history: Option<History>,
    directory: Directory,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("History")
    }
}

impl MemoryBroker {
    /// A broker without history whose inbound queue holds `capacity`
    /// publications.
    pub fn new(capacity: usize) -> (Arc<MemoryBroker>, Inbound) {
        Self::build(capacity, None)
    }

    /// A broker keeping history by `rules`.
    pub fn with_history(capacity: usize, rules: RetentionRules) -> (Arc<MemoryBroker>, Inbound) {
        Self::build(capacity, Some(History::new(rules)))
    }

    fn build(capacity: usize, history: Option<History>) -> (Arc<MemoryBroker>, Inbound) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (state, _) = watch::channel(BrokerState::Up);
        (
            Arc::new(MemoryBroker {
                subscribed: Mutex::new(HashSet::new()),
                tx,
                state,
                history,
                directory: Directory::default(),
            }),
            rx,
        )
    }

    fn subscribed(&self) -> std::sync::MutexGuard<'_, HashSet<Channel>> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, channel: Channel, payload: Bytes) -> Result<Published, BrokerError> {
        let interested = channel == Channel::Broadcast || self.subscribed().contains(&channel);
        let send = |offset: Option<u64>, epoch: Bytes| -> Result<Published, BrokerError> {
            if !interested {
                return Ok(Published { offset });
            }
            let publication = Publication {
                channel: channel.clone(),
                payload: payload.clone(),
                received_at: Instant::now(),
                offset,
                epoch,
            };
            self.tx
                .try_send(BrokerEvent::Publication(publication))
                .map(|()| Published { offset })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => BrokerError::Overloaded,
                    mpsc::error::TrySendError::Closed(_) => BrokerError::Unavailable,
                })
        };
        match &self.history {
            // Numbered and handed on under the channel's lock, so offsets
            // reach the hub in order. A publication the queue refused is
            // still in history: a resuming client gets it.
            Some(history) => history
                .append(&channel, &payload, |offset, epoch| {
                    send(
                        Some(offset),
                        Bytes::copy_from_slice(epoch.as_str().as_bytes()),
                    )
                })
                .unwrap_or_else(|| send(None, Bytes::new())),
            None => send(None, Bytes::new()),
        }
    }
}

impl Broker for MemoryBroker {
    fn subscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.subscribed().insert(channel.clone());
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.subscribed().remove(channel);
        Box::pin(async { Ok(()) })
    }

    fn publish(
        &self,
        channel: Channel,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Published, BrokerError>> {
        let result = self.enqueue(channel, payload);
        Box::pin(std::future::ready(result))
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.subscribe()
    }

    fn subscription_count(&self) -> usize {
        self.subscribed().len()
    }

    fn history(
        &self,
        channel: &Channel,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Option<HistoryPage>, BrokerError>> {
        let page = self
            .history
            .as_ref()
            .and_then(|h| h.read(channel, since, limit));
        Box::pin(std::future::ready(Ok(page)))
    }

    fn new_epoch(
        &self,
        channel: &Channel,
        stale: &Position,
    ) -> BoxFuture<'static, Result<Option<Position>, BrokerError>> {
        let position = self
            .history
            .as_ref()
            .and_then(|h| h.new_epoch(channel, stale));
        Box::pin(std::future::ready(Ok(position)))
    }

    fn presence_apply(
        &self,
        change: PresenceChange,
    ) -> BoxFuture<'static, Result<PresenceApplied, BrokerError>> {
        let room = change.room.clone();
        let (applied, transitions) = self.directory.apply(change);
        for (user, joined) in transitions {
            // Presence frames are advisory: a full queue drops them, like a
            // lagging Redis reader would.
            let _ = self.tx.try_send(BrokerEvent::Presence {
                room: room.clone(),
                user,
                joined,
            });
        }
        Box::pin(std::future::ready(Ok(applied)))
    }

    fn presence(
        &self,
        room: &RoomName,
        max_members: usize,
    ) -> BoxFuture<'static, Result<PresenceInfo, BrokerError>> {
        Box::pin(std::future::ready(Ok(self
            .directory
            .presence(room, max_members))))
    }

    fn control(&self, message: Control) -> BoxFuture<'static, Result<(), BrokerError>> {
        let sent = self
            .tx
            .try_send(BrokerEvent::Control(message))
            .map_err(|_| BrokerError::Overloaded);
        Box::pin(std::future::ready(sent))
    }

    fn store_revocation(
        &self,
        revocation: Revocation,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.directory.store_revocation(revocation);
        Box::pin(std::future::ready(Ok(())))
    }

    fn revocations(&self) -> BoxFuture<'static, Result<Vec<Revocation>, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.directory.revocations())))
    }

    fn register_node(
        &self,
        info: NodeInfo,
        ttl_seconds: u64,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.directory.register(info, ttl_seconds);
        Box::pin(std::future::ready(Ok(())))
    }

    fn nodes(&self) -> BoxFuture<'static, Result<Vec<NodeInfo>, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.directory.nodes())))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        // No task of its own: the queue closes when the broker is dropped.
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomName;

    #[tokio::test]
    async fn delivers_only_channels_with_interest_in_order() {
        let (broker, mut rx) = MemoryBroker::new(16);
        let lobby = Channel::Room(RoomName::parse("lobby").unwrap());
        let other = Channel::Room(RoomName::parse("other").unwrap());
        broker.subscribe(&lobby).await.unwrap();
        broker
            .publish(other.clone(), Bytes::from_static(b"0"))
            .await
            .unwrap();
        for i in 0..3 {
            broker
                .publish(lobby.clone(), Bytes::from(i.to_string()))
                .await
                .unwrap();
        }
        broker
            .publish(Channel::Broadcast, Bytes::from_static(b"b"))
            .await
            .unwrap();
        let mut next = async || match rx.recv().await.unwrap() {
            BrokerEvent::Publication(p) => p,
            other => panic!("{other:?}"),
        };
        for i in 0..3 {
            let p = next().await;
            assert_eq!(
                (p.channel.clone(), p.payload),
                (lobby.clone(), Bytes::from(i.to_string()))
            );
        }
        assert_eq!(next().await.channel, Channel::Broadcast);
        broker.unsubscribe(&lobby).await.unwrap();
        assert_eq!(broker.subscription_count(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_is_an_error_not_a_wait() {
        let (broker, _rx) = MemoryBroker::new(1);
        broker
            .publish(Channel::Broadcast, Bytes::from_static(b"1"))
            .await
            .unwrap();
        assert_eq!(
            broker
                .publish(Channel::Broadcast, Bytes::from_static(b"2"))
                .await,
            Err(BrokerError::Overloaded)
        );
    }
}
