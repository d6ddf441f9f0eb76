//! Scenario settings and the validated run plan. [`Settings`] is one flat
//! set of optional knobs filled by a TOML file, then by flags (flag > file >
//! environment > scenario default; file keys are flag names with `_`).
//! [`Plan::build`] applies defaults and bounds, reporting every problem at
//! once; nothing starts without a valid, bounded plan.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dur::{self, Dur};
use crate::safety::{self, HttpBase, Target};

/// The kind of load a run applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Ramp to N sockets at R/s, each joining a room, and hold them.
    Connect,
    /// N sockets over M rooms; a publisher sends to the rooms at a fixed rate.
    Fanout,
    /// One event to every socket through the `broadcast` channel, repeated.
    Broadcast,
    /// Events to user channels (`user:<sub>`), round-robin over the users.
    Users,
    /// A base of sockets plus sockets connecting and leaving continuously.
    Churn,
    /// Like fanout, but a share of the sockets stops reading.
    Slow,
}

impl Scenario {
    /// The lower-case name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Fanout => "fanout",
            Scenario::Broadcast => "broadcast",
            Scenario::Users => "users",
            Scenario::Churn => "churn",
            Scenario::Slow => "slow",
        }
    }
}

/// The WebSocket subprotocol the sockets offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// `v1.json`: text frames.
    Json,
    /// `v1.msgpack`: binary frames.
    Msgpack,
    /// `v1.json+batch`: text frames, a burst packed into one JSON array.
    JsonBatch,
    /// `v1.msgpack+batch`: binary frames, a burst packed into one array.
    MsgpackBatch,
}

/// Where the token goes in the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TokenIn {
    /// `Authorization: Bearer <JWT>`.
    Header,
    /// `?token=<JWT>`, as browsers do.
    Query,
}

/// How events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PublishVia {
    /// `POST /api/publish` with an API key.
    Http,
    /// Redis `SPUBLISH` (sharded, slot-routed) or `PUBLISH` (classic), as
    /// `--redis-mode` says.
    Redis,
    /// Redis `FCALL gw_publish 1 <prefix><channel> <payload>` (contract
    /// section 6: history and an offset per event), slot-routed.
    Fcall,
    /// Redis `SPUBLISH` (= `redis` with `--redis-mode sharded`).
    Spublish,
    /// Redis `PUBLISH` (= `redis` with `--redis-mode classic`).
    Publish,
}

/// The Redis command a Redis publisher sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisCommand {
    /// `SPUBLISH <channel> <payload>`.
    #[default]
    Spublish,
    /// `PUBLISH <channel> <payload>`.
    Publish,
    /// `FCALL gw_publish 1 <channel> <payload>`, returning the offset.
    Fcall,
}

/// Redis publish command family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// `SPUBLISH`, routed to the node that owns the channel's slot.
    Sharded,
    /// `PUBLISH` to the first node.
    Classic,
}

/// Which channels the publisher sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PublishTarget {
    /// `room:<prefix><i>` for every room.
    Rooms,
    /// `user:<sub>` for every user.
    Users,
    /// The `broadcast` channel.
    Broadcast,
}

/// Every knob of a run, all optional: a scenario file and flags each fill one,
/// and [`Settings::overlay`] lets flags win.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Scenario (files only; on the command line it is the subcommand).
    #[arg(skip)]
    pub scenario: Option<Scenario>,
    /// Run name, used in the output directory and the report title.
    #[arg(long)]
    pub name: Option<String>,
    /// Gateway WebSocket URLs (ws://host:port/ws); sockets are spread round-robin.
    #[arg(long = "target", value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// Number of sockets held (the base, for churn).
    #[arg(long)]
    pub sockets: Option<u64>,
    /// Number of rooms; socket i joins room i % rooms (0 = no room).
    #[arg(long)]
    pub rooms: Option<u64>,
    /// Number of distinct users; socket i is user i % users (default: one per socket).
    #[arg(long)]
    pub users: Option<u64>,
    /// Prefix of room names (`lt-` gives lt-0, lt-1, ...).
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Prefix of user ids (token `sub`).
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// Connects started per second during the ramp (0 = as fast as concurrency allows).
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Connects in flight at once (connect + welcome + subscribe).
    #[arg(long)]
    pub concurrency: Option<u64>,
    /// How long the load phase lasts once every socket is up (e.g. 30s, 2m).
    #[arg(long)]
    pub duration: Option<Dur>,
    /// Longest the ramp may take before the load phase starts anyway.
    #[arg(long)]
    pub ramp_timeout: Option<Dur>,
    /// Longest wait for in-flight events after publishing stops.
    #[arg(long)]
    pub grace: Option<Dur>,
    /// Timeout of each connect step (TCP, upgrade, welcome, subscribe).
    #[arg(long)]
    pub connect_timeout: Option<Dur>,
    /// Subprotocol offered by the sockets.
    #[arg(long, value_enum)]
    pub codec: Option<Codec>,
    /// Where the token goes in the upgrade request.
    #[arg(long, value_enum)]
    pub token_in: Option<TokenIn>,
    /// HMAC secret to mint HS256 tokens with (default: $LOADTEST_SECRET,
    /// $GATEWAY_AUTH_HS_SECRET, then auth.hs_secret of --gateway-config).
    #[arg(long)]
    pub secret: Option<String>,
    /// Gateway config file to read auth.hs_secret and api.keys from (default ./gateway.toml).
    #[arg(long)]
    pub gateway_config: Option<PathBuf>,
    /// File of ready-made tokens, one per line; socket i uses line i % lines.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// Lifetime of minted tokens (default: the run's upper bound plus 10 minutes).
    #[arg(long)]
    pub token_ttl: Option<Dur>,
    /// Events per second published in total, round-robin over the target channels.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stepped rates (e.g. 1,10,100,1000): each held for --step-duration.
    #[arg(long, value_delimiter = ',')]
    pub rate_steps: Option<Vec<f64>>,
    /// How long each rate step lasts.
    #[arg(long)]
    pub step_duration: Option<Dur>,
    /// Which channels receive the events.
    #[arg(long, value_enum)]
    pub publish_target: Option<PublishTarget>,
    /// Publish through the HTTP API or Redis (default: redis when --redis is given).
    #[arg(long, value_enum)]
    pub publish_via: Option<PublishVia>,
    /// HTTP publish base URL (default: http://<first target host:port>).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// API key for /api/publish (default: $LOADTEST_API_KEY, first of
    /// $GATEWAY_API_KEYS, then api.keys of --gateway-config).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Publisher connections (HTTP keep-alive connections; channels are split
    /// over them so each channel keeps its order).
    #[arg(long)]
    pub publishers: Option<u64>,
    /// Redis node addresses (host:port); for a cluster any subset of nodes.
    #[arg(long, value_delimiter = ',')]
    pub redis: Option<Vec<String>>,
    /// SPUBLISH with slot routing (sharded) or PUBLISH (classic).
    #[arg(long, value_enum)]
    pub redis_mode: Option<RedisMode>,
    /// Redis channel prefix the gateway listens on.
    #[arg(long)]
    pub redis_prefix: Option<String>,
    /// Padding added to each event payload, in bytes.
    #[arg(long)]
    pub payload_bytes: Option<u64>,
    /// Churn: new sockets per second (each also leaves after --churn-hold).
    #[arg(long)]
    pub churn_rate: Option<f64>,
    /// Churn: how long each churning socket stays.
    #[arg(long)]
    pub churn_hold: Option<Dur>,
    /// Slow: share of sockets (0..0.9) that stop reading after subscribing.
    #[arg(long)]
    pub slow_share: Option<f64>,
    /// Worker processes (default: enough for --sockets-per-worker).
    #[arg(long)]
    pub workers: Option<u64>,
    /// Most sockets one worker holds (a process may have 20,000 open files).
    #[arg(long)]
    pub sockets_per_worker: Option<u64>,
    /// Runtime threads per worker (default 1, or 2 with a single worker).
    #[arg(long)]
    pub worker_threads: Option<u64>,
    /// Source addresses to bind client sockets to (e.g. 127.0.0.1,127.0.0.2),
    /// or `auto` (default): one loopback address per 5,000 sockets past 5,000.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Option<Vec<String>>,
    /// Output directory (default loadtest-results/<name>-<unix time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume mode: after any close a socket reconnects (with jittered
    /// backoff, to another target when its node is gone) and resumes every
    /// channel from the last offset it saw (`--resume` alone means true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub resume: Option<bool>,
    /// With --resume: reconnect after a close (default true). `false` keeps
    /// the resume-mode accounting but a closed socket stays closed.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub reconnect: Option<bool>,
    /// Reconnect backoff unit: attempt n waits a random time in
    /// [0, min(max, min x 2^n)] (full jitter). Default 50ms.
    #[arg(long)]
    pub reconnect_min: Option<Dur>,
    /// Longest reconnect backoff window. Default 2s.
    #[arg(long)]
    pub reconnect_max: Option<Dur>,
}

macro_rules! overlay_fields {
    ($base:ident, $top:ident; $($f:ident),* $(,)?) => {
        Settings { $($f: $top.$f.or($base.$f)),* }
    };
}

impl Settings {
    /// Reads a scenario file.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads a scenario file from disk.
    pub fn from_file(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `top` wins wherever it has a value.
    pub fn overlay(self, top: Settings) -> Settings {
        let base = self;
        overlay_fields!(base, top;
            scenario, name, targets, sockets, rooms, users, room_prefix, user_prefix,
            connect_rate, concurrency, duration, ramp_timeout, grace, connect_timeout,
            codec, token_in, secret, gateway_config, tokens_file, token_ttl, rate,
            rate_steps, step_duration, publish_target, publish_via, publish_url, api_key,
            publishers, redis, redis_mode, redis_prefix, payload_bytes, churn_rate,
            churn_hold, slow_share, workers, sockets_per_worker, worker_threads,
            source_ips, out, resume, reconnect, reconnect_min, reconnect_max)
    }
}

/// How sockets authenticate.
#[derive(Clone, Serialize, Deserialize)]
pub struct AuthPlan {
    /// Where the key material came from, for the report (never the secret).
    pub source: String,
    /// HMAC secret for minting; never serialised into reports.
    #[serde(skip)]
    pub secret: Option<String>,
    /// File of ready-made tokens.
    pub tokens_file: Option<PathBuf>,
    /// Lifetime of minted tokens.
    #[serde(with = "dur::as_secs")]
    pub token_ttl: Duration,
}

impl fmt::Debug for AuthPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthPlan")
            .field("source", &self.source)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("tokens_file", &self.tokens_file)
            .field("token_ttl", &self.token_ttl)
            .finish()
    }
}

/// The publisher's part of a plan.
#[derive(Clone, Serialize, Deserialize)]
pub struct PublishPlan {
    /// HTTP or Redis (`fcall`, `spublish` and `publish` become `redis` with
    /// their [`RedisCommand`]).
    pub via: PublishVia,
    /// The Redis command (via = redis).
    #[serde(default)]
    pub redis_command: RedisCommand,
    /// Which channels receive events.
    pub target: PublishTarget,
    /// Rates in events/s: one entry for a constant rate, several for steps.
    pub steps: Vec<f64>,
    /// How long each step lasts (the whole load phase for a constant rate).
    #[serde(with = "dur::as_secs")]
    pub step_duration: Duration,
    /// Padding per event, bytes.
    pub payload_bytes: u64,
    /// HTTP endpoint (via = http).
    pub http: Option<HttpBase>,
    /// API key; never serialised into reports.
    #[serde(skip)]
    pub api_key: String,
    /// Number of publisher connections.
    pub publishers: u64,
    /// Redis seed nodes (via = redis).
    pub redis: Vec<SocketAddr>,
    /// SPUBLISH or PUBLISH.
    pub redis_mode: RedisMode,
    /// Redis channel prefix.
    pub redis_prefix: String,
}

impl fmt::Debug for PublishPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishPlan")
            .field("via", &self.via)
            .field("redis_command", &self.redis_command)
            .field("target", &self.target)
            .field("steps", &self.steps)
            .field("step_duration", &self.step_duration)
            .field("http", &self.http)
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

/// Resume mode (contract section 6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumePlan {
    /// Reconnect after a close; false = track offsets and resyncs, but a
    /// closed socket stays closed.
    pub reconnect: bool,
    /// Backoff unit: attempt n waits uniformly in [0, min(max, min x 2^n)].
    #[serde(with = "dur::as_secs")]
    pub backoff_min: Duration,
    /// Longest backoff window.
    #[serde(with = "dur::as_secs")]
    pub backoff_max: Duration,
}

/// Churn parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnPlan {
    /// New sockets per second, across all workers.
    pub rate: f64,
    /// How long each churning socket stays before closing.
    #[serde(with = "dur::as_secs")]
    pub hold: Duration,
}

/// A validated run: every default applied, every bound checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Run name.
    pub name: String,
    /// Gateway endpoints.
    pub targets: Vec<Target>,
    /// Base socket count.
    pub sockets: u64,
    /// Room count (0 = sockets join no room).
    pub rooms: u64,
    /// Distinct user count.
    pub users: u64,
    /// Room name prefix.
    pub room_prefix: String,
    /// User id prefix.
    pub user_prefix: String,
    /// Connects started per second (0 = unlimited).
    pub connect_rate: f64,
    /// Connects in flight.
    pub concurrency: u64,
    /// Per-step connect timeout.
    #[serde(with = "dur::as_secs")]
    pub connect_timeout: Duration,
    /// Longest ramp.
    #[serde(with = "dur::as_secs")]
    pub ramp_timeout: Duration,
    /// Load phase length.
    #[serde(with = "dur::as_secs")]
    pub duration: Duration,
    /// Longest wait for in-flight events after publishing.
    #[serde(with = "dur::as_secs")]
    pub grace: Duration,
    /// Subprotocol.
    pub codec: Codec,
    /// Token placement.
    pub token_in: TokenIn,
    /// Authentication.
    pub auth: AuthPlan,
    /// Publisher, when the scenario publishes.
    pub publish: Option<PublishPlan>,
    /// Churn, for the churn scenario.
    pub churn: Option<ChurnPlan>,
    /// Share of sockets that stop reading.
    pub slow_share: f64,
    /// Resume mode, when on.
    #[serde(default)]
    pub resume: Option<ResumePlan>,
    /// Worker processes.
    pub workers: u64,
    /// Runtime threads per worker.
    pub worker_threads: u64,
    /// Source addresses (empty = let the OS choose).
    pub source_ips: Vec<IpAddr>,
    /// Whether non-loopback addresses were allowed.
    pub allow_remote: bool,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Hard upper bound of the whole run; workers stop by themselves past it.
    #[serde(with = "dur::as_secs")]
    pub max_runtime: Duration,
}

/// Every problem found in the settings, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// One line per problem, each naming its setting.
    pub problems: Vec<String>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid load test settings:")?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanError {}

/// Sockets per source address that `auto` aims for. A source address has
/// ~28,000 ephemeral ports, but the kernel's search for a free one slows
/// down as they fill (measured here: 18,000 sockets from one address
/// connected at ~650/s, from four at ~5,900/s), so auto keeps each address
/// lightly used.
pub const SOCKETS_PER_SOURCE_IP: u64 = 5_000;
/// Default and ceiling of sockets per worker process.
pub const DEFAULT_SOCKETS_PER_WORKER: u64 = 18_000;

/// Scenario defaults that differ between scenarios.
struct Defaults {
    rooms: u64,
    rate: f64,
    target: PublishTarget,
    slow_share: f64,
}

fn defaults(s: Scenario) -> Defaults {
    let d = |rooms, rate, target, slow_share| Defaults {
        rooms,
        rate,
        target,
        slow_share,
    };
    match s {
        Scenario::Connect => d(1, 0.0, PublishTarget::Rooms, 0.0),
        Scenario::Fanout => d(10, 10.0, PublishTarget::Rooms, 0.0),
        Scenario::Broadcast => d(0, 1.0, PublishTarget::Broadcast, 0.0),
        Scenario::Users => d(0, 100.0, PublishTarget::Users, 0.0),
        Scenario::Churn => d(10, 0.0, PublishTarget::Rooms, 0.0),
        Scenario::Slow => d(1, 100.0, PublishTarget::Rooms, 0.1),
    }
}

/// Checks one numeric bound, recording a problem.
fn bound<T: PartialOrd + fmt::Display + Copy>(
    problems: &mut Vec<String>,
    key: &str,
    v: T,
    lo: T,
    hi: T,
) {
    if !(v >= lo && v <= hi) {
        problems.push(format!("{key}: {v} is outside {lo}..={hi}"));
    }
}

/// The soft open-files limit of this process, from /proc (no libc call needed).
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Reads `auth.hs_secret` and the first of `api.keys` from a gateway config file.
fn gateway_config_keys(path: &Path) -> Result<(Option<String>, Option<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = value
        .get("auth")
        .and_then(|a| a.get("hs_secret"))
        .and_then(|s| s.as_str())
        .map(str::to_owned);
    let key = value
        .get("api")
        .and_then(|a| a.get("keys"))
        .and_then(|k| k.as_array())
        .and_then(|k| k.first())
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    Ok((secret, key))
}

impl Plan {
    /// Validates settings into a plan. `scenario` is the subcommand (None for
    /// `run`, where the file must name it); `env` reads environment variables
    /// (a seam for tests).
    pub fn build(
        scenario: Option<Scenario>,
        s: Settings,
        allow_remote: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, PlanError> {
        let mut problems = Vec::new();
        let scenario = match (scenario, s.scenario) {
            (Some(a), Some(b)) if a != b => {
                problems.push(format!(
                    "scenario: the file says `{}` but the command says `{}`",
                    b.name(),
                    a.name()
                ));
                a
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => {
                return Err(PlanError {
                    problems: vec![
                        "scenario: name one (subcommand, or `scenario = \"fanout\"` in the file)"
                            .into(),
                    ],
                });
            }
        };
        let d = defaults(scenario);

        let name = s.name.clone().unwrap_or_else(|| scenario.name().to_owned());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            problems.push(format!(
                "name: `{name}` must be letters, digits, `-`, `_` or `.`"
            ));
        }

        let raw_targets = s
            .targets
            .clone()
            .unwrap_or_else(|| vec!["ws://127.0.0.1:8080/ws".to_owned()]);
        let mut targets = Vec::new();
        for t in &raw_targets {
            match safety::parse_target(t, allow_remote) {
                Ok(t) => targets.push(t),
                Err(e) => problems.push(format!("target: {e}")),
            }
        }
        if raw_targets.is_empty() {
            problems.push("target: at least one gateway URL is needed".into());
        }

        let sockets = s.sockets.unwrap_or(1000);
        bound(&mut problems, "sockets", sockets, 1, 2_000_000);
        let rooms = s.rooms.unwrap_or(d.rooms);
        bound(&mut problems, "rooms", rooms, 0, 1_000_000);
        let users = s.users.unwrap_or(sockets);
        bound(&mut problems, "users", users, 1, 2_000_000);
        let room_prefix = s.room_prefix.clone().unwrap_or_else(|| "lt-".into());
        let user_prefix = s.user_prefix.clone().unwrap_or_else(|| "lt-user-".into());
        let name_ok = |p: &str| {
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:.@".contains(c))
                && p.len() <= 100
        };
        if !name_ok(&room_prefix) {
            problems.push(format!(
                "room_prefix: `{room_prefix}` has characters a room name cannot hold"
            ));
        }
        if !name_ok(&user_prefix) || user_prefix.is_empty() {
            problems.push(format!(
                "user_prefix: `{user_prefix}` must be 1..100 of A-Z a-z 0-9 _ - : . @"
            ));
        }

        let connect_rate = s.connect_rate.unwrap_or(1000.0);
        bound(&mut problems, "connect_rate", connect_rate, 0.0, 1.0e6);
        let concurrency = s.concurrency.unwrap_or(200);
        bound(&mut problems, "concurrency", concurrency, 1, 100_000);
        let connect_timeout = s.connect_timeout.map_or(Duration::from_secs(10), |d| d.0);
        bound(
            &mut problems,
            "connect_timeout (s)",
            connect_timeout.as_secs_f64(),
            0.01,
            300.0,
        );
        let duration = s.duration.map_or(Duration::from_secs(10), |d| d.0);
        bound(
            &mut problems,
            "duration (s)",
            duration.as_secs_f64(),
            0.0,
            86_400.0,
        );
        let grace = s.grace.map_or(Duration::from_secs(5), |d| d.0);
        bound(&mut problems, "grace (s)", grace.as_secs_f64(), 0.0, 600.0);
        let ramp_default = if connect_rate > 0.0 {
            Duration::from_secs_f64((sockets as f64 / connect_rate * 2.0 + 30.0).min(86_400.0))
        } else {
            Duration::from_secs(60 + sockets / 1000)
        };
        let ramp_timeout = s.ramp_timeout.map_or(ramp_default, |d| d.0);
        bound(
            &mut problems,
            "ramp_timeout (s)",
            ramp_timeout.as_secs_f64(),
            0.1,
            86_400.0,
        );

        let codec = s.codec.unwrap_or(Codec::Json);
        let token_in = s.token_in.unwrap_or(TokenIn::Header);

        // Key material: flag/file > environment > gateway config file.
        let config_path = s
            .gateway_config
            .clone()
            .unwrap_or_else(|| PathBuf::from("gateway.toml"));
        let (cfg_secret, cfg_key) = if s.gateway_config.is_some() || config_path.exists() {
            match gateway_config_keys(&config_path) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("gateway_config: {e}"));
                    (None, None)
                }
            }
        } else {
            (None, None)
        };

        let churn = if scenario == Scenario::Churn || s.churn_rate.is_some() {
            let rate = s.churn_rate.unwrap_or(100.0);
            bound(&mut problems, "churn_rate", rate, 0.0, 100_000.0);
            let hold = s.churn_hold.map_or(Duration::from_secs(5), |d| d.0);
            bound(
                &mut problems,
                "churn_hold (s)",
                hold.as_secs_f64(),
                0.0,
                3600.0,
            );
            (rate > 0.0).then_some(ChurnPlan { rate, hold })
        } else {
            None
        };

        let steps: Vec<f64> = match &s.rate_steps {
            Some(steps) if !steps.is_empty() => steps.clone(),
            _ => vec![s.rate.unwrap_or(d.rate)],
        };
        for r in &steps {
            bound(&mut problems, "rate", *r, 0.0, 1.0e6);
        }
        let stepped = s.rate_steps.as_ref().is_some_and(|v| !v.is_empty());
        let step_duration = if stepped {
            s.step_duration.map_or(Duration::from_secs(10), |d| d.0)
        } else {
            duration
        };
        if stepped {
            bound(
                &mut problems,
                "step_duration (s)",
                step_duration.as_secs_f64(),
                0.1,
                86_400.0,
            );
        }
        let load_phase = if stepped {
            step_duration * steps.len() as u32
        } else {
            duration
        };
        let events_bound: f64 = steps.iter().map(|r| r * step_duration.as_secs_f64()).sum();
        if events_bound > 1.0e9 {
            problems.push(format!(
                "rate x duration: {events_bound:.0} events is more than 1e9"
            ));
        }

        let publishing = steps.iter().any(|r| *r > 0.0);
        let publish = if publishing {
            let target = s.publish_target.unwrap_or(d.target);
            if target == PublishTarget::Rooms && rooms == 0 {
                problems.push("rooms: publishing to rooms needs rooms >= 1".into());
            }
            let asked = s.publish_via.unwrap_or(if s.redis.is_some() {
                PublishVia::Redis
            } else {
                PublishVia::Http
            });
            let (via, redis_command, implied_mode) = match asked {
                PublishVia::Http => (PublishVia::Http, RedisCommand::Spublish, None),
                PublishVia::Redis => match s.redis_mode.unwrap_or(RedisMode::Sharded) {
                    RedisMode::Sharded => (PublishVia::Redis, RedisCommand::Spublish, None),
                    RedisMode::Classic => (PublishVia::Redis, RedisCommand::Publish, None),
                },
                PublishVia::Fcall => (PublishVia::Redis, RedisCommand::Fcall, None),
                PublishVia::Spublish => (
                    PublishVia::Redis,
                    RedisCommand::Spublish,
                    Some(RedisMode::Sharded),
                ),
                PublishVia::Publish => (
                    PublishVia::Redis,
                    RedisCommand::Publish,
                    Some(RedisMode::Classic),
                ),
            };
            if let (Some(implied), Some(given)) = (implied_mode, s.redis_mode)
                && implied != given
            {
                problems.push(format!(
                    "redis_mode: `{}` contradicts publish_via `{}`",
                    match given {
                        RedisMode::Sharded => "sharded",
                        RedisMode::Classic => "classic",
                    },
                    match asked {
                        PublishVia::Spublish => "spublish",
                        _ => "publish",
                    }
                ));
            }
            let redis_mode = implied_mode.or(s.redis_mode).unwrap_or(RedisMode::Sharded);
            let payload_bytes = s.payload_bytes.unwrap_or(0);
            bound(&mut problems, "payload_bytes", payload_bytes, 0, 1 << 20);
            let publishers = s.publishers.unwrap_or(match via {
                PublishVia::Http => 4,
                _ => 1,
            });
            bound(&mut problems, "publishers", publishers, 1, 64);
            let mut http = None;
            let mut api_key = String::new();
            let mut redis = Vec::new();
            match via {
                PublishVia::Http => {
                    let url = s
                        .publish_url
                        .clone()
                        .or_else(|| targets.first().map(|t| format!("http://{}", t.addr)));
                    if let Some(url) = url {
                        match safety::parse_http_base(&url, allow_remote) {
                            Ok(b) => http = Some(b),
                            Err(e) => problems.push(format!("publish_url: {e}")),
                        }
                    }
                    let key = s
                        .api_key
                        .clone()
                        .or_else(|| env("LOADTEST_API_KEY"))
                        .or_else(|| {
                            env("GATEWAY_API_KEYS")
                                .and_then(|k| k.split(',').next().map(str::to_owned))
                        })
                        .or(cfg_key);
                    match key {
                        Some(k) if !k.is_empty() => api_key = k,
                        _ => problems.push(
                            "api_key: publishing over HTTP needs an API key (--api-key, $LOADTEST_API_KEY, \
                             $GATEWAY_API_KEYS, or api.keys in the gateway config)"
                                .into(),
                        ),
                    }
                }
                _ => {
                    for a in s.redis.clone().unwrap_or_default() {
                        match safety::parse_redis_addr(&a, allow_remote) {
                            Ok(addr) => redis.push(addr),
                            Err(e) => problems.push(format!("redis: {e}")),
                        }
                    }
                    if s.redis.as_ref().is_none_or(|r| r.is_empty()) {
                        problems
                            .push("redis: publishing through Redis needs --redis host:port".into());
                    }
                }
            }
            Some(PublishPlan {
                via,
                redis_command,
                target,
                steps: steps.clone(),
                step_duration: if stepped { step_duration } else { load_phase },
                payload_bytes,
                http,
                api_key,
                publishers,
                redis,
                redis_mode,
                redis_prefix: s.redis_prefix.clone().unwrap_or_else(|| "gw:".into()),
            })
        } else {
            None
        };

        let slow_share = s.slow_share.unwrap_or(d.slow_share);
        bound(&mut problems, "slow_share", slow_share, 0.0, 0.9);

        let resume = if s.resume.unwrap_or(false) {
            let backoff_min = s.reconnect_min.map_or(Duration::from_millis(50), |d| d.0);
            let backoff_max = s.reconnect_max.map_or(Duration::from_secs(2), |d| d.0);
            bound(
                &mut problems,
                "reconnect_min (s)",
                backoff_min.as_secs_f64(),
                0.001,
                60.0,
            );
            bound(
                &mut problems,
                "reconnect_max (s)",
                backoff_max.as_secs_f64(),
                backoff_min.as_secs_f64(),
                600.0,
            );
            Some(ResumePlan {
                reconnect: s.reconnect.unwrap_or(true),
                backoff_min,
                backoff_max,
            })
        } else {
            for (set, key) in [
                (s.reconnect.is_some(), "reconnect"),
                (s.reconnect_min.is_some(), "reconnect_min"),
                (s.reconnect_max.is_some(), "reconnect_max"),
            ] {
                if set {
                    problems.push(format!("{key}: only applies with resume = true (--resume)"));
                }
            }
            None
        };

        // Sockets a run may hold at once: the base plus the churning ones.
        let peak = sockets
            + churn.as_ref().map_or(0, |c| {
                (c.rate * c.hold.as_secs_f64() * 1.2).ceil() as u64 + 10
            });
        let fd_cap =
            open_files_limit().map_or(DEFAULT_SOCKETS_PER_WORKER, |l| l.saturating_sub(200).max(1));
        let per_worker_max = s
            .sockets_per_worker
            .unwrap_or(DEFAULT_SOCKETS_PER_WORKER.min(fd_cap));
        if per_worker_max == 0 || per_worker_max > fd_cap {
            problems.push(format!(
                "sockets_per_worker: {per_worker_max} does not fit this process's open-files limit (at most {fd_cap})"
            ));
        }
        let workers = s
            .workers
            .unwrap_or_else(|| peak.div_ceil(per_worker_max.max(1)).max(1));
        bound(&mut problems, "workers", workers, 1, 256);
        if workers > 0 && peak.div_ceil(workers) > per_worker_max.min(fd_cap) {
            problems.push(format!(
                "workers: {workers} workers would hold {} sockets each, above {}; use more workers",
                peak.div_ceil(workers),
                per_worker_max.min(fd_cap)
            ));
        }
        let worker_threads = s.worker_threads.unwrap_or(if workers == 1 { 2 } else { 1 });
        bound(&mut problems, "worker_threads", worker_threads, 1, 64);

        let source_ips = match s.source_ips.as_deref() {
            Some([auto]) if auto == "auto" => auto_source_ips(&targets, peak),
            None => auto_source_ips(&targets, peak),
            Some(list) => {
                let mut ips = Vec::new();
                for v in list {
                    match safety::parse_source_ip(v, allow_remote) {
                        Ok(ip) => ips.push(ip),
                        Err(e) => problems.push(format!("source_ips: {e}")),
                    }
                }
                ips
            }
        };
        if !source_ips.is_empty() {
            let families: BTreeSet<bool> = source_ips.iter().map(IpAddr::is_ipv4).collect();
            if targets
                .iter()
                .any(|t| !families.contains(&t.addr.is_ipv4()))
            {
                problems.push(
                    "source_ips: every target needs a source address of its IP family".into(),
                );
            }
            if peak.div_ceil(source_ips.len() as u64) > 28_000 {
                problems.push(format!(
                    "source_ips: {} addresses give ~28,000 ports each, too few for {peak} sockets",
                    source_ips.len()
                ));
            }
        }

        let auth = if let Some(path) = s.tokens_file.clone() {
            if !path.exists() {
                problems.push(format!("tokens_file: {} does not exist", path.display()));
            }
            AuthPlan {
                source: format!("tokens file {}", path.display()),
                secret: None,
                tokens_file: Some(path),
                token_ttl: Duration::ZERO,
            }
        } else {
            let (secret, source) = if let Some(sec) = s.secret.clone() {
                (Some(sec), "secret given in settings".to_owned())
            } else if let Some(sec) = env("LOADTEST_SECRET") {
                (Some(sec), "HS256 secret from $LOADTEST_SECRET".to_owned())
            } else if let Some(sec) = env("GATEWAY_AUTH_HS_SECRET") {
                (
                    Some(sec),
                    "HS256 secret from $GATEWAY_AUTH_HS_SECRET".to_owned(),
                )
            } else {
                (
                    cfg_secret,
                    format!("HS256 secret from {} auth.hs_secret", config_path.display()),
                )
            };
            if secret.as_deref().is_none_or(str::is_empty) {
                problems.push(
                    "secret: no HMAC secret to mint tokens with (--secret, $LOADTEST_SECRET, \
                     $GATEWAY_AUTH_HS_SECRET, auth.hs_secret in ./gateway.toml) and no --tokens-file"
                        .into(),
                );
            }
            AuthPlan {
                source,
                secret,
                tokens_file: None,
                token_ttl: Duration::ZERO,
            }
        };

        let max_runtime = ramp_timeout + load_phase + grace + Duration::from_secs(60);
        let token_ttl = s
            .token_ttl
            .map_or(max_runtime + Duration::from_secs(600), |d| d.0);
        let auth = AuthPlan { token_ttl, ..auth };

        let out_dir = s.out.clone().unwrap_or_else(|| {
            let secs = crate::now_micros() / 1_000_000;
            PathBuf::from("loadtest-results").join(format!("{name}-{secs}"))
        });

        if !problems.is_empty() {
            return Err(PlanError { problems });
        }
        Ok(Plan {
            scenario,
            name,
            targets,
            sockets,
            rooms,
            users,
            room_prefix,
            user_prefix,
            connect_rate,
            concurrency,
            connect_timeout,
            ramp_timeout,
            duration: load_phase,
            grace,
            codec,
            token_in,
            auth,
            publish,
            churn,
            slow_share,
            resume,
            workers,
            worker_threads,
            source_ips,
            allow_remote,
            out_dir,
            max_runtime,
        })
    }

    /// The room socket `idx` joins, if any.
    pub fn socket_room(&self, idx: u64) -> Option<String> {
        (self.rooms > 0).then(|| format!("{}{}", self.room_prefix, idx % self.rooms))
    }

    /// The user id (token `sub`) of socket `idx` when tokens are minted.
    pub fn socket_user(&self, idx: u64) -> String {
        format!("{}{}", self.user_prefix, idx % self.users.max(1))
    }

    /// Whether socket `idx` is one of the slow (non-reading) ones: spread
    /// evenly so every room and worker gets its share.
    pub fn socket_is_slow(&self, idx: u64) -> bool {
        if self.slow_share <= 0.0 {
            return false;
        }
        let per_thousand = (self.slow_share * 1000.0).round() as u64;
        (idx * 7919 % 1000) < per_thousand
    }

    /// The channels the publisher sends to, in wire form (`room:lt-0`).
    /// `subs` lists the users when tokens come from a file.
    pub fn publish_channels(&self, subs: Option<&[String]>) -> Vec<String> {
        let Some(p) = &self.publish else {
            return Vec::new();
        };
        match p.target {
            PublishTarget::Rooms => (0..self.rooms)
                .map(|i| format!("room:{}{i}", self.room_prefix))
                .collect(),
            PublishTarget::Broadcast => vec!["broadcast".to_owned()],
            PublishTarget::Users => match subs {
                Some(subs) => subs.iter().map(|s| format!("user:{s}")).collect(),
                None => (0..self.users)
                    .map(|i| format!("user:{}{i}", self.user_prefix))
                    .collect(),
            },
        }
    }
}

/// One loopback source address per [`SOCKETS_PER_SOURCE_IP`] sockets, only
/// past that many sockets and when every target is IPv4 loopback (small runs
/// leave the choice to the kernel).
fn auto_source_ips(targets: &[Target], peak: u64) -> Vec<IpAddr> {
    let v4_loopback = targets
        .iter()
        .all(|t| t.addr.is_ipv4() && t.addr.ip().is_loopback());
    if peak <= SOCKETS_PER_SOURCE_IP || !v4_loopback || targets.is_empty() {
        return Vec::new();
    }
    let n = peak.div_ceil(SOCKETS_PER_SOURCE_IP).min(250) as u8;
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}
