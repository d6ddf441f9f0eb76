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
use crate::protocol::Publication;

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
    connection: Option<ConnectHandle>,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Conn {
    /// Adopts an opened connection: starts its reader and watcher.
    pub(super) fn open(
        shared: &Arc<Shared>,
        opened: Opened,
        inbound: mpsc::Sender<Publication>,
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
        let reader = shared
            .tasks
            .spawn(read(messages, shared.clone(), inbound, health.clone()));
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
/// message channel never fills; probes are answered here.
async fn read(
    mut messages: broadcast::Receiver<Message>,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Publication>,
    health: Arc<Health>,
) {
    loop {
        let message = match messages.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                tracing::error!(lost, "redis messages lost: the inbound reader fell behind");
                shared.metrics.broker_inbound_lost.inc_by(lost);
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
        let Some(channel) = shared.names.parse(&message.channel) else {
            continue;
        };
        // The payload's bytes are handed on as they came from the socket.
        let Some(payload) = message.value.into_bytes() else {
            continue;
        };
        if inbound
            .send(Publication {
                channel,
                payload,
                received_at,
            })
            .await
            .is_err()
        {
            break;
        }
    }
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
