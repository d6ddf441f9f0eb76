//! One socket: a single task that selects over inbound frames, its outbox,
//! a command waiting on the broker, the heartbeat and the token's expiry (one
//! task, not a reader and a writer, because every task and channel costs
//! memory on every idle socket).
//!
//! Everything the socket sends goes through its outbox and is written by
//! [`Session::flush_outbox`]: events, replies, pings. A command that waits on
//! the broker (a first subscribe during a Redis failover can take seconds)
//! runs as the session's one *pending* future: the session keeps writing its
//! outbox, answering heartbeats and watching expiry meanwhile, and reads the
//! next inbound frame only once the command is done, so replies keep the
//! order of requests.
//!
//! The session owns the socket's room set and leaves every channel and the
//! registry when it ends, however it ends (close, error, timeout, panic), so
//! the node's tables never keep an entry for a gone socket.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use rustc_hash::FxBuildHasher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::{Grants, Identity};
use crate::hub::{ConnId, Owner, Subscriber};
use crate::limits::{ConnPermit, TokenBucket};
use crate::node::Node;
use crate::outbox::{Outbox, Outgoing, Status};
use crate::protocol::{Channel, Disconnect, End, EndedBy, Format, RoomName, Since};

mod commands;
#[cfg(test)]
mod tests;

/// How long a closing socket may take to deliver its close frame and get the
/// peer's reply. A peer that stopped reading and then resumes needs a few
/// seconds: its TCP window reopens only on the sender's zero-window probe,
/// whose timer backs off (measured here: 2.0 s after a 4008).
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// Rate-limit strikes older than this are forgotten.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// Most frames written in one batch (one flush): a long replay is written in
/// several, so a write timeout measures progress, not the whole replay.
const MAX_BATCH: usize = 512;
/// A deadline "never": far beyond any token, and inside tokio's timer range.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// What admission established about a socket before the upgrade.
pub struct Admitted {
    /// The verified token.
    pub identity: Identity,
    /// Wire format chosen by subprotocol.
    pub format: Format,
    /// The socket's places in the node's counts, released when it ends.
    pub permit: ConnPermit,
    /// Where the user channel and `broadcast` resume from.
    pub resume_at: ResumeAt,
}

/// Positions a connecting client resumes its user channel and `broadcast`
/// from (`user_offset`/`user_epoch`, `broadcast_offset`/`broadcast_epoch`).
#[derive(Debug, Clone, Default)]
pub struct ResumeAt {
    /// The user channel's last position seen.
    pub user: Option<Since>,
    /// `broadcast`'s last position seen.
    pub broadcast: Option<Since>,
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
        resume_at,
    } = admitted;
    let cfg = &node.config;
    let outbox = Arc::new(Outbox::new(
        cfg.websocket.outbox_max_frames,
        cfg.websocket.outbox_max_bytes,
    ));
    let bucket = (cfg.limits.messages_per_second > 0).then(|| {
        TokenBucket::new(
            cfg.limits.messages_per_second,
            cfg.limits.message_burst.max(1),
        )
    });
    let expires = deadline_of(identity.expires_at, cfg.auth.leeway_seconds);
    let me = Subscriber { outbox, format };
    // The user channel and broadcast are held until `welcome` is queued, so
    // that `welcome` is the first frame whatever is published meanwhile.
    let user_channel = Channel::User(identity.user.clone());
    me.outbox.hold(&user_channel);
    me.outbox.hold(&Channel::Broadcast);
    // Nothing above can fail or panic; from here on the socket is in the
    // tables, and everything runs under the guard that takes it out again.
    let id = node.hub.register_as(me.clone(), Some(owner_of(&identity)));
    let mut session = Session {
        node: node.clone(),
        ws,
        id,
        me,
        user: identity.user,
        rooms_grant: identity.rooms,
        publish_grant: identity.publish,
        expires,
        rooms: HashSet::default(),
        user_joined: false,
        bucket,
        strikes: 0,
        strikes_since: Instant::now(),
        bad_frames: 0,
        last_seen: Instant::now(),
        batch: VecDeque::new(),
        pending: None,
        resume_at: Some(Box::new(resume_at)),
    };
    let end = match AssertUnwindSafe(session.serve()).catch_unwind().await {
        Ok(end) => end,
        Err(_) => {
            tracing::error!(conn = id, "session panicked; socket dropped");
            End::by(EndedBy::Server)
        }
    };
    node.metrics.session_ended(end);
    // Leaving is boxed for the same reason as the branches of the event loop.
    Box::pin(session.leave_everything()).await;
    drop(permit);
}

/// Whose token a socket holds, as disconnect and revoke select sockets.
fn owner_of(identity: &Identity) -> Owner {
    Owner {
        user: identity.user.clone(),
        jti: identity.jti.clone(),
        issued_at: identity.issued_at,
    }
}

/// The instant a token expiring at `unix_secs` (plus `leeway`) stops being
/// valid. Saturates: an absurd `exp` is "never", not an overflow.
pub(crate) fn deadline_of(unix_secs: u64, leeway: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = Duration::from_secs(unix_secs.saturating_add(leeway).saturating_sub(now));
    let start = Instant::now();
    start
        .checked_add(left.min(FAR_FUTURE))
        .unwrap_or(start + Duration::from_secs(86_400))
}

/// A command waiting on the broker; resolves to what the session applies.
type Pending = Pin<Box<dyn Future<Output = commands::Done> + Send>>;

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
    pending: Option<Pending>,
    /// Taken by the join at connect (boxed: idle sockets carry a pointer).
    resume_at: Option<Box<ResumeAt>>,
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
    async fn serve(&mut self) -> End {
        self.pending = Some(self.join());
        match self.event_loop().await {
            Flow::Close(reason) => {
                Box::pin(self.close(reason)).await;
                End::closed(reason)
            }
            Flow::PeerClosed => {
                // tungstenite writes the close reply on the next poll; poll
                // until the handshake completes so the peer sees a clean close.
                let ws = &mut self.ws;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                End::by(EndedBy::Client)
            }
            Flow::Gone | Flow::Continue => End::by(EndedBy::Network),
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
                done = poll_pending(&mut self.pending), if self.pending.is_some() => {
                    self.pending = None;
                    // A command starts on an inbound frame (or the upgrade),
                    // and nothing was read while it ran: that time is not
                    // the peer's silence.
                    self.last_seen = Instant::now();
                    self.apply(done)
                }
                // The next request is read once the previous one is answered.
                inbound = self.ws.next(), if self.pending.is_none() => {
                    self.last_seen = Instant::now();
                    match inbound {
                        // Boxed: the inbound path is rare next to the idle
                        // wait, and inlining its state would make every idle
                        // socket's task as large as its largest branch.
                        Some(Ok(message)) => Box::pin(self.on_message(message)).await,
                        Some(Err(e)) => self.on_read_error(e),
                        None => Flow::Gone,
                    }
                }
                _ = heartbeat.tick() => {
                    if self.pending.is_none() && self.last_seen.elapsed() > silence_limit {
                        Flow::Close(Disconnect::HeartbeatTimeout)
                    } else {
                        self.queue(Message::Ping(Default::default()))
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

    /// A read error: the peer broke the protocol (close with 1002 / 1007 /
    /// 1009, counted by kind), or the connection is gone.
    fn on_read_error(&mut self, e: WsError) -> Flow {
        let kind = match &e {
            WsError::Capacity(_) => return Flow::Close(Disconnect::TooBig),
            WsError::Utf8(_) => "utf8",
            WsError::Protocol(p) => match p {
                ProtocolError::ResetWithoutClosingHandshake => return Flow::Gone,
                ProtocolError::NonZeroReservedBits => "reserved_bits",
                ProtocolError::UnknownControlFrameType(_)
                | ProtocolError::UnknownDataFrameType(_)
                | ProtocolError::InvalidOpcode(_) => "reserved_opcode",
                ProtocolError::UnmaskedFrameFromClient => "unmasked",
                ProtocolError::ControlFrameTooBig | ProtocolError::FragmentedControlFrame => {
                    "control_frame"
                }
                ProtocolError::UnexpectedContinueFrame | ProtocolError::ExpectedFragment(_) => {
                    "continuation"
                }
                ProtocolError::InvalidCloseSequence => "close_frame",
                _ => "other",
            },
            _ => return Flow::Gone,
        };
        self.node
            .metrics
            .protocol_violations
            .with_label_values(&[kind])
            .inc();
        if kind == "utf8" {
            Flow::Close(Disconnect::InvalidPayload)
        } else {
            Flow::Close(Disconnect::ProtocolError)
        }
    }

    /// Writes up to [`MAX_BATCH`] queued frames: `feed` each, one flush.
    async fn flush_outbox(&mut self) -> Flow {
        let outbox = self.me.outbox.clone();
        let status = outbox.take(&mut self.batch, MAX_BATCH);
        if status == Status::Close(Disconnect::SlowConsumer) {
            self.batch.clear();
            return Flow::Close(Disconnect::SlowConsumer);
        }
        if !self.batch.is_empty() {
            let oldest = self.batch.iter().filter_map(|o| o.received_at).min();
            let frames = self.batch.len();
            let bytes: usize = self.batch.iter().map(|o| o.message.len()).sum();
            let write_timeout = Duration::from_millis(self.node.config.websocket.write_timeout_ms);
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
            // Wake-ups consumed above, and frames left beyond the batch, must
            // not be stranded.
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
        if let Message::Close(_) = message {
            return Flow::PeerClosed;
        }
        // Every inbound frame counts against the rate, control frames too: a
        // ping flood costs a pong each.
        if let Some(flow) = self.rate_limited() {
            return flow;
        }
        match message {
            Message::Text(text) => self.on_frame(text.as_bytes(), false),
            Message::Binary(bin) => self.on_frame(&bin, true),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {
                Flow::Continue
            }
        }
    }

    /// `Some` when the frame exceeded the socket's rate: an `error` frame, or
    /// after `limits.rate_limit_strikes` of them within 10 s a 4029 close.
    fn rate_limited(&mut self) -> Option<Flow> {
        let bucket = self.bucket.as_mut()?;
        if bucket.take(Instant::now()) {
            return None;
        }
        self.node
            .metrics
            .frames_in
            .with_label_values(&["invalid"])
            .inc();
        if self.strikes_since.elapsed() > STRIKE_WINDOW {
            self.strikes = 0;
            self.strikes_since = Instant::now();
        }
        self.strikes += 1;
        if self.strikes >= self.node.config.limits.rate_limit_strikes {
            return Some(Flow::Close(Disconnect::RateLimited));
        }
        Some(self.error(
            None,
            crate::protocol::ErrorCode::RateLimited,
            "message rate exceeded; frame dropped",
        ))
    }

    /// Queues one of the socket's own frames (reply, ping) behind what is
    /// already queued. A full outbox has marked itself; the next flush closes.
    fn queue(&mut self, message: Message) -> Flow {
        let _ = self.me.outbox.push(message);
        Flow::Continue
    }

    /// Sends a close frame and lingers briefly for the peer's reply, so the
    /// client sees the code; a peer that never answers is dropped.
    async fn close(&mut self, reason: Disconnect) {
        self.node.metrics.closed(reason);
        // What is already queued (an `error` frame explaining the close, a
        // `welcome`) goes first; a slow consumer's queue was discarded, and a
        // silent peer would only make us wait.
        if !matches!(
            reason,
            Disconnect::SlowConsumer | Disconnect::HeartbeatTimeout
        ) {
            for _ in 0..4 {
                if self.me.outbox.is_empty() || matches!(self.flush_outbox().await, Flow::Gone) {
                    break;
                }
            }
        }
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
        // A command still waiting on the broker finishes first (bounded by
        // the broker's own timeouts), so what it joined is left too.
        if let Some(pending) = self.pending.take() {
            let done = pending.await;
            self.settle(&done);
        }
        let hub = self.node.hub.clone();
        for room in std::mem::take(&mut self.rooms) {
            drop(self.node.presence.leave(&room, &self.user));
            hub.unsubscribe(&Channel::Room(room), self.id).await;
        }
        if self.user_joined {
            hub.unsubscribe(&Channel::User(self.user.clone()), self.id)
                .await;
        }
        hub.unregister(self.id);
    }
}

/// Polls the pending command; only called while there is one.
async fn poll_pending(pending: &mut Option<Pending>) -> commands::Done {
    match pending {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
