//! Continuity (contract section 6): which channels keep history and how
//! much ([`Retention`]), what a resuming subscriber gets ([`resume`]), and
//! how a node notices and repairs its own gaps ([`Track`]).
//!
//! These are decisions, not I/O: the brokers store history and read it, the
//! hub feeds the tracker in delivery order, the session applies the resume
//! outcome. Keeping them here, pure, is what lets the hard cases (a gap
//! while a repair is running, an epoch that changes mid-stream, a top that
//! went backwards after a Redis crash) be tested one by one.

mod resume;
mod retention;
mod track;

pub use resume::{Resume, resume};
pub use retention::{Retention, RetentionRules};
pub use track::{Check, Track, Verdict};

use bytes::Bytes;

use crate::protocol::Position;

/// One stored publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its offset.
    pub offset: u64,
    /// Its data, as published.
    pub data: Bytes,
}

/// One read of a channel's history: where it stands, and the publications
/// asked for (oldest first, contiguous offsets, only those still kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The channel's top offset and epoch.
    pub position: Position,
    /// The publications read.
    pub events: Vec<Stored>,
}
