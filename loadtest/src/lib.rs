//! gateway-loadtest: the gateway's own load generator.
//!
//! One process is the coordinator: it validates a [`scenario::Plan`], spawns
//! worker processes of its own binary (each holds at most ~18,000 sockets, as
//! a process may hold 20,000 open files), runs the publisher, prints a live
//! progress line and writes the report. Workers own the sockets: one task per
//! socket, sequence tracking per channel, HDR histograms of latency.
//!
//! ```text
//!  coordinator ──stdin: spec, go, stop──> worker 0..W ──ws──> gateway nodes
//!       │  <──stdout: JSON lines (progress, ready, result)──┘        ▲
//!       └── publisher (HTTP /api/publish or Redis SPUBLISH) ─────────┘
//! ```
//!
//! Where things live: flags and scenario files in `scenario`; the loopback
//! guard in `safety`; tokens in `token`; frames in `protocol`; loss, duplicate
//! and order accounting in `track`; histograms and result merging in `stats`;
//! sockets in `worker`; the publishers in `publish`; the run itself in
//! `coordinator`; JSON, Markdown and SVG output in `report`.

pub mod cli;
pub mod coordinator;
pub mod dur;
pub mod protocol;
pub mod publish;
pub mod report;
pub mod safety;
pub mod scenario;
pub mod stats;
pub mod token;
pub mod track;
pub mod worker;

/// Wall-clock time in microseconds since the Unix epoch.
///
/// Latency is measured across processes (publisher in the coordinator, sockets
/// in workers) on one machine, so a shared wall clock is the only common one.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
