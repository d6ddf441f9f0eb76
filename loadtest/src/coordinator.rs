//! The coordinator: spawns workers, moves the run through its phases
//! (ramp -> load -> grace -> stop, each with a deadline), runs the publisher,
//! prints the progress line and writes the report. Ctrl-C / SIGTERM stops
//! publishing, lets in-flight events land (bounded), stops the workers and
//! still reports; a second Ctrl-C skips the wait.

mod timeline;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command as ProcessCommand};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::publish::{PublishError, PublishOutcome, Publisher};
use crate::report::{self, Report, Sample, human, human_us};
use crate::scenario::Plan;
use crate::stats::{Progress, WorkerResult};
use crate::token::{self, TokenEntry};
use crate::worker::{Command, WorkerMsg, WorkerSpec};

/// Why a run could not start or finish.
#[derive(Debug)]
pub enum RunError {
    /// The output directory could not be created or written.
    Output(std::io::Error),
    /// The tokens file could not be used.
    Tokens(token::TokenError),
    /// The publisher could not connect.
    Publish(PublishError),
    /// A worker process could not be started.
    Spawn(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Output(e) => write!(f, "cannot write the output directory: {e}"),
            RunError::Tokens(e) => write!(f, "{e}"),
            RunError::Publish(e) => write!(f, "{e}"),
            RunError::Spawn(e) => write!(f, "cannot start a worker process: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Options that shape output, not load.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Print the live progress line.
    pub progress: bool,
    /// The command line, for the report (secrets already redacted).
    pub command_line: String,
}

/// A worker process as the coordinator sees it.
struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    ready: bool,
    result: Option<WorkerResult>,
    exited: bool,
    last: Option<Progress>,
    /// Its latest progress, sent during grace, had no events.
    quiet: bool,
}

enum Event {
    Msg(u64, WorkerMsg),
    Exited(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ramp,
    Load,
    Grace,
    Stopping,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Ramp => "ramp",
            Phase::Load => "load",
            Phase::Grace => "grace",
            Phase::Stopping => "stop",
        }
    }
}

async fn send_command(w: &mut WorkerProc, cmd: &Command) {
    if let Some(stdin) = w.stdin.as_mut() {
        let mut line = serde_json::to_vec(cmd).unwrap_or_default();
        line.push(b'\n');
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            w.stdin = None;
        }
    }
}

async fn spawn_worker(
    w: u64,
    spec_line: Vec<u8>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<(Child, ChildStdin), std::io::Error> {
    let exe = std::env::current_exe()?;
    let mut child = ProcessCommand::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group: a terminal's Ctrl-C reaches only the
        // coordinator, which then stops the workers in order.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin pipe"))?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<WorkerMsg>(&line) {
                Ok(msg) => {
                    if events.send(Event::Msg(w, msg)).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("worker {w}: unreadable line ({e})"),
            }
        }
        let _ = events.send(Event::Exited(w));
    });
    let mut stdin = stdin;
    let spec_write = async {
        stdin.write_all(&spec_line).await?;
        stdin.flush().await
    };
    spec_write.await?;
    Ok((child, stdin))
}

/// Runs a plan to the end and writes its report into `plan.out_dir`.
pub async fn run(plan: Plan, options: RunOptions) -> Result<Report, RunError> {
    std::fs::create_dir_all(&plan.out_dir).map_err(RunError::Output)?;
    let started_unix = crate::now_micros() / 1_000_000;
    let t0 = Instant::now();

    let tokens: Vec<TokenEntry> = match &plan.auth.tokens_file {
        Some(path) => token::load_tokens(path).map_err(RunError::Tokens)?,
        None => Vec::new(),
    };
    let subs: Option<Vec<String>> = (!tokens.is_empty()).then(|| {
        let mut s: Vec<String> = tokens.iter().map(|t| t.sub.clone()).collect();
        s.sort();
        s.dedup();
        s
    });
    let channels = plan.publish_channels(subs.as_deref());
    let publisher = match &plan.publish {
        Some(p) => Some(
            Publisher::connect(p, channels.clone(), plan.allow_remote)
                .await
                .map_err(RunError::Publish)?,
        ),
        None => None,
    };

    // Workers.
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let workers_n = plan.workers;
    let per = plan.sockets / workers_n;
    let extra = plan.sockets % workers_n;
    let mut workers: Vec<WorkerProc> = Vec::with_capacity(workers_n as usize);
    let mut start = 0;
    for w in 0..workers_n {
        let count = per + u64::from(w < extra);
        let spec = WorkerSpec {
            worker: w,
            plan: plan.clone(),
            secret: plan.auth.secret.clone(),
            tokens: tokens.clone(),
            start,
            count,
            share: 1.0 / workers_n as f64,
        };
        start += count;
        let mut line = serde_json::to_vec(&spec).unwrap_or_default();
        line.push(b'\n');
        let (child, stdin) = spawn_worker(w, line, ev_tx.clone())
            .await
            .map_err(RunError::Spawn)?;
        workers.push(WorkerProc {
            child,
            stdin: Some(stdin),
            ready: false,
            result: None,
            exited: false,
            last: None,
            quiet: false,
        });
    }
    drop(ev_tx);

    // Signals: each Ctrl-C / SIGTERM bumps a counter.
    let (sig_tx, mut sig_rx) = watch::channel(0u32);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            let got = tokio::select! {
                r = tokio::signal::ctrl_c() => r.is_ok(),
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let got = tokio::signal::ctrl_c().await.is_ok();
            if !got {
                return;
            }
            sig_tx.send_modify(|n| *n += 1);
        }
    });

    let tty = std::io::stderr().is_terminal();
    let mut phase = Phase::Ramp;
    let mut marked_phase = Phase::Ramp;
    let mut deadline = Instant::now() + plan.ramp_timeout;
    let mut notes: Vec<String> = Vec::new();
    let mut interrupted = false;
    let mut ramp_timed_out = false;
    let start_us = crate::now_micros();
    let mut timeline = timeline::Timeline::new(start_us, workers.len());
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let (pub_stop_tx, pub_stop_rx) = watch::channel(false);
    let mut publisher = publisher;
    let mut pub_task: Option<tokio::task::JoinHandle<PublishOutcome>> = None;
    let mut pub_outcome: Option<PublishOutcome> = None;
    let mut pub_stop_requested = false;
    let mut ramp_s = 0.0;
    let mut load_started: Option<Instant> = None;
    let mut load_s = 0.0;
    let mut grace_started: Option<Instant> = None;
    let mut seen_signals = 0u32;

    loop {
        let all_done = workers.iter().all(|w| w.result.is_some() || w.exited);
        if phase == Phase::Stopping && all_done {
            break;
        }
        // Phase transitions that do not wait on an event.
        if phase == Phase::Ramp && workers.iter().all(|w| w.ready || w.exited) {
            ramp_s = t0.elapsed().as_secs_f64();
            phase = Phase::Load;
            let t_go_us = crate::now_micros();
            for w in &mut workers {
                send_command(w, &Command::Go { t_go_us }).await;
            }
            load_started = Some(Instant::now());
            deadline = Instant::now() + plan.duration + Duration::from_secs(5);
            if let Some(p) = publisher.take() {
                let stop = pub_stop_rx.clone();
                pub_task = Some(tokio::spawn(p.run(stop)));
            } else {
                deadline = Instant::now() + plan.duration;
            }
        }
        if phase == Phase::Load && pub_task.as_ref().is_some_and(|t| t.is_finished()) {
            if let Some(t) = pub_task.take() {
                pub_outcome = Some(t.await.unwrap_or_default());
            }
            load_s = load_started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            phase = Phase::Grace;
            grace_started = Some(Instant::now());
            deadline = Instant::now()
                + if interrupted {
                    plan.grace.min(Duration::from_secs(1))
                } else {
                    plan.grace
                };
            for w in &mut workers {
                w.quiet = false;
            }
        }
        // Grace ends early once every worker has reported a second without events.
        if phase == Phase::Grace
            && workers
                .iter()
                .all(|w| w.quiet || w.exited || w.result.is_some())
        {
            deadline = Instant::now();
        }
        if phase != marked_phase {
            timeline.phase(phase.name(), crate::now_micros());
            marked_phase = phase;
        }

        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(Event::Msg(w, msg)) => match msg {
                    WorkerMsg::Progress(p) => {
                        timeline.progress(&p);
                        let in_grace = phase == Phase::Grace
                            && grace_started.is_some_and(|g| g.elapsed() >= Duration::from_millis(200));
                        let wp = &mut workers[w as usize];
                        wp.quiet = in_grace && p.interval.count() == 0;
                        wp.last = Some(p);
                    }
                    WorkerMsg::Ready { .. } => workers[w as usize].ready = true,
                    WorkerMsg::Result(r) => workers[w as usize].result = Some(*r),
                    WorkerMsg::Fatal { worker, message } => {
                        notes.push(format!("worker {worker} failed: {message}"));
                        workers[w as usize].exited = true;
                        if phase != Phase::Stopping {
                            interrupted = true;
                            deadline = Instant::now();
                        }
                    }
                },
                Some(Event::Exited(w)) => {
                    let wp = &mut workers[w as usize];
                    if wp.result.is_none() && !wp.exited {
                        notes.push(format!("worker {w} exited without a result"));
                    }
                    wp.exited = true;
                }
                None => {
                    for w in &mut workers {
                        w.exited = true;
                    }
                }
            },
            _ = ticker.tick() => {
                let live = timeline.live();
                let last = timeline.tick(crate::now_micros()).cloned();
                if options.progress {
                    progress_line(t0, phase, &live, last.as_ref(), &plan, tty);
                }
            }
            r = sig_rx.changed() => {
                if r.is_err() { continue; }
                let n = *sig_rx.borrow_and_update();
                if n > seen_signals {
                    seen_signals = n;
                    interrupted = true;
                    eprintln!("\ninterrupted: stopping{}", if n > 1 { " now" } else { " (again to skip waiting)" });
                    let _ = pub_stop_tx.send(true);
                    let nothing_to_drain = phase == Phase::Load && pub_task.is_none();
                    if n > 1 || phase == Phase::Ramp || nothing_to_drain {
                        deadline = Instant::now();
                    }
                    if phase == Phase::Grace {
                        deadline = deadline.min(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                match phase {
                    Phase::Ramp => {
                        if !interrupted {
                            ramp_timed_out = true;
                            notes.push(format!(
                                "ramp did not finish within {:.0}s; load started with the sockets that were up",
                                plan.ramp_timeout.as_secs_f64()
                            ));
                        }
                        if interrupted {
                            phase = Phase::Stopping;
                            deadline = Instant::now() + Duration::from_secs(30);
                            for w in &mut workers {
                                send_command(w, &Command::Stop { finals: HashMap::new() }).await;
                                w.stdin = None;
                            }
                        } else {
                            for w in &mut workers {
                                w.ready = true;
                            }
                        }
                    }
                    Phase::Load => {
                        // The publisher is bounded by its steps; this fires
                        // only when it is late (a saturated gateway answers
                        // slowly) or stuck. Ask it to stop, then give up on it.
                        if !pub_stop_requested && pub_task.is_some() {
                            let _ = pub_stop_tx.send(true);
                            pub_stop_requested = true;
                            deadline = Instant::now() + Duration::from_secs(15);
                            continue;
                        }
                        if let Some(t) = pub_task.take() {
                            t.abort();
                            notes.push("publisher did not stop in time; loss excludes the tail".into());
                        }
                        load_s = load_started.map_or(0.0, |s| s.elapsed().as_secs_f64());
                        if plan.publish.is_some() {
                            phase = Phase::Grace;
                            grace_started = Some(Instant::now());
                            deadline = Instant::now() + if interrupted { Duration::from_secs(1) } else { plan.grace };
                            for w in &mut workers {
                                w.quiet = false;
                            }
                        } else {
                            stop_workers(&mut workers, HashMap::new()).await;
                            phase = Phase::Stopping;
                            deadline = Instant::now() + Duration::from_secs(30);
                        }
                    }
                    Phase::Grace => {
                        let finals = pub_outcome.as_ref().map(|o| o.finals.clone()).unwrap_or_default();
                        stop_workers(&mut workers, finals).await;
                        phase = Phase::Stopping;
                        deadline = Instant::now() + Duration::from_secs(30);
                    }
                    Phase::Stopping => {
                        notes.push("some workers did not report within 30s of stop; they were killed".into());
                        break;
                    }
                }
            }
        }
    }
    if options.progress && tty {
        eprintln!();
    }
    for w in &mut workers {
        if w.result.is_none() {
            let _ = w.child.start_kill();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await;
    }
    let grace_s = grace_started.map_or(0.0, |g| g.elapsed().as_secs_f64());
    let results: Vec<WorkerResult> = workers.iter().filter_map(|w| w.result.clone()).collect();
    if results.len() < workers.len() {
        notes.push(format!(
            "{} of {} workers reported",
            results.len(),
            workers.len()
        ));
    }
    let report = report::build(report::Inputs {
        plan: &plan,
        command: options.command_line.clone(),
        started_unix,
        wall_s: t0.elapsed().as_secs_f64(),
        ramp_s,
        load_s,
        grace_s,
        interrupted,
        ramp_timed_out,
        notes,
        results: &results,
        publish: pub_outcome.as_ref(),
        series: timeline.finish(crate::now_micros()),
        coordinator_cpu_s: crate::stats::cpu_s(),
    });
    report::write_all(&report, &plan.out_dir).map_err(RunError::Output)?;
    Ok(report)
}

async fn stop_workers(
    workers: &mut [WorkerProc],
    finals: HashMap<String, crate::track::ChannelFinal>,
) {
    let cmd = Command::Stop { finals };
    for w in workers.iter_mut() {
        send_command(w, &cmd).await;
        // Closing stdin is the backstop: a worker also stops on EOF.
        w.stdin = None;
    }
}

fn progress_line(
    t0: Instant,
    phase: Phase,
    live: &timeline::Gauges,
    last: Option<&Sample>,
    plan: &Plan,
    tty: bool,
) {
    // Events and latency come from the newest closed second (two seconds
    // behind), socket gauges from the newest lines.
    let (events, p99) = match last {
        Some(s) if s.events > 0 => (s.events, human_us(s.p99_us)),
        Some(s) => (s.events, "-".into()),
        None => (0, "-".into()),
    };
    let mut line = format!(
        "[{:>5.0}s] {:<5} sockets {}/{}  ev/s {}  p99 {}  conn-err {}  disconn {}  rss {} MiB",
        t0.elapsed().as_secs_f64(),
        phase.name(),
        live.open,
        plan.sockets,
        human(events as f64),
        p99,
        live.connect_errors,
        live.disconnects,
        live.rss_kb / 1024
    );
    if plan.resume.is_some() {
        line.push_str(&format!(
            "  resumed {}  down {}",
            live.reconnects, live.down
        ));
    }
    if tty {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}
