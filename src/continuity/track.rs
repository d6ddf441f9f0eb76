//! A node's own continuity for one live channel: the position it last
//! delivered, fed every publication in delivery order. A publication right
//! after it is delivered; one at or below it is a duplicate (a repair already
//! delivered it); a jump is a gap, which is filled from history before
//! anything newer is delivered: newer publications are held meanwhile. Where
//! history cannot fill a gap, the subscribers get one `resync` and what
//! follows is in order again.
//!
//! The tracker decides; its owner (the hub's pump) does the I/O: it fetches
//! the history page a [`Verdict::Repair`] or [`Track::start_check`] asks for
//! and hands it back to [`Track::apply`].

use std::collections::VecDeque;

use super::{HistoryPage, Stored};
use crate::protocol::{Epoch, Position, Publication};

/// Publications held per channel while a repair runs. Beyond it the newest
/// are dropped; they leave a gap that the next repair fills from history.
const MAX_HELD: usize = 65_536;

/// What to do with one publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Next in order (or the first seen): deliver it.
    Deliver,
    /// Already delivered: drop it.
    Duplicate,
    /// A repair is running: [`Track::hold`] it.
    Hold,
    /// A gap after `after`: hold it, and fetch history after `after`.
    Repair {
        /// The last offset delivered.
        after: u64,
    },
    /// Its epoch is new (the history was reset): send `resync` at this
    /// position, then deliver it.
    NewEpoch {
        /// Everything up to here is lost for the subscribers.
        resync: Position,
    },
}

/// What a history page (or a new epoch) settled.
#[derive(Debug, Default)]
pub struct Check {
    /// Send `resync` at this position first.
    pub resync: Option<Position>,
    /// Then deliver these, in order (offsets of the current epoch).
    pub deliver: Vec<Stored>,
    /// Then admit these again, in order (they were held).
    pub released: Vec<Publication>,
    /// The top went backwards (a Redis master lost acknowledged writes): a
    /// new epoch must be started for this stale position before anything
    /// else; hand it to [`Track::new_epoch`].
    pub backwards: Option<Position>,
    /// Another check was asked for while this one ran: start it.
    pub check_again: bool,
}

/// One channel's continuity on this node.
#[derive(Debug, Default)]
pub struct Track {
    position: Option<Position>,
    repairing: bool,
    check_requested: bool,
    held: VecDeque<Publication>,
}

impl Track {
    /// The last position delivered, if any.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// Sets the baseline from a read, unless deliveries already set one.
    pub fn set_if_unknown(&mut self, position: Position) {
        if self.position.is_none() {
            self.position = Some(position);
        }
    }

    /// Decides about a publication of this channel with an offset.
    pub fn admit(&mut self, offset: u64, epoch: &[u8]) -> Verdict {
        if self.repairing {
            return Verdict::Hold;
        }
        let Some(p) = &mut self.position else {
            self.position = Some(Position {
                offset,
                epoch: Epoch::new(&String::from_utf8_lossy(epoch)),
            });
            return Verdict::Deliver;
        };
        if !p.epoch.is(epoch) {
            let epoch = Epoch::new(&String::from_utf8_lossy(epoch));
            *p = Position {
                offset,
                epoch: epoch.clone(),
            };
            return Verdict::NewEpoch {
                resync: Position {
                    offset: offset.saturating_sub(1),
                    epoch,
                },
            };
        }
        if offset <= p.offset {
            return Verdict::Duplicate;
        }
        if offset == p.offset + 1 {
            p.offset = offset;
            return Verdict::Deliver;
        }
        self.repairing = true;
        Verdict::Repair { after: p.offset }
    }

    /// Holds a publication until the running repair completes. `false`: the
    /// hold is full and it was dropped (a later repair recovers it).
    pub fn hold(&mut self, publication: Publication) -> bool {
        if self.held.len() >= MAX_HELD {
            return false;
        }
        self.held.push_back(publication);
        true
    }

    /// Asks for a check of the channel's top (its pub/sub connection was
    /// rebuilt, or its reader lagged). `Some(after)`: fetch history after
    /// `after` (`None` inside: no baseline yet, fetch the position alone);
    /// `None`: a repair is already running and will check again when done.
    pub fn start_check(&mut self) -> Option<Option<u64>> {
        if self.repairing {
            self.check_requested = true;
            return None;
        }
        self.repairing = true;
        Some(self.position.as_ref().map(|p| p.offset))
    }

    /// Applies the page a repair or a check fetched (`None`: the read
    /// failed, so what was missed cannot be known).
    pub fn apply(&mut self, page: Option<HistoryPage>) -> Check {
        let mut out = Check::default();
        match (self.position.clone(), page) {
            (None, Some(page)) => self.position = Some(page.position),
            (None, None) => {}
            (Some(p), None) => {
                // Resync up to just before the first held publication (or
                // where we stand): whatever came between is unknowable.
                let resync = match self.held.front() {
                    Some(first) if p.epoch.is(&first.epoch) => Position {
                        offset: first.offset.unwrap_or(p.offset + 1) - 1,
                        epoch: p.epoch.clone(),
                    },
                    _ => p.clone(),
                };
                self.position = Some(resync.clone());
                out.resync = Some(resync);
            }
            (Some(p), Some(page)) if page.position.epoch != p.epoch => {
                out.resync = Some(page.position.clone());
                self.position = Some(page.position);
            }
            (Some(p), Some(page)) if page.position.offset < p.offset => {
                out.backwards = Some(p);
                return out;
            }
            (Some(p), Some(page)) => {
                let mut next = p.offset + 1;
                let available: Vec<Stored> = page
                    .events
                    .into_iter()
                    .skip_while(|e| e.offset < next)
                    .collect();
                let mut delivered = p.offset;
                match available.first() {
                    Some(first) if first.offset > next => {
                        // The oldest missed publications are gone.
                        out.resync = Some(Position {
                            offset: first.offset - 1,
                            epoch: p.epoch.clone(),
                        });
                        next = first.offset;
                        delivered = first.offset - 1;
                    }
                    None if page.position.offset > p.offset => {
                        out.resync = Some(Position {
                            offset: page.position.offset,
                            epoch: p.epoch.clone(),
                        });
                        delivered = page.position.offset;
                    }
                    _ => {}
                }
                for e in available {
                    if e.offset != next {
                        break;
                    }
                    next += 1;
                    delivered = e.offset;
                    out.deliver.push(e);
                }
                self.position = Some(Position {
                    offset: delivered,
                    epoch: p.epoch,
                });
            }
        }
        self.finish(&mut out);
        out
    }

    /// The new epoch started after the top went backwards: everything up to
    /// its position is lost for the subscribers.
    pub fn new_epoch(&mut self, position: Option<Position>) -> Check {
        let mut out = Check::default();
        if let Some(position) = position.or_else(|| self.position.clone()) {
            out.resync = Some(position.clone());
            self.position = Some(position);
        }
        self.finish(&mut out);
        out
    }

    fn finish(&mut self, out: &mut Check) {
        self.repairing = false;
        out.released = self.held.drain(..).collect();
        out.check_again = std::mem::take(&mut self.check_requested);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publication(offset: u64, epoch: &str) -> Publication {
        let mut p = Publication::new(crate::protocol::Channel::Broadcast, Bytes::new());
        p.offset = Some(offset);
        p.epoch = Bytes::from(epoch.to_owned());
        p
    }

    fn page(top: u64, epoch: &str, offsets: std::ops::RangeInclusive<u64>) -> HistoryPage {
        HistoryPage {
            position: Position {
                offset: top,
                epoch: Epoch::new(epoch),
            },
            events: offsets
                .map(|o| Stored {
                    offset: o,
                    data: Bytes::new(),
                })
                .collect(),
        }
    }

    fn offsets(v: &[Stored]) -> Vec<u64> {
        v.iter().map(|s| s.offset).collect()
    }

    fn at(t: &Track) -> (u64, String) {
        let p = t.position().unwrap();
        (p.offset, p.epoch.to_string())
    }

    #[test]
    fn in_order_duplicates_and_a_gap_filled_before_newer_events() {
        let mut t = Track::default();
        assert_eq!(
            t.admit(5, b"E"),
            Verdict::Deliver,
            "the first seen sets the baseline"
        );
        assert_eq!(t.admit(6, b"E"), Verdict::Deliver);
        assert_eq!(t.admit(6, b"E"), Verdict::Duplicate);
        assert_eq!(t.admit(9, b"E"), Verdict::Repair { after: 6 });
        assert!(t.hold(publication(9, "E")));
        assert_eq!(t.admit(10, b"E"), Verdict::Hold);
        assert!(t.hold(publication(10, "E")));
        // History returns 7 and 8 (and 9, which a slow read may include).
        let done = t.apply(Some(page(9, "E", 7..=9)));
        assert_eq!(done.resync, None);
        assert_eq!(offsets(&done.deliver), [7, 8, 9]);
        assert_eq!(at(&t), (9, "E".into()));
        let again: Vec<Verdict> = done
            .released
            .iter()
            .map(|p| t.admit(p.offset.unwrap(), &p.epoch))
            .collect();
        assert_eq!(
            again,
            [Verdict::Duplicate, Verdict::Deliver],
            "9 came from history, 10 live"
        );
    }

    #[test]
    fn a_gap_history_cannot_fill_is_one_resync_then_order() {
        let mut t = Track::default();
        t.set_if_unknown(Position {
            offset: 10,
            epoch: Epoch::new("E"),
        });
        assert_eq!(t.admit(20, b"E"), Verdict::Repair { after: 10 });
        t.hold(publication(20, "E"));
        // 11..=14 expired; 15..=19 are still kept.
        let done = t.apply(Some(page(20, "E", 15..=20)));
        assert_eq!(done.resync.unwrap().offset, 14);
        assert_eq!(offsets(&done.deliver), [15, 16, 17, 18, 19, 20]);
        // Nothing kept at all: resync at the top.
        let mut t = Track::default();
        t.set_if_unknown(Position {
            offset: 10,
            epoch: Epoch::new("E"),
        });
        t.admit(20, b"E");
        let done = t.apply(Some(HistoryPage {
            position: Position {
                offset: 19,
                epoch: Epoch::new("E"),
            },
            events: Vec::new(),
        }));
        assert_eq!(done.resync.unwrap().offset, 19);
        assert!(done.deliver.is_empty());
    }

    #[test]
    fn a_failed_read_resyncs_just_before_what_is_held() {
        let mut t = Track::default();
        t.set_if_unknown(Position {
            offset: 3,
            epoch: Epoch::new("E"),
        });
        t.admit(8, b"E");
        t.hold(publication(8, "E"));
        let done = t.apply(None);
        assert_eq!(done.resync.unwrap().offset, 7);
        assert_eq!(done.released.len(), 1);
        assert_eq!(t.admit(8, b"E"), Verdict::Deliver);
    }

    #[test]
    fn a_new_epoch_in_the_stream_is_a_resync() {
        let mut t = Track::default();
        t.admit(40, b"E");
        let v = t.admit(1, b"F");
        assert_eq!(
            v,
            Verdict::NewEpoch {
                resync: Position {
                    offset: 0,
                    epoch: Epoch::new("F")
                }
            }
        );
        assert_eq!(at(&t), (1, "F".into()));
        assert_eq!(t.admit(2, b"F"), Verdict::Deliver);
    }

    #[test]
    fn a_check_after_reconnect_fills_what_was_missed_without_new_events() {
        let mut t = Track::default();
        t.admit(5, b"E");
        assert_eq!(t.start_check(), Some(Some(5)));
        assert_eq!(
            t.admit(9, b"E"),
            Verdict::Hold,
            "live events wait for the check"
        );
        t.hold(publication(9, "E"));
        let done = t.apply(Some(page(8, "E", 6..=8)));
        assert_eq!(offsets(&done.deliver), [6, 7, 8]);
        assert_eq!(done.released.len(), 1);
        assert_eq!(t.admit(9, b"E"), Verdict::Deliver);
    }

    #[test]
    fn a_top_that_went_backwards_needs_a_new_epoch_and_a_resync() {
        let mut t = Track::default();
        t.admit(45, b"E");
        t.start_check();
        let done = t.apply(Some(HistoryPage {
            position: Position {
                offset: 40,
                epoch: Epoch::new("E"),
            },
            events: Vec::new(),
        }));
        assert_eq!(done.backwards.unwrap().offset, 45);
        assert!(done.released.is_empty(), "still repairing");
        assert_eq!(t.admit(46, b"E"), Verdict::Hold);
        let done = t.new_epoch(Some(Position {
            offset: 40,
            epoch: Epoch::new("F"),
        }));
        assert_eq!(
            done.resync.unwrap(),
            Position {
                offset: 40,
                epoch: Epoch::new("F")
            }
        );
        assert_eq!(at(&t), (40, "F".into()));
        assert_eq!(t.admit(41, b"F"), Verdict::Deliver);
    }

    #[test]
    fn a_check_asked_for_during_a_repair_runs_after_it() {
        let mut t = Track::default();
        t.admit(1, b"E");
        t.admit(3, b"E");
        assert_eq!(t.start_check(), None);
        let done = t.apply(Some(page(3, "E", 2..=3)));
        assert!(done.check_again);
        assert_eq!(t.start_check(), Some(Some(3)));
    }

    #[test]
    fn the_hold_is_bounded() {
        let mut t = Track::default();
        t.admit(1, b"E");
        t.admit(3, b"E");
        for o in 0..MAX_HELD as u64 {
            assert!(t.hold(publication(4 + o, "E")));
        }
        assert!(!t.hold(publication(1_000_000, "E")));
    }
}
