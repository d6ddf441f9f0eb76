//! The command line: one subcommand per scenario plus `run` (a file that
//! names its scenario), all sharing the [`Settings`] flags, and the hidden
//! `worker` the coordinator starts. Exit codes: 0 completed, 1 could not
//! start or finish, 2 invalid settings, 3 problems found with `--strict`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::coordinator::{self, RunOptions};
use crate::report;
use crate::scenario::{Plan, Scenario, Settings};

/// gateway-loadtest: load generator for the gateway (loopback targets only
/// unless --allow-remote).
#[derive(Debug, Parser)]
#[command(name = "gateway-loadtest", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Ramp to N sockets at R/s (each joins a room), hold for --duration.
    Connect(RunArgs),
    /// N sockets over M rooms; publish to the rooms at --rate events/s.
    Fanout(RunArgs),
    /// Publish to the `broadcast` channel (every socket) at --rate events/s.
    Broadcast(RunArgs),
    /// Publish to user channels, round-robin over the users.
    Users(RunArgs),
    /// Hold a base of sockets while --churn-rate sockets/s connect and leave.
    Churn(RunArgs),
    /// Like fanout, with --slow-share of the sockets not reading.
    Slow(RunArgs),
    /// Run a scenario file that names its scenario (`scenario = "fanout"`).
    Run(RunArgs),
    /// Internal: a worker process, started by the coordinator.
    #[command(hide = true)]
    Worker,
}

/// Flags of every run subcommand.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario file (TOML, keys as the flags with `_`); flags override it.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Allow targets, Redis nodes and source addresses off loopback. Only on
    /// the command line, never from a file.
    #[arg(long)]
    pub allow_remote: bool,
    /// Print the resolved plan as JSON and exit without connecting.
    #[arg(long)]
    pub dry_run: bool,
    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Exit with status 3 when the report lists problems (errors, loss, ...).
    #[arg(long)]
    pub strict: bool,
    /// Scenario settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// The command line with secret values replaced, for the report.
pub fn redacted_command_line(args: &[String]) -> String {
    let secret_flags = ["--secret", "--api-key"];
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("<redacted>".to_owned());
            hide_next = false;
            continue;
        }
        if let Some(flag) = secret_flags
            .iter()
            .find(|f| a.starts_with(&format!("{f}=")))
        {
            out.push(format!("{flag}=<redacted>"));
        } else {
            hide_next = secret_flags.contains(&a.as_str());
            out.push(a.clone());
        }
    }
    out.join(" ")
}

/// Builds the plan of a run subcommand: file, then flags, then validation.
pub fn plan_of(scenario: Option<Scenario>, args: &RunArgs) -> Result<Plan, String> {
    let base = match &args.file {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let settings = base.overlay(args.settings.clone());
    Plan::build(scenario, settings, args.allow_remote, &|k| {
        std::env::var(k).ok()
    })
    .map_err(|e| e.to_string())
}

/// Runs the parsed command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let (scenario, args) = match cli.command {
        Cmd::Worker => return crate::worker::main(),
        Cmd::Connect(a) => (Some(Scenario::Connect), a),
        Cmd::Fanout(a) => (Some(Scenario::Fanout), a),
        Cmd::Broadcast(a) => (Some(Scenario::Broadcast), a),
        Cmd::Users(a) => (Some(Scenario::Users), a),
        Cmd::Churn(a) => (Some(Scenario::Churn), a),
        Cmd::Slow(a) => (Some(Scenario::Slow), a),
        Cmd::Run(a) => (None, a),
    };
    let plan = match plan_of(scenario, &args) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return 2;
        }
    };
    if args.dry_run {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
        return 0;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return 1;
        }
    };
    let argv: Vec<String> = std::env::args().collect();
    let options = RunOptions {
        progress: !args.quiet,
        command_line: redacted_command_line(&argv),
    };
    let out_dir = plan.out_dir.clone();
    eprintln!(
        "gateway-loadtest {}: {} sockets, {} worker(s), targets {}; report -> {}",
        plan.scenario.name(),
        plan.sockets,
        plan.workers,
        plan.targets
            .iter()
            .map(|t| t.url.as_str())
            .collect::<Vec<_>>()
            .join(","),
        out_dir.display()
    );
    match runtime.block_on(coordinator::run(plan, options)) {
        Ok(report) => {
            let l = &report.latency;
            eprintln!(
                "done: {}/{} connected{}, {} connect errors, {} delivered ({:.0}/s), p50 {} p99 {} p99.9 {} max {}, lost {}, dup {}, out-of-order {}",
                report.sockets.connected - report.churn.as_ref().map_or(0, |c| c.opened),
                report.sockets.planned,
                report
                    .churn
                    .as_ref()
                    .map_or(String::new(), |c| format!(" (+{} churn)", c.opened)),
                report.sockets.failed,
                report.events.delivery.unique,
                report.events.delivered_per_s,
                report::human_us(l.p50_us),
                report::human_us(l.p99_us),
                report::human_us(l.p999_us),
                report::human_us(l.max_us),
                report.events.delivery.lost,
                report.events.delivery.duplicates,
                report.events.delivery.out_of_order
            );
            if let Some(c) = &report.continuity {
                eprintln!(
                    "continuity by offset: {} events with offset, lost {} (announced {}, silent {}), dup {}, out-of-order {}, resyncs {}, recovered {} / not {}",
                    c.totals.events,
                    c.totals.lost,
                    c.totals.lost_announced,
                    c.lost_silent,
                    c.totals.duplicates,
                    c.totals.out_of_order,
                    c.totals.resyncs,
                    c.totals.recovered,
                    c.totals.not_recovered
                );
            }
            if let Some(rc) = &report.reconnect {
                eprintln!(
                    "reconnects: {} closes, {} attempts, {} resumed (close to resumed p99 {}), {} down at the end",
                    rc.closes.values().sum::<u64>(),
                    rc.attempts,
                    rc.resumed,
                    report::human_us(rc.close_to_resumed.p99_us),
                    rc.down_at_end
                );
            }
            eprintln!(
                "load tester CPU: {:.1} s = {:.2} us per event received ({:.2} cores on average)",
                report.client.cpu_s, report.client.cpu_us_per_event, report.client.cores_avg
            );
            for p in &report.outcome.problems {
                eprintln!("problem: {p}");
            }
            eprintln!("report: {}", out_dir.join("summary.md").display());
            if args.strict && !report.outcome.problems.is_empty() {
                3
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_the_command_line() {
        let argv: Vec<String> = [
            "gl",
            "fanout",
            "--secret",
            "s3",
            "--api-key=k1",
            "--rate",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            redacted_command_line(&argv),
            "gl fanout --secret <redacted> --api-key=<redacted> --rate 5"
        );
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
