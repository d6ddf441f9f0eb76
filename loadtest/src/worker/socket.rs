//! One socket's life: TCP from a chosen source address, upgrade with token
//! and subprotocol, `welcome`, `subscribe` -> `ok`, then events until the run
//! stops, its churn hold ends, or the server closes it. Counters merge into
//! the worker's stats once, at the end; slow sockets read nothing until the
//! end, then drain to learn how the gateway treated them.
//!
//! In resume mode a closed socket comes back: it waits a full-jitter backoff,
//! reconnects (to another target when its node went away: 1001, 1012, 1011
//! or a transport failure) and resumes every channel from the last offset it
//! saw (contract section 6): `user_offset`/`user_epoch` and
//! `broadcast_offset`/`broadcast_epoch` in the upgrade URL, `since` on the
//! room's `subscribe`. Its trackers live across reconnects, so loss,
//! duplicates and order are judged over the socket's whole life.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Ctx, StopInfo};
use crate::now_micros;
use crate::protocol::{self, BadFrame, EventData, Outgoing, ServerFrame};
use crate::scenario::{Codec, ResumePlan, TokenIn};
use crate::stats::{Continuity, Delivery};
use crate::track::{OffsetTracker, PositionKind, Seen, SeqTracker};

type Ws = WebSocketStream<TcpStream>;

/// One socket to open.
pub(crate) struct Job {
    /// Global socket index: picks target, source address, room and user.
    pub idx: u64,
    /// Churn: close after this long.
    pub hold: Option<Duration>,
    /// A base socket (counted in the ramp) rather than a churning one.
    pub base: bool,
}

/// What a read frame meant to the socket.
enum Handled {
    Event,
    Welcome,
    Reply { id: u64, error: Option<String> },
    Other,
    Closed(String),
}

/// Room, user and broadcast channel trackers of one socket.
struct SocketState {
    /// Wire names: `room:<r>`, `user:<sub>`, `broadcast`.
    channels: [Option<String>; 3],
    trackers: [SeqTracker; 3],
    /// Offsets and epochs (contract section 6), across reconnects.
    offsets: [OffsetTracker; 3],
    /// This connection resumes the channel (sent its position).
    resuming: [bool; 3],
    /// When each channel first became live for this socket (unix micros).
    joined_us: [u64; 3],
    delivered: u64,
    foreign: u64,
    /// Index into the plan's targets.
    target: usize,
}

const ROOM: usize = 0;
const USER: usize = 1;
const BROADCAST: usize = 2;
const KINDS: [&str; 3] = ["room", "user", "broadcast"];
/// Request id of the room subscribe.
const SUB_ID: u64 = 1;

impl SocketState {
    fn new(room: Option<String>, target: usize) -> SocketState {
        SocketState {
            channels: [
                room.map(|r| format!("room:{r}")),
                None,
                Some("broadcast".to_owned()),
            ],
            trackers: Default::default(),
            offsets: Default::default(),
            resuming: [false; 3],
            joined_us: [0; 3],
            delivered: 0,
            foreign: 0,
            target,
        }
    }

    fn handle(&mut self, ctx: &Ctx, msg: Message) -> Handled {
        let batch = matches!(ctx.plan.codec, Codec::JsonBatch | Codec::MsgpackBatch);
        match msg {
            Message::Text(t) if batch => self.frames(ctx, protocol::parse_json_batch(t.as_str())),
            Message::Binary(b) if batch => self.frames(ctx, protocol::parse_msgpack_batch(&b)),
            Message::Text(t) => self.frame(ctx, protocol::parse_json(t.as_str())),
            Message::Binary(b) => self.frame(ctx, protocol::parse_msgpack(&b)),
            Message::Close(f) => Handled::Closed(close_kind(f.as_ref())),
            _ => Handled::Other,
        }
    }

    /// The frames of one `+batch` message, in order. What the caller waits
    /// for (a welcome, a reply) outranks events, and events outrank the rest.
    fn frames(&mut self, ctx: &Ctx, parsed: Result<Vec<ServerFrame<'_>>, BadFrame>) -> Handled {
        let frames = match parsed {
            Ok(frames) => frames,
            Err(e) => return self.frame(ctx, Err(e)),
        };
        let mut best = Handled::Other;
        for f in frames {
            let h = self.frame(ctx, Ok(f));
            best = match (&best, &h) {
                (Handled::Welcome | Handled::Reply { .. }, _) => best,
                (_, Handled::Welcome | Handled::Reply { .. } | Handled::Event) => h,
                _ => best,
            };
        }
        best
    }

    fn channel_index(&self, channel: Option<&str>) -> Option<usize> {
        let c = channel?;
        self.channels.iter().position(|k| k.as_deref() == Some(c))
    }

    fn frame(&mut self, ctx: &Ctx, parsed: Result<ServerFrame<'_>, BadFrame>) -> Handled {
        let Ok(f) = parsed else {
            self.foreign += 1;
            return Handled::Other;
        };
        match f.kind.as_ref() {
            "event" => {
                self.event(ctx, f.channel.as_deref(), f.offset.0, f.data);
                Handled::Event
            }
            "welcome" => {
                let user = f
                    .position
                    .as_ref()
                    .map(|p| (p.offset.0, p.epoch.0.as_deref()));
                let bc = f
                    .broadcast_position
                    .as_ref()
                    .map(|p| (p.offset.0, p.epoch.0.as_deref()));
                for (i, pos, recovered) in [
                    (USER, user, f.recovered),
                    (BROADCAST, bc, f.broadcast_recovered),
                ] {
                    if let Some((Some(offset), epoch)) = pos {
                        self.position(ctx, i, offset, epoch, recovered);
                    }
                }
                Handled::Welcome
            }
            "ok" => {
                let id = f.id.unwrap_or(0);
                if id == SUB_ID
                    && let Some(offset) = f.offset.0
                {
                    self.position(ctx, ROOM, offset, f.epoch.0.as_deref(), f.recovered);
                }
                Handled::Reply { id, error: None }
            }
            "resync" => {
                if let (Some(i), Some(offset)) =
                    (self.channel_index(f.channel.as_deref()), f.offset.0)
                {
                    self.offsets[i].resync(offset, f.epoch.0.as_deref());
                    if let Some(name) = &self.channels[i] {
                        ctx.stats.notice(name, Some(offset), false);
                    }
                } else {
                    self.foreign += 1;
                }
                Handled::Other
            }
            "error" => Handled::Reply {
                id: f.id.unwrap_or(0),
                error: Some(f.code.as_deref().unwrap_or("error").to_owned()),
            },
            _ => Handled::Other,
        }
    }

    /// A channel position from `welcome` or a subscribe `ok`.
    fn position(
        &mut self,
        ctx: &Ctx,
        i: usize,
        offset: u64,
        epoch: Option<&str>,
        recovered: Option<bool>,
    ) {
        let kind = if self.resuming[i] {
            PositionKind::Resumed(recovered)
        } else {
            PositionKind::Start
        };
        self.offsets[i].position(offset, epoch, kind);
        if self.resuming[i]
            && recovered != Some(true)
            && let Some(name) = &self.channels[i]
        {
            ctx.stats.notice(name, None, true);
        }
    }

    fn event(
        &mut self,
        ctx: &Ctx,
        channel: Option<&str>,
        offset: Option<u64>,
        data: Option<EventData>,
    ) {
        let now = now_micros();
        self.delivered += 1;
        let Some(i) = self.channel_index(channel) else {
            self.foreign += 1;
            return;
        };
        let replayed = offset.is_some_and(|o| self.offsets[i].event(o).replayed);
        let Some(EventData::Ours(p)) = data else {
            self.foreign += 1;
            return;
        };
        if self.trackers[i].observe(p.seq) != Seen::Duplicate {
            ctx.stats
                .record_event(now.saturating_sub(p.ts), p.step, replayed);
        }
    }

    /// The position to resume channel `i` from, if it has one.
    fn resume_point(&self, i: usize) -> Option<(u64, &str)> {
        self.offsets[i].resume_point()
    }

    /// Folds the trackers into delivery numbers. `stayed`: the socket was
    /// open when the run stopped, so events up to each channel's last
    /// sequence (and offset) were owed to it.
    fn finish(&self, info: Option<&StopInfo>, stayed: bool) -> (Delivery, Continuity) {
        let mut d = Delivery {
            delivered: self.delivered,
            foreign: self.foreign,
            ..Delivery::default()
        };
        let mut c = Continuity::default();
        let mut lost = 0;
        for (i, ch) in self.channels.iter().enumerate() {
            let Some(ch) = ch else { continue };
            let t = &self.trackers[i];
            d.unique += t.unique();
            d.duplicates += t.duplicates();
            d.out_of_order += t.out_of_order();
            let fin = info.and_then(|s| s.finals.get(ch).map(|f| (s, f)));
            lost += match fin {
                Some((s, fin)) => {
                    let joined = self.joined_us[i];
                    let from = (s.t_go_us > 0 && joined > 0 && joined < s.t_go_us).then_some(1);
                    t.lost(from, stayed.then_some(fin.last), &fin.failed)
                }
                None => t.lost(None, None, &[]),
            };
            if self.offsets[i].active() {
                let tail = fin.and_then(|(_, f)| f.last_offset).filter(|_| stayed);
                c.by_kind
                    .entry(KINDS[i].to_owned())
                    .or_default()
                    .add(&self.offsets[i].finish(tail));
            }
        }
        d.lost = lost;
        d.sockets_with_loss = u64::from(lost > 0);
        (d, c)
    }
}

/// A small PRNG (splitmix64) for backoff jitter and target choice.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Full-jitter backoff: attempt `n` (from 1) waits uniformly in
/// `[0, min(max, min x 2^n)]`.
fn backoff(r: &ResumePlan, attempt: u32, rng: &mut Rng) -> Duration {
    let unit = r.backoff_min.as_micros() as u64;
    let window = unit
        .saturating_mul(1u64 << attempt.min(30))
        .min(r.backoff_max.as_micros() as u64);
    Duration::from_micros(rng.below(window + 1))
}

/// Whether a close or failure means the node is going or gone, so the next
/// attempt should go to another target: drain (1001, 1012), internal error
/// (1011), or a transport failure. Application closes (4008, 1008, ...) keep
/// the target.
fn node_gone(kind: &str) -> bool {
    match kind.strip_prefix("close_") {
        Some(code) => matches!(code, "1001" | "1012" | "1011" | "none"),
        None => true,
    }
}

/// Picks another target, uniformly among the others, so one node's sockets
/// spread over the rest instead of piling onto its neighbour.
fn other_target(current: usize, targets: usize, rng: &mut Rng) -> usize {
    if targets <= 1 {
        return current;
    }
    (current + 1 + rng.below(targets as u64 - 1) as usize) % targets
}

/// Names an I/O failure by errno where it tells something (ports, files).
fn io_kind(stage: &str, e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(23) => "enfile",
        Some(24) => "emfile",
        Some(32) => "epipe",
        Some(98) => "eaddrinuse",
        Some(99) => "eaddrnotavail",
        Some(104) => "econnreset",
        Some(110) => "etimedout",
        Some(111) => "econnrefused",
        Some(113) => "ehostunreach",
        _ => return format!("{stage}_{:?}", e.kind()).to_lowercase(),
    };
    format!("{stage}_{name}")
}

fn ws_error_kind(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http_{}", resp.status().as_u16()),
        WsError::Io(io) => io_kind("ws", io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => "reset".into(),
        WsError::Protocol(_) => "protocol".into(),
        WsError::Capacity(_) => "capacity".into(),
        _ => "ws_other".into(),
    }
}

fn close_kind(f: Option<&CloseFrame>) -> String {
    match f {
        Some(f) => format!("close_{}", u16::from(f.code)),
        None => "close_none".into(),
    }
}

/// Receive buffer of a slow socket: small, so the kernel does not absorb
/// megabytes on the reader's behalf and the backlog reaches the gateway.
const SLOW_RCVBUF: u32 = 8 * 1024;

async fn tcp_connect(
    addr: SocketAddr,
    src: Option<IpAddr>,
    slow: bool,
) -> Result<TcpStream, String> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_kind("socket", &e))?;
    if slow {
        let _ = sock.set_recv_buffer_size(SLOW_RCVBUF);
    }
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| io_kind("bind", &e))?;
    }
    let stream = sock.connect(addr).await.map_err(|e| io_kind("tcp", &e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn credentials(ctx: &Ctx, idx: u64) -> Result<(String, String), String> {
    if !ctx.tokens.is_empty() {
        let t = &ctx.tokens[(idx % ctx.tokens.len() as u64) as usize];
        return Ok((t.token.clone(), t.sub.clone()));
    }
    let sub = ctx.plan.socket_user(idx);
    let minter = ctx.minter.as_ref().ok_or("no_credentials")?;
    let token = minter.mint(&sub).map_err(|_| "mint_failed")?;
    Ok((token, sub))
}

async fn send(ws: &mut Ws, out: Outgoing) -> Result<(), WsError> {
    match out {
        Outgoing::Text(t) => ws.send(Message::Text(t.into())).await,
        Outgoing::Binary(b) => ws.send(Message::Binary(b.into())).await,
    }
}

/// Reads until `want` says a frame is the one awaited, handling events met
/// on the way. Fails on close, error, end of stream or the deadline.
async fn read_until(
    ws: &mut Ws,
    ctx: &Ctx,
    state: &mut SocketState,
    deadline: Instant,
    stage: &str,
    mut want: impl FnMut(&Handled) -> Option<Result<(), String>>,
) -> Result<(), String> {
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("timeout_{stage}")),
            Ok(None) => return Err(format!("eof_before_{stage}")),
            Ok(Some(Err(e))) => return Err(ws_error_kind(&e)),
            Ok(Some(Ok(m))) => {
                let h = state.handle(ctx, m);
                if let Handled::Closed(kind) = h {
                    return Err(kind);
                }
                if let Some(r) = want(&h) {
                    return r;
                }
            }
        }
    }
}

/// Connects, upgrades, reads `welcome`, subscribes; with `resume`, sends
/// every channel's position. Returns the socket and the connect and
/// subscribe latencies (microseconds).
async fn setup(
    ctx: &Ctx,
    job: &Job,
    state: &mut SocketState,
    resume: bool,
) -> Result<(Ws, u64, Option<u64>), String> {
    let plan = &ctx.plan;
    let t0 = Instant::now();
    let (token, sub) = credentials(ctx, job.idx)?;
    state.channels[USER] = Some(format!("user:{sub}"));
    let target = &plan.targets[state.target % plan.targets.len()];
    let mut query = String::new();
    state.resuming = [false; 3];
    if resume {
        let user = state.resume_point(USER);
        let bc = state.resume_point(BROADCAST);
        let flags = [false, user.is_some(), bc.is_some()];
        query = protocol::resume_query(user, bc);
        state.resuming = flags;
    }
    let src = (!plan.source_ips.is_empty())
        .then(|| plan.source_ips[(job.idx % plan.source_ips.len() as u64) as usize]);

    let tcp = timeout(
        plan.connect_timeout,
        tcp_connect(target.addr, src, job.base && plan.socket_is_slow(job.idx)),
    )
    .await
    .map_err(|_| "timeout_tcp".to_owned())??;

    let mut url = target.url.clone();
    if plan.token_in == TokenIn::Query {
        let sep = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{sep}token={token}");
    }
    if !query.is_empty() {
        let sep = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{sep}{query}");
    }
    let mut request = url
        .into_client_request()
        .map_err(|_| "bad_request".to_owned())?;
    let headers = request.headers_mut();
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol::subprotocol(plan.codec)),
    );
    if plan.token_in == TokenIn::Header {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "bad_token".to_owned())?;
        headers.insert(AUTHORIZATION, value);
    }
    let upgrade = tokio_tungstenite::client_async_with_config(request, tcp, Some(ctx.ws_config));
    let (mut ws, _) = timeout(plan.connect_timeout, upgrade)
        .await
        .map_err(|_| "timeout_upgrade".to_owned())?
        .map_err(|e| ws_error_kind(&e))?;

    let deadline = Instant::now() + plan.connect_timeout;
    read_until(&mut ws, ctx, state, deadline, "welcome", |h| {
        matches!(h, Handled::Welcome).then_some(Ok(()))
    })
    .await?;
    let connect_us = t0.elapsed().as_micros() as u64;
    let now = now_micros();
    for i in [USER, BROADCAST] {
        if state.joined_us[i] == 0 {
            state.joined_us[i] = now;
        }
    }

    let Some(room) = plan.socket_room(job.idx) else {
        return Ok((ws, connect_us, None));
    };
    let t1 = Instant::now();
    let since = if resume {
        state.resume_point(ROOM)
    } else {
        None
    };
    let frame = protocol::subscribe(plan.codec, &room, SUB_ID, since);
    state.resuming[ROOM] = since.is_some();
    send(&mut ws, frame).await.map_err(|e| ws_error_kind(&e))?;
    let deadline = Instant::now() + plan.connect_timeout;
    read_until(&mut ws, ctx, state, deadline, "subscribe", |h| match h {
        Handled::Reply {
            id: SUB_ID,
            error: None,
        } => Some(Ok(())),
        Handled::Reply {
            id: SUB_ID,
            error: Some(code),
        } => Some(Err(format!("subscribe_{code}"))),
        Handled::Reply {
            id: 0,
            error: Some(code),
        } => Some(Err(format!("error_{code}"))),
        _ => None,
    })
    .await?;
    if state.joined_us[ROOM] == 0 {
        state.joined_us[ROOM] = now_micros();
    }
    Ok((ws, connect_us, Some(t1.elapsed().as_micros() as u64)))
}

/// Sends a normal close and waits (bounded) for the server's reply.
async fn close(ws: &mut Ws) {
    let _ = timeout(Duration::from_secs(3), async {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// How a socket's reading ended.
enum End {
    Stop,
    Hold,
    Lost(String),
}

/// Runs one socket from connect to close (and, in resume mode, through
/// every reconnect).
pub(crate) async fn run(ctx: Arc<Ctx>, job: Job, permit: OwnedSemaphorePermit) {
    let mut stop = ctx.stop.clone();
    ctx.stats.connect_started(now_micros(), job.base);
    let first_target = (job.idx % ctx.plan.targets.len().max(1) as u64) as usize;
    let mut state = SocketState::new(ctx.plan.socket_room(job.idx), first_target);
    // Boxed: the handshake's state is large and needed only once; inline, it
    // would stay in every socket task's future for the socket's whole life.
    let setup_result = tokio::select! {
        r = Box::pin(setup(&ctx, &job, &mut state, false)) => Some(r),
        _ = stop.wait_for(Option::is_some) => None,
    };
    drop(permit);
    let (mut ws, connect_us, subscribe_us) = match setup_result {
        Some(Ok(v)) => v,
        Some(Err(kind)) => {
            ctx.stats.connect_failed(kind);
            if job.base {
                ctx.settled();
            }
            return;
        }
        None => {
            ctx.stats.connect_failed("aborted_by_stop".into());
            if job.base {
                ctx.settled();
            }
            return;
        }
    };
    ctx.stats
        .connected(connect_us, subscribe_us, job.base, now_micros());
    if job.base {
        ctx.settled();
    }

    if job.base && ctx.plan.socket_is_slow(job.idx) {
        let _ = stop.wait_for(Option::is_some).await;
        let (events, ending) = Box::pin(drain_slow(&mut ws)).await;
        ctx.stats.slow_ended(events, ending);
        Box::pin(close(&mut ws)).await;
        ctx.stats.closed();
        return;
    }

    let reconnect = ctx.plan.resume.clone().filter(|r| r.reconnect);
    let mut rng = Rng::new(job.idx.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ now_micros());
    // Registered once: a fresh watch future per event would cost a lock each.
    let stopped = stop.wait_for(Option::is_some);
    tokio::pin!(stopped);
    let hold_until = job.hold.map(|h| Instant::now() + h);
    let hold = tokio::time::sleep_until(hold_until.unwrap_or_else(Instant::now));
    tokio::pin!(hold);
    loop {
        let end = loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break End::Stop,
                _ = &mut hold, if hold_until.is_some() => break End::Hold,
                m = ws.next() => match m {
                    Some(Ok(m)) => {
                        if let Handled::Closed(kind) = state.handle(&ctx, m) {
                            break End::Lost(kind);
                        }
                    }
                    Some(Err(e)) => break End::Lost(ws_error_kind(&e)),
                    None => break End::Lost("eof".into()),
                },
            }
        };
        let kind = match end {
            End::Stop => {
                let info = ctx.stop.borrow().clone();
                ctx.stats.add_result(state.finish(info.as_deref(), true));
                Box::pin(close(&mut ws)).await;
                break;
            }
            End::Hold => {
                ctx.stats.add_result(state.finish(None, false));
                Box::pin(close(&mut ws)).await;
                ctx.stats.churn_closed();
                break;
            }
            End::Lost(kind) => kind,
        };
        ctx.stats.disconnected(kind.clone());
        ctx.stats.closed();
        let Some(r) = &reconnect else {
            ctx.stats.add_result(state.finish(None, false));
            return;
        };
        // Resume mode: back off, reconnect, resume every channel.
        let closed_at = Instant::now();
        ctx.stats.went_down();
        if node_gone(&kind) {
            state.target = other_target(state.target, ctx.plan.targets.len(), &mut rng);
        }
        let mut attempt = 0u32;
        let back = loop {
            attempt += 1;
            if hold_until.is_some_and(|h| Instant::now() >= h) {
                break Err(false);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(r, attempt, &mut rng)) => {}
                _ = &mut stopped => break Err(true),
            }
            let permit = tokio::select! {
                p = ctx.permits.clone().acquire_owned() => p.ok(),
                _ = &mut stopped => break Err(true),
            };
            ctx.stats.reconnect_attempt();
            let result = tokio::select! {
                r = Box::pin(setup(&ctx, &job, &mut state, true)) => r,
                _ = &mut stopped => break Err(true),
            };
            drop(permit);
            match result {
                Ok((w, _, _)) => break Ok(w),
                Err(kind) => {
                    ctx.stats.reconnect_failed(kind);
                    state.target = other_target(state.target, ctx.plan.targets.len(), &mut rng);
                }
            }
        };
        ctx.stats.came_up();
        match back {
            Ok(w) => {
                ws = w;
                ctx.stats.resumed(closed_at.elapsed().as_micros() as u64);
            }
            Err(stopped_while_down) => {
                if stopped_while_down {
                    ctx.stats.down_at_end();
                } else {
                    ctx.stats.churn_closed();
                }
                ctx.stats.add_result(state.finish(None, false));
                return;
            }
        }
    }
    ctx.stats.closed();
}

/// Reads what a slow socket has buffered (bounded), returning the events
/// read and how the socket ended.
async fn drain_slow(ws: &mut Ws) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut events = 0;
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return (events, "still_open".into()),
            Ok(None) => return (events, "eof".into()),
            Ok(Some(Err(e))) => return (events, ws_error_kind(&e)),
            Ok(Some(Ok(Message::Close(f)))) => return (events, close_kind(f.as_ref())),
            Ok(Some(Ok(Message::Text(_) | Message::Binary(_)))) => events += 1,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(min_ms: u64, max_ms: u64) -> ResumePlan {
        ResumePlan {
            reconnect: true,
            backoff_min: Duration::from_millis(min_ms),
            backoff_max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn backoff_is_full_jitter_within_a_doubling_capped_window() {
        let r = plan(50, 2000);
        let mut rng = Rng::new(7);
        for attempt in 1..12u32 {
            let cap = (50u64 << attempt).min(2000);
            let mut max_seen = Duration::ZERO;
            for _ in 0..500 {
                let d = backoff(&r, attempt, &mut rng);
                assert!(
                    d <= Duration::from_millis(cap),
                    "attempt {attempt}: {d:?} > {cap} ms"
                );
                max_seen = max_seen.max(d);
            }
            // Spread over the window, not bunched at its start.
            assert!(
                max_seen >= Duration::from_millis(cap * 8 / 10),
                "attempt {attempt}: max {max_seen:?}"
            );
        }
    }

    #[test]
    fn a_node_that_went_away_sends_the_socket_elsewhere() {
        for k in [
            "close_1012",
            "close_1001",
            "close_1011",
            "reset",
            "eof",
            "tcp_econnrefused",
            "http_503",
        ] {
            assert!(node_gone(k), "{k}");
        }
        for k in ["close_4008", "close_1008", "close_4001", "close_1013"] {
            assert!(!node_gone(k), "{k}");
        }
        let mut rng = Rng::new(1);
        let mut hits = [0u32; 6];
        for _ in 0..6000 {
            let t = other_target(2, 6, &mut rng);
            assert_ne!(t, 2);
            hits[t] += 1;
        }
        assert!(
            hits.iter().enumerate().all(|(i, &h)| i == 2 || h > 800),
            "{hits:?}"
        );
        assert_eq!(other_target(0, 1, &mut rng), 0);
    }
}
