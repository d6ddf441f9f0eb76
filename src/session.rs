//! One socket: a single task that selects over inbound frames, its outbox,
//! the heartbeat and the token's expiry (one task, not a reader and a writer,
//! because every task and channel costs memory on every idle socket).
//!
//! The session owns the socket's room set and leaves every channel and the
//! registry when it ends, however it ends (close, error, timeout, panic), so
//! the node's tables never keep an entry for a gone socket.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use rustc_hash::FxBuildHasher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

use crate::auth::{Grants, Identity};
use crate::broker::BrokerError;
use crate::hub::{ConnId, Subscriber};
use crate::limits::{ConnPermit, TokenBucket};
use crate::node::Node;
use crate::outbox::{Outbox, Outgoing, Status};
use crate::protocol::{
    Channel, ClientFrame, Disconnect, ErrorCode, Format, RequestId, RoomName, ServerFrame,
    decode_client_frame, encode_server_frame,
};

/// How long a closing socket may take to deliver its close frame and get the
/// peer's reply. A peer that stopped reading and then resumes needs a few
/// seconds: its TCP window reopens only on the sender's zero-window probe,
/// whose timer backs off (measured here: 2.0 s after a 4008).
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// Rate-limit strikes older than this are forgotten.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// What admission established about a socket before the upgrade.
pub struct Admitted {
    /// The verified token.
    pub identity: Identity,
    /// Wire format chosen by subprotocol.
    pub format: Format,
    /// The socket's places in the node's counts, released when it ends.
    pub permit: ConnPermit,
}

/// Runs one socket until it closes, then removes it from every table.
pub async fn run<S>(node: Arc<Node>, ws: WebSocketStream<S>, admitted: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Admitted {
        identity,
        format,
        permit,
    } = admitted;
    let cfg = &node.config;
    let outbox = Arc::new(Outbox::new(
        cfg.websocket.outbox_max_frames,
        cfg.websocket.outbox_max_bytes,
    ));
    let me = Subscriber { outbox, format };
    let id = node.hub.register(me.clone());
    // Upgraded just as the drain took its snapshot: close with the others.
    if node.lifecycle.phase() != crate::lifecycle::Phase::Running {
        me.outbox.close(Disconnect::Draining);
    }
    let bucket = (cfg.limits.messages_per_second > 0).then(|| {
        TokenBucket::new(
            cfg.limits.messages_per_second,
            cfg.limits.message_burst.max(1),
        )
    });
    let mut session = Session {
        expires: deadline_of(identity.expires_at + cfg.auth.leeway_seconds),
        user: identity.user.clone(),
        rooms_grant: identity.rooms,
        publish_grant: identity.publish,
        node: node.clone(),
        ws,
        id,
        me,
        rooms: HashSet::default(),
        user_joined: false,
        bucket,
        strikes: 0,
        strikes_since: Instant::now(),
        bad_frames: 0,
        last_seen: Instant::now(),
        batch: VecDeque::new(),
    };
    let outcome = AssertUnwindSafe(session.serve()).catch_unwind().await;
    // Leaving is boxed for the same reason as the branches of the event loop.
    if outcome.is_err() {
        tracing::error!(conn = id, "session panicked; socket dropped");
        node.metrics.closed(Disconnect::Internal);
    }
    Box::pin(session.leave_everything()).await;
    drop(permit);
}

fn deadline_of(unix_secs: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Instant::now() + Duration::from_secs(unix_secs.saturating_sub(now))
}

struct Session<S> {
    node: Arc<Node>,
    ws: WebSocketStream<S>,
    id: ConnId,
    me: Subscriber,
    user: Arc<str>,
    rooms_grant: Grants,
    publish_grant: Grants,
    expires: Instant,
    rooms: HashSet<RoomName, FxBuildHasher>,
    user_joined: bool,
    bucket: Option<TokenBucket>,
    strikes: u32,
    strikes_since: Instant,
    bad_frames: u32,
    last_seen: Instant,
    batch: VecDeque<Outgoing>,
}

/// What to do after handling one thing.
enum Flow {
    Continue,
    /// Close with this code (after flushing, unless it is a slow consumer).
    Close(Disconnect),
    /// The socket is gone; nothing more can be written.
    Gone,
    /// The peer sent a close frame; its reply is queued and needs a flush.
    PeerClosed,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn serve(&mut self) {
        let user_channel = Channel::User(self.user.clone());
        match Box::pin(
            self.node
                .hub
                .subscribe(&user_channel, self.id, self.me.clone()),
        )
        .await
        {
            Ok(_) => self.user_joined = true,
            Err(e) => {
                tracing::warn!(error = %e, "user channel subscribe failed; closing socket");
                self.close(Disconnect::Internal).await;
                return;
            }
        }
        let welcome = ServerFrame::Welcome {
            conn: format!("{:x}", self.id),
            user: self.user.clone(),
            node: self.node.id.clone(),
            heartbeat: self.node.config.websocket.heartbeat_seconds,
        };
        if !matches!(Box::pin(self.reply(welcome)).await, Flow::Continue) {
            return;
        }
        match self.event_loop().await {
            Flow::Close(reason) => Box::pin(self.close(reason)).await,
            Flow::PeerClosed => {
                // tungstenite writes the close reply on the next poll; poll
                // until the handshake completes so the peer sees a clean close.
                let ws = &mut self.ws;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            Flow::Continue | Flow::Gone => {}
        }
    }

    async fn event_loop(&mut self) -> Flow {
        let ws_cfg = &self.node.config.websocket;
        let period = Duration::from_secs(ws_cfg.heartbeat_seconds);
        let silence_limit = Duration::from_secs(ws_cfg.heartbeat_timeout_seconds);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry = tokio::time::sleep_until(self.expires);
        tokio::pin!(expiry);
        let outbox = self.me.outbox.clone();
        loop {
            // Not `biased`: under sustained fan-out the outbox is always
            // ready, and a fixed order would starve inbound frames, pongs,
            // heartbeats and token expiry.
            let flow = tokio::select! {
                _ = outbox.ready() => Box::pin(self.flush_outbox()).await,
                inbound = self.ws.next() => {
                    self.last_seen = Instant::now();
                    match inbound {
                        // Boxed: the inbound path is rare next to the idle
                        // wait, and inlining its state would make every idle
                        // socket's task as large as its largest branch.
                        Some(Ok(message)) => Box::pin(self.on_message(message)).await,
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                            Flow::Close(Disconnect::TooBig)
                        }
                        Some(Err(_)) | None => Flow::Gone,
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() > silence_limit {
                        Flow::Close(Disconnect::HeartbeatTimeout)
                    } else {
                        Box::pin(self.send(Message::Ping(Default::default()))).await
                    }
                }
                _ = &mut expiry => Flow::Close(Disconnect::TokenExpired),
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
            if expiry.deadline() != self.expires {
                expiry.as_mut().reset(self.expires);
            }
        }
    }

    /// Writes everything queued in one batch: `feed` each frame, one flush.
    async fn flush_outbox(&mut self) -> Flow {
        let status = self.me.outbox.take(&mut self.batch);
        if status == Status::Close(Disconnect::SlowConsumer) {
            self.batch.clear();
            return Flow::Close(Disconnect::SlowConsumer);
        }
        if !self.batch.is_empty() {
            let oldest = self.batch.iter().filter_map(|o| o.received_at).min();
            let frames = self.batch.len();
            let bytes: usize = self.batch.iter().map(|o| o.message.len()).sum();
            let write_timeout = Duration::from_millis(self.node.config.websocket.write_timeout_ms);
            let outbox = self.me.outbox.clone();
            let written = {
                let (ws, batch) = (&mut self.ws, &mut self.batch);
                let write = tokio::time::timeout(write_timeout, async {
                    for out in batch.drain(..) {
                        ws.feed(out.message).await?;
                    }
                    ws.flush().await
                });
                tokio::pin!(write);
                // A peer that stopped reading blocks this write; the queue behind
                // it may overflow meanwhile, and that must close it now (4008),
                // not when the write finally times out.
                loop {
                    tokio::select! {
                        written = &mut write => break written,
                        _ = outbox.ready() => {
                            if outbox.closing() == Some(Disconnect::SlowConsumer) {
                                break Ok(Err(WsError::AlreadyClosed));
                            }
                        }
                    }
                }
            };
            if outbox.closing() == Some(Disconnect::SlowConsumer) {
                self.batch.clear();
                return Flow::Close(Disconnect::SlowConsumer);
            }
            // Wake-ups consumed above must not strand frames queued meanwhile.
            outbox.rearm();
            if !matches!(written, Ok(Ok(()))) {
                self.batch.clear();
                return Flow::Gone;
            }
            let m = &self.node.metrics;
            m.frames_out.inc_by(frames as u64);
            m.bytes_out.inc_by(bytes as u64);
            if let Some(t) = oldest {
                m.fanout_latency.observe(t.elapsed().as_secs_f64());
            }
            // A burst can leave a large buffer behind; idle sockets keep none.
            if self.batch.capacity() > 64 {
                self.batch = VecDeque::new();
            }
        }
        match status {
            Status::Close(reason) => Flow::Close(reason),
            Status::Open => Flow::Continue,
        }
    }

    async fn on_message(&mut self, message: Message) -> Flow {
        match message {
            Message::Text(text) => self.on_frame(text.as_bytes(), false).await,
            Message::Binary(bin) => self.on_frame(&bin, true).await,
            Message::Close(_) => Flow::PeerClosed,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Flow::Continue,
        }
    }

    async fn on_frame(&mut self, payload: &[u8], binary: bool) -> Flow {
        // One Arc clone frees `self` for `&mut` calls; cloning `Metrics` would
        // bump a reference count per metric on every inbound frame.
        let node = self.node.clone();
        let metrics = &node.metrics;
        if let Some(bucket) = &mut self.bucket
            && !bucket.take(std::time::Instant::now())
        {
            metrics.frames_in.with_label_values(&["invalid"]).inc();
            if self.strikes_since.elapsed() > STRIKE_WINDOW {
                self.strikes = 0;
                self.strikes_since = Instant::now();
            }
            self.strikes += 1;
            if self.strikes >= self.node.config.limits.rate_limit_strikes {
                return Flow::Close(Disconnect::RateLimited);
            }
            return self
                .error(
                    None,
                    ErrorCode::RateLimited,
                    "message rate exceeded; frame dropped",
                )
                .await;
        }
        let frame = match decode_client_frame(payload, binary) {
            Ok(frame) => frame,
            Err(e) => {
                metrics.frames_in.with_label_values(&["invalid"]).inc();
                self.bad_frames += 1;
                if self.bad_frames >= self.node.config.websocket.max_bad_frames {
                    return Flow::Close(Disconnect::PolicyViolation);
                }
                return self.error(e.id, ErrorCode::BadFrame, &e.message).await;
            }
        };
        match frame {
            ClientFrame::Subscribe { room, id } => {
                metrics.frames_in.with_label_values(&["subscribe"]).inc();
                self.subscribe(&room, id).await
            }
            ClientFrame::Unsubscribe { room, id } => {
                metrics.frames_in.with_label_values(&["unsubscribe"]).inc();
                let Some(room) = RoomName::parse(&room) else {
                    return self
                        .error(id, ErrorCode::BadRoom, "invalid room name")
                        .await;
                };
                if self.rooms.remove(&room) {
                    self.node
                        .hub
                        .unsubscribe(&Channel::Room(room), self.id)
                        .await;
                }
                self.reply(ServerFrame::Ok { id }).await
            }
            ClientFrame::Publish { room, data, id } => {
                metrics.frames_in.with_label_values(&["publish"]).inc();
                let Some(room) = RoomName::parse(&room) else {
                    return self
                        .error(id, ErrorCode::BadRoom, "invalid room name")
                        .await;
                };
                if !self.publish_grant.allows(room.as_str()) {
                    return self
                        .error(
                            id,
                            ErrorCode::Forbidden,
                            "token does not allow publishing to this room",
                        )
                        .await;
                }
                match self.node.broker().publish(Channel::Room(room), data) {
                    Ok(()) => {
                        metrics.publications_in.with_label_values(&["client"]).inc();
                        self.reply(ServerFrame::Ok { id }).await
                    }
                    Err(e) => {
                        metrics.broker_publish_errors.inc();
                        let code = broker_error_code(&e);
                        self.error(id, code, &e.to_string()).await
                    }
                }
            }
            ClientFrame::Refresh { token, id } => {
                metrics.frames_in.with_label_values(&["refresh"]).inc();
                self.refresh(&token, id).await
            }
            ClientFrame::Ping { id } => {
                metrics.frames_in.with_label_values(&["ping"]).inc();
                self.reply(ServerFrame::Pong { id }).await
            }
        }
    }

    async fn subscribe(&mut self, room: &str, id: Option<RequestId>) -> Flow {
        let Some(room) = RoomName::parse(room) else {
            return self
                .error(
                    id,
                    ErrorCode::BadRoom,
                    "room names are 1-128 characters of A-Z a-z 0-9 _ - : . @",
                )
                .await;
        };
        if !self.rooms_grant.allows(room.as_str()) {
            return self
                .error(id, ErrorCode::Forbidden, "token does not allow this room")
                .await;
        }
        if self.rooms.contains(&room) {
            return self.reply(ServerFrame::Ok { id }).await;
        }
        if self.rooms.len() >= self.node.config.limits.max_rooms_per_socket {
            return self
                .error(id, ErrorCode::TooManyRooms, "room limit per socket reached")
                .await;
        }
        match self
            .node
            .hub
            .subscribe(&Channel::Room(room.clone()), self.id, self.me.clone())
            .await
        {
            Ok(_) => {
                self.rooms.insert(room);
                self.reply(ServerFrame::Ok { id }).await
            }
            Err(e) => self.error(id, broker_error_code(&e), &e.to_string()).await,
        }
    }

    async fn refresh(&mut self, token: &str, id: Option<RequestId>) -> Flow {
        // One Arc clone frees `self` for `&mut` calls; cloning `Metrics` would
        // bump a reference count per metric on every inbound frame.
        let node = self.node.clone();
        let metrics = &node.metrics;
        match self.node.verifier.verify(token) {
            Err(e) => {
                metrics.auth_failures.with_label_values(&[e.reason()]).inc();
                self.error(id, ErrorCode::BadToken, e.message()).await
            }
            Ok(identity) if identity.user != self.user => {
                metrics
                    .auth_failures
                    .with_label_values(&["sub_mismatch"])
                    .inc();
                self.error(
                    id,
                    ErrorCode::SubMismatch,
                    "refresh token names another user",
                )
                .await
            }
            Ok(identity) => {
                // Rooms already joined stay joined; the new grants apply to later subscribes.
                self.expires =
                    deadline_of(identity.expires_at + self.node.config.auth.leeway_seconds);
                self.rooms_grant = identity.rooms;
                self.publish_grant = identity.publish;
                self.reply(ServerFrame::Ok { id }).await
            }
        }
    }

    async fn error(&mut self, id: Option<RequestId>, code: ErrorCode, message: &str) -> Flow {
        self.node
            .metrics
            .errors_sent
            .with_label_values(&[code.code()])
            .inc();
        self.reply(ServerFrame::Error {
            id,
            code,
            message: message.to_string(),
        })
        .await
    }

    async fn reply(&mut self, frame: ServerFrame) -> Flow {
        self.send(encode_server_frame(self.me.format, &frame)).await
    }

    async fn send(&mut self, message: Message) -> Flow {
        let write_timeout = Duration::from_millis(self.node.config.websocket.write_timeout_ms);
        let len = message.len() as u64;
        match tokio::time::timeout(write_timeout, self.ws.send(message)).await {
            Ok(Ok(())) => {
                self.node.metrics.frames_out.inc();
                self.node.metrics.bytes_out.inc_by(len);
                Flow::Continue
            }
            _ => Flow::Gone,
        }
    }

    /// Sends a close frame and lingers briefly for the peer's reply, so the
    /// client sees the code; a peer that never answers is dropped.
    async fn close(&mut self, reason: Disconnect) {
        self.node.metrics.closed(reason);
        let frame = CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.reason().into(),
        };
        // A peer that missed its heartbeats will not answer: do not wait for it.
        let linger = if reason == Disconnect::HeartbeatTimeout {
            Duration::from_secs(1)
        } else {
            CLOSE_LINGER
        };
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(linger, async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }

    async fn leave_everything(&mut self) {
        let hub = self.node.hub.clone();
        for room in std::mem::take(&mut self.rooms) {
            hub.unsubscribe(&Channel::Room(room), self.id).await;
        }
        if self.user_joined {
            hub.unsubscribe(&Channel::User(self.user.clone()), self.id)
                .await;
        }
        hub.unregister(self.id);
    }
}

fn broker_error_code(e: &BrokerError) -> ErrorCode {
    match e {
        BrokerError::Overloaded => ErrorCode::Overloaded,
        _ => ErrorCode::BrokerUnavailable,
    }
}
