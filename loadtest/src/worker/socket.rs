//! One socket's life: TCP from a chosen source address, upgrade with token
//! and subprotocol, `welcome`, `subscribe` -> `ok`, then events until the run
//! stops, its churn hold ends, or the server closes it. Counters merge into
//! the worker's stats once, at the end; slow sockets read nothing until the
//! end, then drain to learn how the gateway treated them.

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
use crate::scenario::TokenIn;
use crate::stats::Delivery;
use crate::track::{Seen, SeqTracker};

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
    /// When each channel became live for this socket (unix micros).
    joined_us: [u64; 3],
    delivered: u64,
    foreign: u64,
}

const ROOM: usize = 0;
const USER: usize = 1;
const BROADCAST: usize = 2;

impl SocketState {
    fn new(room: Option<String>) -> SocketState {
        SocketState {
            channels: [
                room.map(|r| format!("room:{r}")),
                None,
                Some("broadcast".to_owned()),
            ],
            trackers: Default::default(),
            joined_us: [0; 3],
            delivered: 0,
            foreign: 0,
        }
    }

    fn handle(&mut self, ctx: &Ctx, msg: Message) -> Handled {
        match msg {
            Message::Text(t) => self.frame(ctx, protocol::parse_json(t.as_str())),
            Message::Binary(b) => self.frame(ctx, protocol::parse_msgpack(&b)),
            Message::Close(f) => Handled::Closed(close_kind(f.as_ref())),
            _ => Handled::Other,
        }
    }

    fn frame(&mut self, ctx: &Ctx, parsed: Result<ServerFrame<'_>, BadFrame>) -> Handled {
        let Ok(f) = parsed else {
            self.foreign += 1;
            return Handled::Other;
        };
        match f.kind.as_ref() {
            "event" => {
                self.event(ctx, f.channel.as_deref(), f.data);
                Handled::Event
            }
            "welcome" => Handled::Welcome,
            "ok" => Handled::Reply {
                id: f.id.unwrap_or(0),
                error: None,
            },
            "error" => Handled::Reply {
                id: f.id.unwrap_or(0),
                error: Some(f.code.as_deref().unwrap_or("error").to_owned()),
            },
            _ => Handled::Other,
        }
    }

    fn event(&mut self, ctx: &Ctx, channel: Option<&str>, data: Option<EventData>) {
        let now = now_micros();
        self.delivered += 1;
        let Some(EventData::Ours(p)) = data else {
            self.foreign += 1;
            return;
        };
        let Some(i) =
            channel.and_then(|c| self.channels.iter().position(|k| k.as_deref() == Some(c)))
        else {
            self.foreign += 1;
            return;
        };
        if self.trackers[i].observe(p.seq) != Seen::Duplicate {
            ctx.stats.record_event(now.saturating_sub(p.ts), p.step);
        }
    }

    /// Folds the trackers into delivery numbers. `stayed`: the socket was
    /// open when the run stopped, so events up to each channel's last
    /// sequence were owed to it.
    fn finish(&self, info: Option<&StopInfo>, stayed: bool) -> Delivery {
        let mut d = Delivery {
            delivered: self.delivered,
            foreign: self.foreign,
            ..Delivery::default()
        };
        let mut lost = 0;
        for (i, ch) in self.channels.iter().enumerate() {
            let Some(ch) = ch else { continue };
            let t = &self.trackers[i];
            d.unique += t.unique();
            d.duplicates += t.duplicates();
            d.out_of_order += t.out_of_order();
            lost += match info.and_then(|s| s.finals.get(ch).map(|f| (s, f))) {
                Some((s, fin)) => {
                    let joined = self.joined_us[i];
                    let from = (s.t_go_us > 0 && joined > 0 && joined < s.t_go_us).then_some(1);
                    t.lost(from, stayed.then_some(fin.last), &fin.failed)
                }
                None => t.lost(None, None, &[]),
            };
        }
        d.lost = lost;
        d.sockets_with_loss = u64::from(lost > 0);
        d
    }
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

/// Connects, upgrades, reads `welcome`, subscribes. Returns the socket and
/// the connect and subscribe latencies (microseconds).
async fn setup(
    ctx: &Ctx,
    job: &Job,
    state: &mut SocketState,
) -> Result<(Ws, u64, Option<u64>), String> {
    let plan = &ctx.plan;
    let t0 = Instant::now();
    let (token, sub) = credentials(ctx, job.idx)?;
    state.channels[USER] = Some(format!("user:{sub}"));
    let target = &plan.targets[(job.idx % plan.targets.len() as u64) as usize];
    let src = (!plan.source_ips.is_empty())
        .then(|| plan.source_ips[(job.idx % plan.source_ips.len() as u64) as usize]);

    let tcp = timeout(
        plan.connect_timeout,
        tcp_connect(target.addr, src, job.base && plan.socket_is_slow(job.idx)),
    )
    .await
    .map_err(|_| "timeout_tcp".to_owned())??;

    let url = match plan.token_in {
        TokenIn::Query => {
            let sep = if target.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}token={token}", target.url)
        }
        TokenIn::Header => target.url.clone(),
    };
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
    state.joined_us[USER] = now;
    state.joined_us[BROADCAST] = now;

    let Some(room) = plan.socket_room(job.idx) else {
        return Ok((ws, connect_us, None));
    };
    let t1 = Instant::now();
    send(&mut ws, protocol::subscribe(plan.codec, &room, 1))
        .await
        .map_err(|e| ws_error_kind(&e))?;
    let deadline = Instant::now() + plan.connect_timeout;
    read_until(&mut ws, ctx, state, deadline, "subscribe", |h| match h {
        Handled::Reply { id: 1, error: None } => Some(Ok(())),
        Handled::Reply {
            id: 1,
            error: Some(code),
        } => Some(Err(format!("subscribe_{code}"))),
        Handled::Reply {
            id: 0,
            error: Some(code),
        } => Some(Err(format!("error_{code}"))),
        _ => None,
    })
    .await?;
    state.joined_us[ROOM] = now_micros();
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

/// Runs one socket from connect to close.
pub(crate) async fn run(ctx: Arc<Ctx>, job: Job, permit: OwnedSemaphorePermit) {
    let mut stop = ctx.stop.clone();
    ctx.stats.connect_started(now_micros(), job.base);
    let mut state = SocketState::new(ctx.plan.socket_room(job.idx));
    // Boxed: the handshake's state is large and needed only once; inline, it
    // would stay in every socket task's future for the socket's whole life.
    let setup = tokio::select! {
        r = Box::pin(setup(&ctx, &job, &mut state)) => Some(r),
        _ = stop.wait_for(Option::is_some) => None,
    };
    drop(permit);
    let (mut ws, connect_us, subscribe_us) = match setup {
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

    // Registered once: a fresh watch future per event would cost a lock each.
    let stopped = stop.wait_for(Option::is_some);
    tokio::pin!(stopped);
    let hold_until = job.hold.map(|h| Instant::now() + h);
    let hold = tokio::time::sleep_until(hold_until.unwrap_or_else(Instant::now));
    tokio::pin!(hold);
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
    let info = ctx.stop.borrow().clone();
    match end {
        End::Stop => {
            ctx.stats.add_delivery(&state.finish(info.as_deref(), true));
            Box::pin(close(&mut ws)).await;
        }
        End::Hold => {
            ctx.stats.add_delivery(&state.finish(None, false));
            Box::pin(close(&mut ws)).await;
            ctx.stats.churn_closed();
        }
        End::Lost(kind) => {
            ctx.stats.add_delivery(&state.finish(None, false));
            ctx.stats.disconnected(kind);
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
