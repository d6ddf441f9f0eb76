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

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::{Grants, Identity};
use crate::hub::{ConnId, Owner, Subscriber};
use crate::limits::{ConnPermit, TokenBucket};
use crate::node::Node;
use crate::outbox::{Outbox, Status};
use crate::protocol::{Channel, Disconnect, End, EndedBy, RoomName, Since, Subprotocol, pack};

pub use sse::{SseBody, SseWire};
pub use wire::Wire;

mod commands;
mod sse;
#[cfg(test)]
mod tests;
mod wire;

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
/// A `+batch` message holds frames up to this size (a frame larger than it
/// travels alone): big enough to carry a burst in one message, small enough
/// that a browser parses it in well under a frame's time.
const PACK_MAX_BYTES: usize = 64 * 1024;
/// A deadline "never": far beyond any token, and inside tokio's timer range.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// What admission established about a socket before the upgrade.
pub struct Admitted {
    /// The verified token.
    pub identity: Identity,
    /// Wire format (and batching) chosen by subprotocol.
    pub subprotocol: Subprotocol,
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
///
/// Not an `async fn`: the session is built first and only it and the permit
/// are captured, so the task does not also keep the moved-from arguments
/// (an `async fn` stores its arguments beside everything built from them,
/// which on every idle socket is a few hundred bytes of nothing).
pub fn run<W: Wire>(node: Arc<Node>, ws: W, admitted: Admitted) -> impl Future<Output = ()> + Send {
    let Admitted {
        identity,
        subprotocol,
        permit,
        resume_at,
    } = admitted;
    // From here on the socket is in the tables; the task takes it out
    // again however it ends (and `Drop` does, should it never run).
    let mut session = Session::new(node, ws, identity, subprotocol, resume_at);
    async move {
        let end = match AssertUnwindSafe(session.serve()).catch_unwind().await {
            Ok(end) => end,
            Err(_) => {
                tracing::error!(conn = session.id, "session panicked; socket dropped");
                End::by(EndedBy::Server)
            }
        };
        session.node.metrics.session_ended(end);
        // Leaving is boxed for the same reason as the branches of the event loop.
        Box::pin(session.leave_everything()).await;
        drop(permit);
    }
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

struct Session<W> {
    node: Arc<Node>,
    ws: W,
    id: ConnId,
    me: Subscriber,
    user: Arc<str>,
    rooms_grant: Grants,
    publish_grant: Grants,
    expires: Instant,
    /// When the next heartbeat ping is due.
    next_ping: Instant,
    /// When the outbox was last written (write coalescing).
    last_flush: Instant,
    /// A write is deferred to `last_flush + websocket.write_coalesce_ms`,
    /// to coalesce a burst.
    deferred: bool,
    /// `+batch` subprotocol: frames written together go as one array message.
    batch: bool,
    /// Rooms joined (a short list: `limits.max_rooms_per_socket`).
    rooms: Vec<RoomName>,
    user_joined: bool,
    bucket: Option<TokenBucket>,
    strikes: u32,
    strikes_since: Instant,
    bad_frames: u32,
    last_seen: Instant,
    pending: Option<Pending>,
    /// Every table was left (else `Drop` takes the socket out of the registry).
    left: bool,
}

impl<W> Drop for Session<W> {
    fn drop(&mut self) {
        // Only when the task never ran to its end (dropped before it was
        // polled, or at runtime shutdown): it had joined nothing yet, or
        // nothing that outlives the runtime.
        if !self.left {
            self.node.hub.unregister(self.id);
        }
    }
}

/// Why the event loop woke.
enum Woke {
    /// The outbox has something to write.
    Queued,
    /// The timer fired.
    Timer,
    /// Handled already.
    Decided(Flow),
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

impl<W: Wire> Session<W> {
    fn new(
        node: Arc<Node>,
        ws: W,
        identity: Identity,
        subprotocol: Subprotocol,
        resume_at: ResumeAt,
    ) -> Session<W> {
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
        let now = Instant::now();
        let expires = deadline_of(identity.expires_at, cfg.auth.leeway_seconds);
        let heartbeat = Duration::from_secs(cfg.websocket.heartbeat_seconds);
        let me = Subscriber {
            outbox,
            format: subprotocol.format,
        };
        // The user channel and broadcast are held until `welcome` is queued,
        // so that `welcome` is the first frame whatever is published meanwhile.
        me.outbox.hold(&Channel::User(identity.user.clone()));
        me.outbox.hold(&Channel::Broadcast);
        let id = node.hub.register_as(me.clone(), Some(owner_of(&identity)));
        let mut session = Session {
            ws,
            id,
            me,
            user: identity.user,
            left: false,
            rooms_grant: identity.rooms,
            publish_grant: identity.publish,
            expires,
            next_ping: now + heartbeat,
            // Long ago: the first write (`welcome`) is never deferred.
            last_flush: now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
            deferred: false,
            batch: subprotocol.batch,
            rooms: Vec::new(),
            user_joined: false,
            bucket,
            strikes: 0,
            strikes_since: now,
            bad_frames: 0,
            last_seen: now,
            pending: None,
            node,
        };
        // The first command: joining the user channel, resuming it and broadcast.
        session.pending = Some(session.join(resume_at));
        session
    }

    async fn serve(&mut self) -> End {
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
                    while let Some(Ok(_)) = ws.next_message().await {}
                })
                .await;
                End::by(EndedBy::Client)
            }
            Flow::Gone | Flow::Continue => End::by(EndedBy::Network),
        }
    }

    async fn event_loop(&mut self) -> Flow {
        let outbox = self.me.outbox.clone();
        // One timer per socket for everything timed (heartbeat, token
        // expiry, a deferred write): each armed timer costs an idle socket
        // memory and the runtime's timer wheel an entry.
        let timer = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(timer);
        loop {
            // Not `biased`: under sustained fan-out the outbox is always
            // ready, and a fixed order would starve inbound frames, pongs,
            // heartbeats and token expiry.
            // The arms that only need the session decide at once; the two
            // that write are awaited after the select, so no branch's value
            // (an inbound frame, a command's outcome) is kept across a write
            // in every idle socket's task.
            let woke = tokio::select! {
                // While a write is deferred the queue is written when the
                // timer says so; the wake-ups of the burst are not needed.
                _ = outbox.ready(), if !self.deferred => Woke::Queued,
                done = poll_pending(&mut self.pending), if self.pending.is_some() => {
                    self.pending = None;
                    // A command starts on an inbound frame (or the upgrade),
                    // and nothing was read while it ran: that time is not
                    // the peer's silence.
                    self.last_seen = Instant::now();
                    Woke::Decided(self.apply(done))
                }
                // The next request is read once the previous one is answered.
                inbound = self.ws.next_message(), if self.pending.is_none() => {
                    self.last_seen = Instant::now();
                    Woke::Decided(match inbound {
                        Some(Ok(message)) => self.on_message(message),
                        Some(Err(e)) => self.on_read_error(e),
                        None => Flow::Gone,
                    })
                }
                _ = &mut timer => Woke::Timer,
            };
            let flow = match woke {
                Woke::Decided(flow) => flow,
                Woke::Queued => self.on_queued().await,
                // Boxed: rare next to the idle wait.
                Woke::Timer => Box::pin(self.on_timer()).await,
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
            let deadline = self.next_deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
        }
    }

    /// The earliest of the heartbeat, the token's expiry and a deferred write.
    fn next_deadline(&self) -> Instant {
        let due = self.next_ping.min(self.expires);
        if self.deferred {
            due.min(self.flush_due())
        } else {
            due
        }
    }

    /// When a deferred write is due.
    fn flush_due(&self) -> Instant {
        self.last_flush + Duration::from_millis(self.node.config.websocket.write_coalesce_ms)
    }

    /// The outbox has something: write it now, or, if the last write was
    /// less than `websocket.write_coalesce_ms` ago (a burst), at that
    /// distance from it, so the burst goes out in fewer, larger writes.
    async fn on_queued(&mut self) -> Flow {
        if Instant::now() >= self.flush_due() {
            return Box::pin(self.flush_outbox()).await;
        }
        self.deferred = true;
        Flow::Continue
    }

    /// The timer fired: whichever of its deadlines are due.
    async fn on_timer(&mut self) -> Flow {
        let now = Instant::now();
        if now >= self.expires {
            return Flow::Close(Disconnect::TokenExpired);
        }
        if now >= self.next_ping {
            let ws_cfg = &self.node.config.websocket;
            let period = Duration::from_secs(ws_cfg.heartbeat_seconds);
            let silence_limit = Duration::from_secs(ws_cfg.heartbeat_timeout_seconds);
            // Like `MissedTickBehavior::Delay`: one ping, the next a period on.
            self.next_ping = now + period;
            if W::CLIENT_SPEAKS
                && self.pending.is_none()
                && self.last_seen.elapsed() > silence_limit
            {
                return Flow::Close(Disconnect::HeartbeatTimeout);
            }
            // Queued like any frame; written at once unless a write is deferred.
            let _ = self.queue(Message::Ping(Default::default()));
            self.me.outbox.forget_floors();
        }
        if self.deferred && now >= self.flush_due() {
            self.deferred = false;
            return self.flush_outbox().await;
        }
        Flow::Continue
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
        // Taken into a buffer of this write's own: an idle socket keeps none.
        let mut batch = VecDeque::new();
        let status = outbox.take(&mut batch, MAX_BATCH);
        if status == Status::Close(Disconnect::SlowConsumer) {
            return Flow::Close(Disconnect::SlowConsumer);
        }
        if !batch.is_empty() {
            let oldest = batch.iter().filter_map(|o| o.received_at).min();
            let frames = batch.len();
            let bytes: usize = batch.iter().map(|o| o.message.len()).sum();
            let write_timeout = Duration::from_millis(self.node.config.websocket.write_timeout_ms);
            // `+batch`: the frames of this write packed into array messages;
            // otherwise written as queued, with no list of their own.
            let packed = (self.batch && frames > 1).then(|| {
                pack(
                    self.me.format,
                    batch.drain(..).map(|o| o.message),
                    PACK_MAX_BYTES,
                )
            });
            let sent = packed.as_ref().map_or(frames, Vec::len);
            let written = {
                let (ws, batch) = (&mut self.ws, &mut batch);
                let write = tokio::time::timeout(write_timeout, async {
                    match packed {
                        Some(messages) => {
                            for message in messages {
                                ws.feed_message(message).await?;
                            }
                        }
                        None => {
                            for out in batch.drain(..) {
                                ws.feed_message(out.message).await?;
                            }
                        }
                    }
                    ws.flush_messages().await
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
                return Flow::Close(Disconnect::SlowConsumer);
            }
            // Wake-ups consumed above, and frames left beyond the batch, must
            // not be stranded.
            outbox.rearm();
            if !matches!(written, Ok(Ok(()))) {
                return Flow::Gone;
            }
            self.last_flush = Instant::now();
            let m = &self.node.metrics;
            m.frames_out.inc_by(frames as u64);
            m.messages_out.inc_by(sent as u64);
            m.bytes_out.inc_by(bytes as u64);
            if let Some(t) = oldest {
                m.fanout_latency.observe(t.elapsed().as_secs_f64());
            }
        }
        match status {
            Status::Close(reason) => Flow::Close(reason),
            Status::Open => Flow::Continue,
        }
    }

    fn on_message(&mut self, message: Message) -> Flow {
        if let Message::Close(_) = message {
            return Flow::PeerClosed;
        }
        // Every inbound frame counts against the rate, control frames too: a
        // ping flood costs a pong each. An SSE stream's only inbound frames
        // are the subscribes its URL asked for, bounded at admission.
        if W::CLIENT_SPEAKS
            && let Some(flow) = self.rate_limited()
        {
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
            if ws.close_with(frame).await.is_ok() {
                while let Some(Ok(_)) = ws.next_message().await {}
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
        self.left = true;
    }
}

/// Polls the pending command; only called while there is one.
async fn poll_pending(pending: &mut Option<Pending>) -> commands::Done {
    match pending {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
