//! One subscriber connection to one Redis master, and the two tasks it owns:
//! the reader, which hands the connection's messages to the hub (a cheap
//! hand-off, so fred's message channel never fills; probes are answered
//! here), and the watcher, which turns fred's connection events into
//! reconciler events. Dropping a [`Conn`] aborts both and closes the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::{ConnectHandle, Message};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::RedisSettings;
use super::fleet::Health;
use super::shared::{Event, Shared};
use super::topology::Addr;
use bytes::Bytes;

use crate::broker::BrokerEvent;
use crate::cluster::Control;
use crate::protocol::{Channel, Publication};

/// A connection fred has established, not yet adopted.
pub(super) struct Opened {
    pub(super) addr: Addr,
    pub(super) generation: u64,
    pub(super) client: Client,
    pub(super) connection: ConnectHandle,
    pub(super) messages: broadcast::Receiver<Message>,
}

/// Connects a subscriber client to `addr`, subscribed to its messages
/// before the connection exists so that none is missed.
pub(super) async fn connect(
    settings: &RedisSettings,
    addr: &Addr,
) -> Result<(Client, ConnectHandle, broadcast::Receiver<Message>), String> {
    let client = super::client::subscriber(settings, addr).map_err(|e| e.to_string())?;
    let messages = client.message_rx();
    let connection = client.connect();
    match tokio::time::timeout(
        settings.connect_timeout + Duration::from_millis(500),
        client.wait_for_connect(),
    )
    .await
    {
        Ok(Ok(())) => Ok((client, connection, messages)),
        Ok(Err(e)) => {
            connection.abort();
            Err(e.to_string())
        }
        Err(_) => {
            connection.abort();
            Err("connect timed out".into())
        }
    }
}

/// One subscriber connection.
pub(super) struct Conn {
    pub(super) generation: u64,
    pub(super) client: Client,
    pub(super) probe: Option<Str>,
    pub(super) health: Arc<Health>,
    /// The Function library is loaded on this master (since it connected).
    pub(super) functions: bool,
    connection: Option<ConnectHandle>,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Conn {
    /// Adopts an opened connection: starts its reader and watcher.
    pub(super) fn open(
        shared: &Arc<Shared>,
        opened: Opened,
        inbound: mpsc::Sender<BrokerEvent>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Conn {
        let Opened {
            addr,
            generation,
            client,
            connection,
            messages,
        } = opened;
        let health = Arc::new(Health::default());
        let reader = shared.tasks.spawn(read(
            messages,
            shared.clone(),
            inbound,
            health.clone(),
            addr.clone(),
        ));
        let watcher = shared.tasks.spawn(watch_connection(
            client.reconnect_rx(),
            client.error_rx(),
            addr,
            generation,
            events,
            health.clone(),
            shared.clone(),
        ));
        Conn {
            generation,
            client,
            probe: None,
            health,
            functions: false,
            connection: Some(connection),
            tasks: vec![reader, watcher],
            shared: shared.clone(),
        }
    }

    /// Whether the connection can take commands now.
    pub(super) fn usable(&self) -> bool {
        self.client.is_connected()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        let (client, connection) = (self.client.clone(), self.connection.take());
        // Closing politely needs an await; never let it outlive a second.
        self.shared.tasks.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
            if let Some(c) = connection {
                c.abort();
            }
        });
    }
}

/// Hands a connection's messages to the hub: a cheap hand-off, so fred's
/// message channel never fills; probes are answered here. Messages lost to a
/// lagging reader are counted, and every channel of the connection is
/// checked against history, so the hub fills what was lost.
async fn read(
    mut messages: broadcast::Receiver<Message>,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<BrokerEvent>,
    health: Arc<Health>,
    addr: Addr,
) {
    loop {
        let message = match messages.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                tracing::error!(
                    lost,
                    "redis messages lost: the inbound reader fell behind; checking its channels"
                );
                shared.metrics.broker_inbound_lost.inc_by(lost);
                let names = shared.table().live_names_on(&addr);
                let channels = names.iter().filter_map(|n| shared.names.parse(n)).collect();
                if inbound.send(BrokerEvent::Check(channels)).await.is_err() {
                    break;
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let received_at = Instant::now();
        if shared.names.is_probe(&message.channel) {
            let now = shared.now();
            if let Some(sent) = message.value.as_str().and_then(|v| v.parse::<u64>().ok()) {
                shared
                    .metrics
                    .broker_inbound_lag
                    .observe(now.saturating_sub(sent) as f64 / 1e9);
            }
            health.seen(now);
            shared.refresh_state();
            continue;
        }
        let event = if message.channel == shared.control {
            let Some(control) = message.value.as_bytes().and_then(Control::decode) else {
                tracing::debug!("unreadable control message ignored");
                continue;
            };
            BrokerEvent::Control(control)
        } else {
            let Some(channel) = shared.names.parse(&message.channel) else {
                continue;
            };
            // The payload's bytes are handed on as they came from the socket.
            let Some(payload) = message.value.into_bytes() else {
                continue;
            };
            match presence_move(&channel, &payload) {
                Some(event) => event,
                None => {
                    let (offset, epoch, payload) = split_offset(payload);
                    BrokerEvent::Publication(Publication {
                        channel,
                        payload,
                        received_at,
                        offset,
                        epoch,
                    })
                }
            }
        };
        if inbound.send(event).await.is_err() {
            break;
        }
    }
}

/// `gw_presence`'s `\0j:<user>` / `\0l:<user>` on a room channel.
fn presence_move(channel: &Channel, payload: &[u8]) -> Option<BrokerEvent> {
    let Channel::Room(room) = channel else {
        return None;
    };
    let (joined, user) = if let Some(user) = payload.strip_prefix(b"\0j:") {
        (true, user)
    } else {
        (false, payload.strip_prefix(b"\0l:")?)
    };
    Some(BrokerEvent::Presence {
        room: room.clone(),
        user: std::str::from_utf8(user).ok()?.into(),
        joined,
    })
}

/// Splits `gw_publish`'s `\0h:<offset>:<epoch>:<data>` into its parts
/// without copying; anything else is data without an offset.
fn split_offset(payload: Bytes) -> (Option<u64>, Bytes, Bytes) {
    let Some(rest) = payload.strip_prefix(b"\0h:") else {
        return (None, Bytes::new(), payload);
    };
    let mut parts = rest.splitn(3, |b| *b == b':');
    let (Some(offset_digits), Some(epoch), Some(_)) = (parts.next(), parts.next(), parts.next())
    else {
        return (None, Bytes::new(), payload);
    };
    let Some(offset) = std::str::from_utf8(offset_digits)
        .ok()
        .and_then(|o| o.parse::<u64>().ok())
    else {
        return (None, Bytes::new(), payload);
    };
    // "\0h:" + offset + ':' + epoch + ':' + data
    let epoch_at = 3 + offset_digits.len() + 1;
    let data_at = epoch_at + epoch.len() + 1;
    (
        Some(offset),
        payload.slice(epoch_at..epoch_at + epoch.len()),
        payload.slice(data_at..),
    )
}

/// Turns fred's connection events into reconciler events.
async fn watch_connection(
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    mut errors: broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
    addr: Addr,
    generation: u64,
    events: mpsc::UnboundedSender<Event>,
    health: Arc<Health>,
    shared: Arc<Shared>,
) {
    loop {
        let event = tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => Event::Reconnected(addr.clone(), generation),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            e = errors.recv() => match e {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Down at once; the reconciler catches up after its pass.
                    health.unsubscribed();
                    shared.refresh_state();
                    Event::Lost(addr.clone(), generation)
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if events.send(event).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_moves_are_read_on_room_channels_only() {
        let room = Channel::parse("room:lobby").unwrap();
        match presence_move(&room, b"\0j:alice") {
            Some(BrokerEvent::Presence { user, joined, .. }) => {
                assert_eq!((&*user, joined), ("alice", true))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            presence_move(&room, b"\0l:bob"),
            Some(BrokerEvent::Presence { joined: false, .. })
        ));
        assert!(presence_move(&room, b"{\"a\":1}").is_none());
        assert!(presence_move(&Channel::Broadcast, b"\0j:alice").is_none());
    }

    #[test]
    fn offsets_are_split_from_data_without_parsing_it() {
        let (o, e, d) = split_offset(Bytes::from_static(b"\0h:42:k3Jd:{\"a\":\"x:y\"}"));
        assert_eq!(
            (o, &e[..], &d[..]),
            (Some(42), &b"k3Jd"[..], &br#"{"a":"x:y"}"#[..])
        );
        for plain in [
            &b"{\"a\":1}"[..],
            b"\0h:",
            b"\0h:x:e:d",
            b"\0h:1:e",
            b"hello",
        ] {
            let (o, e, d) = split_offset(Bytes::copy_from_slice(plain));
            assert_eq!((o, e.len(), &d[..]), (None, 0, plain), "{plain:?}");
        }
    }
}
