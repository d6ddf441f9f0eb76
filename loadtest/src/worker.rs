//! A worker process: holds its share of the sockets (one task each) and
//! speaks JSON lines with the coordinator ([`WorkerSpec`] then [`Command`]s
//! on stdin, [`WorkerMsg`]s on stdout). It always ends by itself: on `stop`,
//! when stdin closes, or at the plan's `max_runtime`; then it closes its
//! sockets (bounded), reports its [`WorkerResult`] and exits.

mod socket;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::scenario::Plan;
use crate::stats::{
    self, ChannelContinuity, Continuity, Delivery, HistWire, Progress, ReconnectStats, SlowStats,
    WorkerResult,
};
use crate::token::{Minter, TokenEntry};
use crate::track::ChannelFinal;

/// The first line a worker reads: what to do.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Worker index.
    pub worker: u64,
    /// The whole plan.
    pub plan: Plan,
    /// HMAC secret to mint tokens (not part of the serialised plan).
    pub secret: Option<String>,
    /// Ready-made tokens; socket i uses `tokens[i % len]`.
    pub tokens: Vec<TokenEntry>,
    /// First global socket index of this worker's base sockets.
    pub start: u64,
    /// Number of base sockets.
    pub count: u64,
    /// This worker's share of rates and concurrency (1 / workers).
    pub share: f64,
}

/// Coordinator -> worker, after the spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// The load phase begins; publishing starts after `t_go_us` (unix micros).
    Go {
        /// When the coordinator gave the signal.
        t_go_us: u64,
    },
    /// Stop: close sockets and report. `finals` tells each published
    /// channel's last sequence, for tail-loss accounting.
    Stop {
        /// Per channel (wire name), the publisher's final state.
        finals: HashMap<String, ChannelFinal>,
    },
}

/// Worker -> coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// Once a second.
    Progress(Progress),
    /// Every base socket has connected or failed.
    Ready {
        /// Worker index.
        worker: u64,
        /// Base sockets connected.
        connected: u64,
        /// Base sockets failed.
        failed: u64,
    },
    /// The final numbers; the worker exits after this line.
    Result(Box<WorkerResult>),
    /// The worker cannot run (bad spec).
    Fatal {
        /// Worker index.
        worker: u64,
        /// What went wrong.
        message: String,
    },
}

/// What sockets learn when the run stops.
#[derive(Debug, Default)]
pub(crate) struct StopInfo {
    finals: HashMap<String, ChannelFinal>,
    t_go_us: u64,
}

/// Hot-path measurements: one lock per delivered event.
struct Live {
    interval: Histogram<u64>,
    steps: Vec<Histogram<u64>>,
    /// Events replayed after a recovered resume (whole run).
    replay: Histogram<u64>,
}

/// Everything recorded once per socket.
#[derive(Default)]
struct Cold {
    connect_latency: Option<Histogram<u64>>,
    subscribe_latency: Option<Histogram<u64>>,
    connect_errors: BTreeMap<String, u64>,
    disconnects: BTreeMap<String, u64>,
    delivery: Delivery,
    continuity: Continuity,
    reconnect_failures: BTreeMap<String, u64>,
    close_to_resumed: Option<Histogram<u64>>,
    down_at_end: u64,
    slow: SlowStats,
    churn_closed: u64,
    ramp_first_us: u64,
    ramp_last_us: u64,
}

/// Most rate steps measured separately.
const MAX_STEPS: usize = 64;

/// Counters and histograms shared by a worker's socket tasks.
pub(crate) struct Stats {
    open: AtomicU64,
    peak_open: AtomicU64,
    connected: AtomicU64,
    settled: AtomicU64,
    connect_errors: AtomicU64,
    disconnects: AtomicU64,
    churn_opened: AtomicU64,
    peak_rss_kb: AtomicU64,
    reconnect_attempts: AtomicU64,
    resumed: AtomicU64,
    down: AtomicU64,
    live: Mutex<Live>,
    cold: Mutex<Cold>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            open: AtomicU64::new(0),
            peak_open: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            churn_opened: AtomicU64::new(0),
            peak_rss_kb: AtomicU64::new(0),
            reconnect_attempts: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            down: AtomicU64::new(0),
            live: Mutex::new(Live {
                interval: stats::new_hist(),
                steps: Vec::new(),
                replay: stats::new_hist(),
            }),
            cold: Mutex::new(Cold::default()),
        }
    }

    fn cold(&self) -> std::sync::MutexGuard<'_, Cold> {
        // A panicking socket task must not take the report down with it.
        self.cold.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one event's end-to-end latency (`replayed`: delivered as
    /// the replay of a recovered resume).
    pub(crate) fn record_event(&self, latency_us: u64, step: u32, replayed: bool) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        stats::record(&mut live.interval, latency_us);
        if replayed {
            stats::record(&mut live.replay, latency_us);
        }
        let step = step as usize;
        if step < MAX_STEPS {
            while live.steps.len() <= step {
                live.steps.push(stats::new_hist());
            }
            stats::record(&mut live.steps[step], latency_us);
        }
    }

    pub(crate) fn connect_started(&self, now_us: u64, base: bool) {
        if base {
            let mut c = self.cold();
            if c.ramp_first_us == 0 || now_us < c.ramp_first_us {
                c.ramp_first_us = now_us;
            }
        }
    }

    pub(crate) fn connect_failed(&self, kind: String) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        *self.cold().connect_errors.entry(kind).or_default() += 1;
    }

    pub(crate) fn connected(
        &self,
        connect_us: u64,
        subscribe_us: Option<u64>,
        base: bool,
        now_us: u64,
    ) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
        if !base {
            self.churn_opened.fetch_add(1, Ordering::Relaxed);
        }
        let mut c = self.cold();
        stats::record(
            c.connect_latency.get_or_insert_with(stats::new_hist),
            connect_us,
        );
        if let Some(s) = subscribe_us {
            stats::record(c.subscribe_latency.get_or_insert_with(stats::new_hist), s);
        }
        if base {
            c.ramp_last_us = c.ramp_last_us.max(now_us);
        }
    }

    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn disconnected(&self, kind: String) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        *self.cold().disconnects.entry(kind).or_default() += 1;
    }

    pub(crate) fn churn_closed(&self) {
        self.cold().churn_closed += 1;
    }

    pub(crate) fn add_result(&self, (d, c): (Delivery, Continuity)) {
        let mut cold = self.cold();
        cold.delivery.add(&d);
        cold.continuity.add(&c);
    }

    /// A continuity notice on a channel: a `resync` (with its offset) or a
    /// resume answered `recovered: false`.
    pub(crate) fn notice(&self, channel: &str, resync: Option<u64>, not_recovered: bool) {
        let mut c = ChannelContinuity::default();
        if let Some(o) = resync {
            c.resync_frames = 1;
            c.resync_offsets.insert(o, 1);
        }
        c.not_recovered = u64::from(not_recovered);
        self.cold().continuity.add_channel(channel, &c);
    }

    pub(crate) fn went_down(&self) {
        self.down.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn came_up(&self) {
        self.down.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn reconnect_attempt(&self) {
        self.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reconnect_failed(&self, kind: String) {
        *self.cold().reconnect_failures.entry(kind).or_default() += 1;
    }

    /// A socket is back: welcome and room `ok` read, `us` after its close.
    pub(crate) fn resumed(&self, us: u64) {
        self.resumed.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
        stats::record(
            self.cold()
                .close_to_resumed
                .get_or_insert_with(stats::new_hist),
            us,
        );
    }

    pub(crate) fn down_at_end(&self) {
        self.cold().down_at_end += 1;
    }

    pub(crate) fn slow_ended(&self, events: u64, ending: String) {
        let mut c = self.cold();
        c.slow.sockets += 1;
        c.slow.events_read += events;
        *c.slow.endings.entry(ending).or_default() += 1;
    }

    fn take_interval(&self) -> Histogram<u64> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut live.interval, stats::new_hist())
    }
}

/// Shared state of one worker's sockets.
pub(crate) struct Ctx {
    pub(crate) plan: Plan,
    pub(crate) minter: Option<Minter>,
    pub(crate) tokens: Vec<TokenEntry>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) stats: Stats,
    pub(crate) stop: watch::Receiver<Option<Arc<StopInfo>>>,
    /// Limits connects in flight; a socket holds a permit until subscribed.
    pub(crate) permits: Arc<Semaphore>,
    /// Socket tasks alive.
    live_tasks: AtomicU64,
    /// Signalled when a base socket settles or a task ends.
    changed: Notify,
}

impl Ctx {
    pub(crate) fn settled(&self) {
        self.stats.settled.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

/// Keeps `live_tasks` honest even when a socket task panics.
struct TaskGuard(Arc<Ctx>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.live_tasks.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

fn spawn_socket(ctx: &Arc<Ctx>, job: socket::Job, permit: tokio::sync::OwnedSemaphorePermit) {
    ctx.live_tasks.fetch_add(1, Ordering::Relaxed);
    let guard = TaskGuard(ctx.clone());
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _guard = guard;
        socket::run(ctx, job, permit).await;
    });
}

/// Entry point of `gateway-loadtest worker`: reads the spec from stdin,
/// runs, writes JSON lines to stdout. Returns the process exit code.
pub fn main() -> i32 {
    let mut first = String::new();
    if std::io::stdin().lock().read_line(&mut first).is_err() || first.trim().is_empty() {
        eprintln!(
            "worker: expected a spec line on stdin (this subcommand is started by the coordinator)"
        );
        return 2;
    }
    let spec: WorkerSpec = match serde_json::from_str(&first) {
        Ok(s) => s,
        Err(e) => {
            let msg = WorkerMsg::Fatal {
                worker: 0,
                message: format!("bad spec: {e}"),
            };
            println!("{}", serde_json::to_string(&msg).unwrap_or_default());
            return 2;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(spec.plan.worker_threads.max(1) as usize)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("worker {}: cannot start a runtime: {e}", spec.worker);
            return 1;
        }
    };
    runtime.block_on(run(spec));
    // Tasks still blocked on stdin must not hold the exit.
    0
}

async fn run(spec: WorkerSpec) {
    let worker = spec.worker;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<WorkerMsg>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = out_rx.recv().await {
            let last = matches!(msg, WorkerMsg::Result(_) | WorkerMsg::Fatal { .. });
            let mut line = serde_json::to_vec(&msg).unwrap_or_default();
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() || last {
                break;
            }
        }
    });

    let minter = spec.secret.as_deref().map(|s| {
        let ttl = spec.plan.auth.token_ttl.as_secs().max(1);
        Minter::new(s, ttl, vec![format!("{}*", spec.plan.room_prefix)])
    });
    if minter.is_none() && spec.tokens.is_empty() {
        let _ = out_tx.send(WorkerMsg::Fatal {
            worker,
            message: "no secret and no tokens".into(),
        });
        drop(out_tx);
        let _ = writer.await;
        return;
    }
    let (stop_tx, stop_rx) = watch::channel(None::<Arc<StopInfo>>);
    let per_worker_concurrency =
        ((spec.plan.concurrency as f64 * spec.share).ceil() as usize).max(1);
    let ctx = Arc::new(Ctx {
        ws_config: WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024)
            .max_message_size(Some(4 << 20))
            .max_frame_size(Some(4 << 20)),
        plan: spec.plan,
        minter,
        tokens: spec.tokens,
        stats: Stats::new(),
        stop: stop_rx,
        permits: Arc::new(Semaphore::new(per_worker_concurrency)),
        live_tasks: AtomicU64::new(0),
        changed: Notify::new(),
    });

    // Commands from the coordinator.
    let (go_tx, mut go_rx) = watch::channel(0u64);
    let (cmd_stop_tx, mut cmd_stop_rx) =
        mpsc::channel::<(Option<HashMap<String, ChannelFinal>>, &'static str)>(1);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<Command>(&line) {
                    Ok(Command::Go { t_go_us }) => {
                        let _ = go_tx.send(t_go_us);
                    }
                    Ok(Command::Stop { finals }) => {
                        let _ = cmd_stop_tx.send((Some(finals), "coordinator")).await;
                        return;
                    }
                    Err(e) => eprintln!("worker {worker}: ignoring a bad command: {e}"),
                },
                Ok(None) | Err(_) => {
                    let _ = cmd_stop_tx.send((None, "stdin_closed")).await;
                    return;
                }
            }
        }
    });

    // Progress once a second; the ticker owns the running latency total.
    let total = Arc::new(Mutex::new(stats::new_hist()));
    let ticker = {
        let ctx = ctx.clone();
        let out = out_tx.clone();
        let total = total.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let interval = ctx.stats.take_interval();
                total
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add(&interval)
                    .ok();
                let rss = stats::rss_kb();
                let s = &ctx.stats;
                s.peak_rss_kb.fetch_max(rss, Ordering::Relaxed);
                let p = Progress {
                    worker,
                    at_us: crate::now_micros(),
                    open: s.open.load(Ordering::Relaxed),
                    connected: s.connected.load(Ordering::Relaxed),
                    settled: s.settled.load(Ordering::Relaxed),
                    connect_errors: s.connect_errors.load(Ordering::Relaxed),
                    disconnects: s.disconnects.load(Ordering::Relaxed),
                    interval: HistWire::from_hist(&interval),
                    rss_kb: rss,
                    reconnects: s.resumed.load(Ordering::Relaxed),
                    down: s.down.load(Ordering::Relaxed),
                    cpu_s: stats::cpu_s(),
                };
                if out.send(WorkerMsg::Progress(p)).is_err() {
                    return;
                }
            }
        })
    };

    let deadline = Instant::now() + ctx.plan.max_runtime;
    let ramp = {
        let ctx = ctx.clone();
        let out = out_tx.clone();
        let (start, count, share) = (spec.start, spec.count, spec.share);
        tokio::spawn(async move {
            let rate = ctx.plan.connect_rate * share;
            let began = Instant::now();
            for k in 0..count {
                if rate > 0.0 {
                    tokio::time::sleep_until(began + Duration::from_secs_f64(k as f64 / rate))
                        .await;
                }
                let Ok(permit) = ctx.permits.clone().acquire_owned().await else {
                    return;
                };
                if ctx.stop.borrow().is_some() {
                    return;
                }
                let job = socket::Job {
                    idx: start + k,
                    hold: None,
                    base: true,
                };
                spawn_socket(&ctx, job, permit);
            }
            loop {
                let notified = ctx.changed.notified();
                if ctx.stats.settled.load(Ordering::Relaxed) >= count {
                    break;
                }
                notified.await;
            }
            let connected = ctx.stats.connected.load(Ordering::Relaxed);
            let _ = out.send(WorkerMsg::Ready {
                worker,
                connected,
                failed: count.saturating_sub(connected),
            });
        })
    };

    // Wait for go (or stop), then run churn until stop.
    let mut t_go_us = 0u64;
    let mut stopped: Option<(Option<HashMap<String, ChannelFinal>>, &'static str)> = None;
    tokio::select! {
        r = go_rx.wait_for(|t| *t > 0) => {
            if let Ok(t) = r { t_go_us = *t; }
        }
        s = cmd_stop_rx.recv() => stopped = Some(s.unwrap_or((None, "stdin_closed"))),
        _ = tokio::time::sleep_until(deadline) => stopped = Some((None, "deadline")),
    }
    let churn = if let (None, Some(churn)) = (&stopped, ctx.plan.churn.clone()) {
        let ctx = ctx.clone();
        let share = spec.share;
        Some(tokio::spawn(async move {
            let rate = churn.rate * share;
            let began = Instant::now();
            let base = ctx.plan.sockets + worker * 1_000_000_000;
            for k in 0u64.. {
                tokio::time::sleep_until(began + Duration::from_secs_f64(k as f64 / rate)).await;
                let Ok(permit) = ctx.permits.clone().acquire_owned().await else {
                    return;
                };
                if ctx.stop.borrow().is_some() {
                    return;
                }
                let job = socket::Job {
                    idx: base + k,
                    hold: Some(churn.hold),
                    base: false,
                };
                spawn_socket(&ctx, job, permit);
            }
        }))
    } else {
        None
    };
    let (finals, stopped_by) = match stopped {
        Some(s) => s,
        None => tokio::select! {
            s = cmd_stop_rx.recv() => s.unwrap_or((None, "stdin_closed")),
            _ = tokio::time::sleep_until(deadline) => (None, "deadline"),
        },
    };
    ramp.abort();
    if let Some(c) = churn {
        c.abort();
    }
    let _ = stop_tx.send(Some(Arc::new(StopInfo {
        finals: finals.unwrap_or_default(),
        t_go_us,
    })));

    // Sockets close with a bounded handshake each; wait for them, bounded too.
    let all_closed = async {
        loop {
            let notified = ctx.changed.notified();
            if ctx.live_tasks.load(Ordering::Relaxed) == 0 {
                break;
            }
            notified.await;
        }
    };
    let unfinished = match tokio::time::timeout(Duration::from_secs(15), all_closed).await {
        Ok(()) => 0,
        Err(_) => ctx.live_tasks.load(Ordering::Relaxed),
    };
    ticker.abort();
    let peak_rss = ctx
        .stats
        .peak_rss_kb
        .load(Ordering::Relaxed)
        .max(stats::rss_kb());
    let mut total = std::mem::replace(
        &mut *total.lock().unwrap_or_else(PoisonError::into_inner),
        stats::new_hist(),
    );
    total.add(ctx.stats.take_interval()).ok();
    let (steps, replay_latency) = {
        let live = ctx
            .stats
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (
            live.steps.iter().map(HistWire::from_hist).collect(),
            HistWire::from_hist(&live.replay),
        )
    };
    let s = &ctx.stats;
    let mut cold = std::mem::take(&mut *s.cold());
    if unfinished > 0 {
        *cold
            .disconnects
            .entry("unfinished_at_exit".into())
            .or_default() += unfinished;
    }
    let result = WorkerResult {
        worker,
        planned: spec.count,
        connected: s.connected.load(Ordering::Relaxed),
        connect_errors: cold.connect_errors,
        disconnects: cold.disconnects,
        connect_latency: cold
            .connect_latency
            .as_ref()
            .map(HistWire::from_hist)
            .unwrap_or_default(),
        subscribe_latency: cold
            .subscribe_latency
            .as_ref()
            .map(HistWire::from_hist)
            .unwrap_or_default(),
        latency: HistWire::from_hist(&total),
        step_latency: steps,
        delivery: cold.delivery,
        slow: cold.slow,
        churn_opened: s.churn_opened.load(Ordering::Relaxed),
        churn_closed: cold.churn_closed,
        peak_open: s.peak_open.load(Ordering::Relaxed),
        ramp_first_us: cold.ramp_first_us,
        ramp_last_us: cold.ramp_last_us,
        peak_rss_kb: peak_rss,
        stopped_by: stopped_by.to_owned(),
        continuity: cold.continuity,
        reconnect: ReconnectStats {
            attempts: s.reconnect_attempts.load(Ordering::Relaxed),
            resumed: s.resumed.load(Ordering::Relaxed),
            failures: cold.reconnect_failures,
            down_at_end: cold.down_at_end,
            close_to_resumed: cold
                .close_to_resumed
                .as_ref()
                .map(HistWire::from_hist)
                .unwrap_or_default(),
        },
        replay_latency,
        cpu_s: stats::cpu_s(),
    };
    let _ = out_tx.send(WorkerMsg::Result(Box::new(result)));
    drop(out_tx);
    let _ = writer.await;
    std::process::exit(0);
}
