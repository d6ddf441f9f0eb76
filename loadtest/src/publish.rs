//! The publisher: a ticker decides when an event is due and which channel
//! (round-robin) gets it; the one lane owning that channel stamps sequence
//! and send time just before writing, so each channel keeps its order. A
//! busy lane makes the ticker skip (counted as `behind`) rather than queue,
//! so no sequence number is burnt and a saturated gateway ends on time.
//! Where the gateway answers with an offset (`FCALL gw_publish`, HTTP 202
//! `{"offset":..}`; contract section 6) the lane keeps each channel's
//! last, so sockets that stayed to the end are owed the tail by offset.

mod http;
pub mod redis;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::safety::AddrError;
use crate::scenario::{PublishPlan, PublishVia, RedisCommand, RedisMode};
use crate::track::ChannelFinal;

/// Why publishing could not start.
#[derive(Debug)]
pub enum PublishError {
    /// A connection could not be opened.
    Connect {
        /// Where to.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP API refused the pre-flight publish.
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// Redis answered with an error or something unexpected.
    Redis(String),
    /// Redis pointed at a node that the safety guard refuses.
    Address(AddrError),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Connect { addr, source } => {
                write!(f, "publisher cannot connect to {addr}: {source}")
            }
            PublishError::Refused { status, body } => {
                write!(
                    f,
                    "the gateway refused a test publish with HTTP {status}: {body}"
                )?;
                if *status == 401 || *status == 403 {
                    write!(
                        f,
                        " (is the API key one of the gateway's api.keys / $GATEWAY_API_KEYS?)"
                    )?;
                }
                Ok(())
            }
            PublishError::Redis(m) => write!(f, "redis: {m}"),
            PublishError::Address(e) => write!(f, "redis cluster node: {e}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Connect { source, .. } => Some(source),
            PublishError::Address(e) => Some(e),
            _ => None,
        }
    }
}

/// One event handed to a lane: channel index and rate step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Due {
    pub(crate) channel: usize,
    pub(crate) step: u32,
}

/// What a lane reports when it ends.
#[derive(Debug, Default)]
pub(crate) struct LaneResult {
    pub(crate) finals: Vec<(usize, ChannelFinal)>,
    pub(crate) sent: u64,
    pub(crate) failed: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    /// Publishes answered with an offset (> 0).
    pub(crate) offsets: u64,
    /// FCALL replies of 0: the channel has no history.
    pub(crate) no_history: u64,
    /// Sends repeated after a refusal (MOVED, ASK, CLUSTERDOWN, ...).
    pub(crate) retried: u64,
}

/// Per-channel sequence state of one lane.
#[derive(Default)]
pub(crate) struct Seqs(HashMap<usize, ChannelFinal>);

impl Seqs {
    /// The next sequence number of `channel`.
    pub(crate) fn next(&mut self, channel: usize) -> u64 {
        let f = self.0.entry(channel).or_default();
        f.last += 1;
        f.last
    }

    /// Marks a handed-out sequence as not published.
    pub(crate) fn failed(&mut self, channel: usize, seq: u64) {
        self.0.entry(channel).or_default().failed.push(seq);
    }

    /// Records the offset the gateway (or its Redis function) gave an
    /// event. A lane publishes a channel's events in order, so the last one
    /// is the channel's top (after a Redis master crash the counter may come
    /// back lower in a new epoch: the highest ever given would be wrong).
    pub(crate) fn offset(&mut self, channel: usize, offset: u64) {
        self.0.entry(channel).or_default().last_offset = Some(offset);
    }

    pub(crate) fn into_finals(self) -> Vec<(usize, ChannelFinal)> {
        self.0.into_iter().collect()
    }
}

/// A connected lane, ready to run.
enum Lane {
    Http(http::HttpLane),
    Redis(redis::RedisLane),
}

/// Publishing statistics of one rate step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// Target rate, events/s.
    pub rate: f64,
    /// Events handed to lanes in this step.
    pub due: u64,
    /// Events of this step skipped because the lane was still busy.
    pub behind: u64,
    /// Seconds since publishing began when the step started.
    pub started_s: f64,
    /// How long the step ran.
    pub seconds: f64,
}

/// What the publisher did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishOutcome {
    /// Per channel: last sequence and failed sequences.
    pub finals: HashMap<String, ChannelFinal>,
    /// Events accepted (HTTP 2xx, Redis integer reply).
    pub sent: u64,
    /// Events that failed.
    pub failed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Publishes answered with an offset (FCALL, HTTP 202 with `offset`).
    #[serde(default)]
    pub offsets: u64,
    /// FCALL replies of 0 (channel without history).
    #[serde(default)]
    pub no_history: u64,
    /// Sends repeated after Redis refused them for now (MOVED, ASK,
    /// CLUSTERDOWN, failover): each event is still published at most once.
    #[serde(default)]
    pub retried: u64,
    /// Ticks skipped because a lane was still busy (publisher saturated).
    pub behind: u64,
    /// Per rate step.
    pub steps: Vec<StepOutcome>,
    /// Seconds spent publishing.
    pub seconds: f64,
    /// Redis nodes (or HTTP connections) used.
    pub lanes: usize,
}

/// A connected publisher.
pub struct Publisher {
    plan: PublishPlan,
    channels: Arc<Vec<String>>,
    lanes: Vec<Lane>,
    /// Lane index per channel index.
    route: Vec<usize>,
}

/// Queue depth per lane; beyond it ticks are skipped, not buffered, so a
/// saturated gateway shows up as `behind` and the run still ends on time.
const LANE_QUEUE: usize = 256;

impl Publisher {
    /// Opens the connections (and checks them: a test publish over HTTP,
    /// `CLUSTER SLOTS` for sharded Redis) before any load starts.
    pub async fn connect(
        plan: &PublishPlan,
        channels: Vec<String>,
        allow_remote: bool,
    ) -> Result<Publisher, PublishError> {
        let channels = Arc::new(channels);
        let (lanes, route) = match plan.via {
            PublishVia::Http => {
                let base = plan
                    .http
                    .clone()
                    .ok_or_else(|| PublishError::Redis("no HTTP endpoint".into()))?;
                let n = (plan.publishers as usize).clamp(1, channels.len().max(1));
                let mut lanes = Vec::with_capacity(n);
                for _ in 0..n {
                    lanes.push(Lane::Http(
                        http::HttpLane::connect(&base, &plan.api_key).await?,
                    ));
                }
                if let Some(Lane::Http(first)) = lanes.first_mut() {
                    first.preflight().await?;
                }
                let route = (0..channels.len()).map(|c| c % n).collect();
                (lanes, route)
            }
            PublishVia::Redis | PublishVia::Fcall | PublishVia::Spublish | PublishVia::Publish => {
                let (command, mode) = match plan.via {
                    PublishVia::Fcall => (RedisCommand::Fcall, plan.redis_mode),
                    PublishVia::Spublish => (RedisCommand::Spublish, RedisMode::Sharded),
                    PublishVia::Publish => (RedisCommand::Publish, RedisMode::Classic),
                    _ => (plan.redis_command, plan.redis_mode),
                };
                let (topo, nodes, route) = match mode {
                    RedisMode::Classic => {
                        let topo = redis::Topology::single(plan.redis[0]);
                        (topo, vec![plan.redis[0]], vec![0; channels.len()])
                    }
                    RedisMode::Sharded => {
                        redis::route_channels(
                            &plan.redis,
                            &plan.redis_prefix,
                            &channels,
                            allow_remote,
                        )
                        .await?
                    }
                };
                if command == RedisCommand::Fcall {
                    for &addr in &nodes {
                        redis::check_function(addr).await?;
                    }
                }
                let mut lanes = Vec::with_capacity(nodes.len());
                for addr in nodes {
                    lanes.push(Lane::Redis(
                        redis::RedisLane::connect(
                            addr,
                            topo.clone(),
                            command,
                            &plan.redis_prefix,
                            allow_remote,
                        )
                        .await?,
                    ));
                }
                (lanes, route)
            }
        };
        Ok(Publisher {
            plan: plan.clone(),
            channels,
            lanes,
            route,
        })
    }

    /// Publishes until every step has run or `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> PublishOutcome {
        let Publisher {
            plan,
            channels,
            lanes,
            route,
        } = self;
        let lane_count = lanes.len();
        let pad = plan.payload_bytes as usize;
        let mut senders = Vec::with_capacity(lanes.len());
        let mut tasks = Vec::with_capacity(lanes.len());
        for (id, lane) in lanes.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Due>(LANE_QUEUE);
            senders.push(tx);
            let channels = channels.clone();
            tasks.push(tokio::spawn(async move {
                match lane {
                    Lane::Http(l) => l.run(rx, channels, pad, id as u32).await,
                    Lane::Redis(l) => l.run(rx, channels, pad, id as u32).await,
                }
            }));
        }

        let began = Instant::now();
        let mut out = PublishOutcome {
            lanes: lane_count,
            ..PublishOutcome::default()
        };
        let mut next_channel = 0usize;
        'steps: for (step, &rate) in plan.steps.iter().enumerate() {
            let step_start = Instant::now();
            let step_end = step_start + plan.step_duration;
            let mut emitted = 0u64;
            let mut so = StepOutcome {
                rate,
                started_s: began.elapsed().as_secs_f64(),
                ..StepOutcome::default()
            };
            loop {
                let now = Instant::now();
                if now >= step_end {
                    break;
                }
                if rate > 0.0 && !channels.is_empty() {
                    let due = ((now - step_start).as_secs_f64() * rate).floor() as u64;
                    while emitted < due {
                        emitted += 1;
                        let channel = next_channel % channels.len();
                        next_channel += 1;
                        let d = Due {
                            channel,
                            step: step as u32,
                        };
                        if senders[route[channel]].try_send(d).is_err() {
                            out.behind += 1;
                            so.behind += 1;
                        } else {
                            so.due += 1;
                        }
                    }
                }
                // Wake at the next due event, at most every millisecond, at
                // least every 50 ms (to notice stop).
                let wait = if rate > 0.0 {
                    let next_at = step_start + Duration::from_secs_f64((emitted + 1) as f64 / rate);
                    next_at
                        .saturating_duration_since(now)
                        .clamp(Duration::from_millis(1), Duration::from_millis(50))
                } else {
                    Duration::from_millis(50)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(step_end.saturating_duration_since(now))) => {}
                    _ = stop.wait_for(|s| *s) => {
                        so.seconds = step_start.elapsed().as_secs_f64();
                        out.steps.push(so);
                        break 'steps;
                    }
                }
            }
            so.seconds = step_start.elapsed().as_secs_f64();
            out.steps.push(so);
        }
        out.seconds = began.elapsed().as_secs_f64();
        drop(senders);
        for t in tasks {
            let Ok(r) = t.await else { continue };
            out.sent += r.sent;
            out.failed += r.failed;
            out.offsets += r.offsets;
            out.no_history += r.no_history;
            out.retried += r.retried;
            crate::stats::merge_counts(&mut out.errors, &r.errors);
            for (c, mut fin) in r.finals {
                fin.failed.sort_unstable();
                out.finals.insert(channels[c].clone(), fin);
            }
        }
        out
    }
}
