//! Per-socket, per-channel sequence accounting: in order, late (out of
//! order), twice (duplicate), or never (lost). Sequences start at 1 per
//! channel, so a tracker keeps the first and highest seen plus the missing
//! ranges below the highest; past [`MAX_GAPS`] ranges new gaps are counted
//! but not remembered (a late arrival into one then counts as a duplicate).

use serde::{Deserialize, Serialize};

/// Most missing ranges a tracker remembers.
pub const MAX_GAPS: usize = 64;

/// What the publisher knows about one channel when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelFinal {
    /// Highest sequence number handed out (0 = none).
    pub last: u64,
    /// Sequence numbers handed out whose publish failed, ascending; these are
    /// not counted as lost when missing.
    pub failed: Vec<u64>,
}

/// How an observed sequence number relates to what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next expected or a later one (a gap before it may be filled later).
    InOrder,
    /// It fills a gap: it arrived after a higher sequence.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// Sequence accounting for one channel on one socket.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    first: u64,
    max: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Missing inclusive ranges strictly between `first` and `max`, ascending.
    gaps: Vec<(u64, u64)>,
    /// Missing sequences whose range could not be remembered.
    untracked: u64,
}

impl SeqTracker {
    /// Records one arrival.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if self.unique == 0 {
            self.first = seq;
            self.max = seq;
            self.unique = 1;
            return Seen::InOrder;
        }
        if seq > self.max {
            if seq > self.max + 1 {
                self.add_gap(self.max + 1, seq - 1);
            }
            self.max = seq;
            self.unique += 1;
            return Seen::InOrder;
        }
        if seq < self.first {
            if seq + 1 < self.first {
                self.gaps.insert(0, (seq + 1, self.first - 1));
                if self.gaps.len() > MAX_GAPS {
                    let (a, b) = self.gaps.remove(0);
                    self.untracked += b - a + 1;
                }
            }
            self.first = seq;
            self.unique += 1;
            self.out_of_order += 1;
            return Seen::OutOfOrder;
        }
        // Within [first, max]: either it fills a gap or it is a repeat.
        let pos = self.gaps.partition_point(|&(_, hi)| hi < seq);
        match self.gaps.get(pos).copied() {
            Some((lo, hi)) if lo <= seq => {
                match (lo == seq, hi == seq) {
                    (true, true) => {
                        self.gaps.remove(pos);
                    }
                    (true, false) => self.gaps[pos].0 = seq + 1,
                    (false, true) => self.gaps[pos].1 = seq - 1,
                    (false, false) => {
                        self.gaps[pos].1 = seq - 1;
                        self.gaps.insert(pos + 1, (seq + 1, hi));
                        if self.gaps.len() > MAX_GAPS {
                            let (a, b) = self.gaps.pop().unwrap_or((1, 0));
                            self.untracked += b + 1 - a;
                        }
                    }
                }
                self.unique += 1;
                self.out_of_order += 1;
                Seen::OutOfOrder
            }
            _ => {
                self.duplicates += 1;
                Seen::Duplicate
            }
        }
    }

    fn add_gap(&mut self, lo: u64, hi: u64) {
        if self.gaps.len() < MAX_GAPS {
            self.gaps.push((lo, hi));
        } else {
            self.untracked += hi - lo + 1;
        }
    }

    /// Distinct sequences seen.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Repeats seen.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Late arrivals (each filled a gap).
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Events never seen. `expect_from` is the first sequence this socket
    /// should have (1 when it was subscribed before publishing began; `None`
    /// when it joined later, so head loss cannot be told from not-yet-joined);
    /// `expect_last` is the channel's last sequence when the socket stayed to
    /// the end (`None` when it left early). Sequences in `fin.failed` were
    /// never published and are not counted.
    pub fn lost(&self, expect_from: Option<u64>, expect_last: Option<u64>, failed: &[u64]) -> u64 {
        let failed_in = |lo: u64, hi: u64| -> u64 {
            if lo > hi {
                return 0;
            }
            let a = failed.partition_point(|&s| s < lo);
            let b = failed.partition_point(|&s| s <= hi);
            (b - a) as u64
        };
        if self.unique == 0 {
            return match (expect_from, expect_last) {
                (Some(lo), Some(hi)) if hi >= lo => (hi - lo + 1) - failed_in(lo, hi),
                _ => 0,
            };
        }
        let mut lost = self.untracked;
        for &(lo, hi) in &self.gaps {
            lost += (hi - lo + 1) - failed_in(lo, hi);
        }
        if let Some(lo) = expect_from.filter(|&lo| lo < self.first) {
            lost += (self.first - lo) - failed_in(lo, self.first - 1);
        }
        if let Some(hi) = expect_last.filter(|&hi| hi > self.max) {
            lost += (hi - self.max) - failed_in(self.max + 1, hi);
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: &[u64]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.observe(s);
        }
        t
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let t = feed(&[1, 2, 3, 4, 5]);
        assert_eq!((t.unique(), t.duplicates(), t.out_of_order()), (5, 0, 0));
        assert_eq!(t.lost(Some(1), Some(5), &[]), 0);
    }

    #[test]
    fn gaps_head_and_tail_count_as_lost() {
        let t = feed(&[3, 4, 6, 7]);
        // 1,2 (head), 5 (gap), 8,9,10 (tail)
        assert_eq!(t.lost(Some(1), Some(10), &[]), 6);
        // joined late and left early: only the gap is known to be missing
        assert_eq!(t.lost(None, None, &[]), 1);
        // 5 and 9 were never published
        assert_eq!(t.lost(Some(1), Some(10), &[5, 9]), 4);
    }

    #[test]
    fn late_arrivals_fill_gaps_and_repeats_are_duplicates() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(1), Seen::InOrder);
        assert_eq!(t.observe(4), Seen::InOrder);
        assert_eq!(t.observe(3), Seen::OutOfOrder);
        assert_eq!(t.observe(3), Seen::Duplicate);
        assert_eq!(t.observe(4), Seen::Duplicate);
        assert_eq!(t.observe(2), Seen::OutOfOrder);
        assert_eq!(t.lost(Some(1), Some(4), &[]), 0);
        assert_eq!((t.unique(), t.duplicates(), t.out_of_order()), (4, 2, 2));
    }

    #[test]
    fn middle_of_a_gap_splits_it() {
        let mut t = feed(&[1, 10]);
        assert_eq!(t.observe(5), Seen::OutOfOrder);
        assert_eq!(t.lost(Some(1), Some(10), &[]), 7);
        assert_eq!(t.observe(2), Seen::OutOfOrder);
        assert_eq!(t.observe(9), Seen::OutOfOrder);
        assert_eq!(t.lost(Some(1), Some(10), &[]), 5);
    }

    #[test]
    fn arrival_before_first_is_out_of_order() {
        let mut t = feed(&[5, 6]);
        assert_eq!(t.observe(2), Seen::OutOfOrder);
        assert_eq!(t.lost(Some(1), Some(6), &[]), 3); // 1, 3, 4
    }

    #[test]
    fn nothing_seen_means_everything_expected_was_lost() {
        let t = SeqTracker::default();
        assert_eq!(t.lost(Some(1), Some(10), &[2]), 9);
        assert_eq!(t.lost(None, Some(10), &[]), 0);
    }

    #[test]
    fn gap_overflow_still_counts_loss() {
        let seqs: Vec<u64> = (0..200).map(|i| i * 2 + 1).collect(); // every even one missing
        let t = feed(&seqs);
        assert_eq!(t.lost(Some(1), Some(399), &[]), 199);
    }
}
