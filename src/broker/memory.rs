//! The embedded broker: a single node's in-process bus, the default.
//!
//! It behaves like the Redis bridge where it matters to the rest of the node:
//! publishes travel through it (one bounded queue, one order), and only
//! channels with local interest (plus broadcast) are delivered.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{BoxFuture, Broker, BrokerError, BrokerState, Inbound, Published};
use crate::protocol::{Channel, Publication};

/// In-process broker.
#[derive(Debug)]
pub struct MemoryBroker {
    // Touched on first-subscriber / last-subscriber transitions and publishes
    // only; a short std mutex is cheaper than a concurrent set here.
    subscribed: Mutex<HashSet<Channel>>,
    tx: mpsc::Sender<Publication>,
    state: watch::Sender<BrokerState>,
}

impl MemoryBroker {
    /// A broker whose inbound queue holds `capacity` publications.
    pub fn new(capacity: usize) -> (Arc<MemoryBroker>, Inbound) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (state, _) = watch::channel(BrokerState::Up);
        (
            Arc::new(MemoryBroker {
                subscribed: Mutex::new(HashSet::new()),
                tx,
                state,
            }),
            rx,
        )
    }

    fn subscribed(&self) -> std::sync::MutexGuard<'_, HashSet<Channel>> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, channel: Channel, payload: Bytes) -> Result<Published, BrokerError> {
        let interested = channel == Channel::Broadcast || self.subscribed().contains(&channel);
        if !interested {
            return Ok(Published::default());
        }
        let publication = Publication {
            channel,
            payload,
            received_at: Instant::now(),
        };
        self.tx
            .try_send(publication)
            .map(|()| Published::default())
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BrokerError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => BrokerError::Unavailable,
            })
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
        for i in 0..3 {
            let p = rx.recv().await.unwrap();
            assert_eq!(
                (p.channel.clone(), p.payload),
                (lobby.clone(), Bytes::from(i.to_string()))
            );
        }
        assert_eq!(rx.recv().await.unwrap().channel, Channel::Broadcast);
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
