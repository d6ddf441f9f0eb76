//! Per-socket, per-channel accounting: in order, late (out of order), twice
//! (duplicate), or never (lost).
//!
//! [`SeqTracker`] follows the publisher's own sequence numbers (in every
//! payload, from 1 per channel): a tracker keeps the first and highest seen
//! plus the missing ranges below the highest; past [`MAX_GAPS`] ranges new
//! gaps are counted but not remembered (a late arrival into one then counts
//! as a duplicate).
//!
//! [`OffsetTracker`] follows the gateway's offsets and epochs (contract
//! section 6) across reconnects: what a resume should have replayed, what a
//! `resync` or `recovered: false` declared lost, and what went missing
//! without a word. On a server without offsets it never activates.

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
    /// Last offset the publisher was given for the channel (`FCALL
    /// gw_publish` reply, HTTP 202 `offset`): its top at the end; `None`
    /// without history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offset: Option<u64>,
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

    /// Highest sequence seen (0 = none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Missing inclusive ranges, ascending: the head (`expect_from` up to the
    /// first seen), the gaps, and the tail (after the highest seen up to
    /// `expect_last`); plus the count of missing sequences whose range was
    /// not remembered. With nothing seen, `expect_from..=expect_last` when
    /// both are known.
    pub fn missing(
        &self,
        expect_from: Option<u64>,
        expect_last: Option<u64>,
    ) -> (Vec<(u64, u64)>, u64) {
        if self.unique == 0 {
            return match (expect_from, expect_last) {
                (Some(lo), Some(hi)) if hi >= lo => (vec![(lo, hi)], 0),
                _ => (Vec::new(), 0),
            };
        }
        let mut out = Vec::with_capacity(self.gaps.len() + 2);
        if let Some(lo) = expect_from.filter(|&lo| lo < self.first) {
            out.push((lo, self.first - 1));
        }
        out.extend_from_slice(&self.gaps);
        if let Some(hi) = expect_last.filter(|&hi| hi > self.max) {
            out.push((self.max + 1, hi));
        }
        (out, self.untracked)
    }

    /// Events never seen. `expect_from` is the first sequence this socket
    /// should have (1 when it was subscribed before publishing began; `None`
    /// when it joined later, so head loss cannot be told from not-yet-joined);
    /// `expect_last` is the channel's last sequence when the socket stayed to
    /// the end (`None` when it left early). Sequences in `fin.failed` were
    /// never published and are not counted.
    pub fn lost(&self, expect_from: Option<u64>, expect_last: Option<u64>, failed: &[u64]) -> u64 {
        let failed_in = |lo: u64, hi: u64| -> u64 {
            let a = failed.partition_point(|&s| s < lo);
            let b = failed.partition_point(|&s| s <= hi);
            (b - a) as u64
        };
        let (ranges, untracked) = self.missing(expect_from, expect_last);
        untracked
            + ranges
                .iter()
                .map(|&(lo, hi)| (hi - lo + 1) - failed_in(lo, hi))
                .sum::<u64>()
    }
}

/// Counted overlap of `ranges` with `covered` (both inclusive and ascending).
fn overlap(ranges: &[(u64, u64)], covered: &[(u64, u64)]) -> u64 {
    let mut n = 0;
    for &(a, b) in ranges {
        for &(c, d) in covered {
            let (lo, hi) = (a.max(c), b.min(d));
            if lo <= hi {
                n += hi - lo + 1;
            }
        }
    }
    n
}

/// Continuity accounting by offset (contract section 6), for one socket and
/// channel or summed over many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetTotals {
    /// Socket-channels on which offsets were seen.
    pub socket_channels: u64,
    /// Events that carried an offset.
    pub events: u64,
    /// Distinct offsets received (per socket, channel and epoch).
    pub unique: u64,
    /// An offset received twice within one epoch.
    pub duplicates: u64,
    /// An offset that arrived after a higher one (it filled a gap).
    pub out_of_order: u64,
    /// Offsets owed and never received: gaps, the head after the subscribe
    /// position, the tail up to the publisher's last offset.
    pub lost: u64,
    /// Of `lost`, those the gateway announced: covered by a `resync` or by a
    /// resume answered `recovered: false`. `lost - lost_announced` were lost
    /// without a word, which the contract does not allow.
    pub lost_announced: u64,
    /// `resync` frames received.
    pub resyncs: u64,
    /// Epoch changes seen (a `resync` or resume `ok` with a new epoch).
    pub epoch_changes: u64,
    /// Resumes answered `recovered: true`.
    pub recovered: u64,
    /// Resumes answered `recovered: false`.
    pub not_recovered: u64,
    /// Events delivered as a replay after a recovered resume.
    pub replayed: u64,
    /// Contract breaches seen: `recovered: true` with another epoch, a top
    /// offset that went backwards within an epoch, a resume with no
    /// `recovered` field.
    pub anomalies: u64,
}

impl OffsetTotals {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &OffsetTotals) {
        self.socket_channels += o.socket_channels;
        self.events += o.events;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.lost += o.lost;
        self.lost_announced += o.lost_announced;
        self.resyncs += o.resyncs;
        self.epoch_changes += o.epoch_changes;
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.replayed += o.replayed;
        self.anomalies += o.anomalies;
    }

    /// Lost without a `resync` or `recovered: false` saying so.
    pub fn lost_silent(&self) -> u64 {
        self.lost.saturating_sub(self.lost_announced)
    }
}

/// How a channel's position was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionKind {
    /// A first subscribe or connect, without `since` / resume parameters:
    /// events after the position are owed.
    Start,
    /// The answer to a resume: `recovered` as the server said it (`None`
    /// when the field was missing).
    Resumed(Option<bool>),
}

/// An event's offset as the tracker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetSeen {
    /// In order, late or repeated.
    pub seen: Seen,
    /// Part of the replay after a recovered resume.
    pub replayed: bool,
}

/// Most ranges declared lost (by `resync` or `recovered: false`) remembered
/// per epoch; beyond it the last one is widened.
const MAX_ANNOUNCED: usize = 64;

/// Offset accounting for one channel of one socket, across reconnects and
/// epochs. Offsets are comparable only within an epoch, so each epoch is its
/// own segment; a segment's owed range starts after the position the socket
/// learnt (`ok` of a subscribe, `welcome.position`, `resync`) and, for the
/// last one, ends at the publisher's last offset when the socket stayed.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    epoch: Option<String>,
    /// Offsets above it are owed in the current epoch (None: not known).
    floor: Option<u64>,
    seen: SeqTracker,
    /// Ranges of the current epoch the gateway declared lost.
    announced: Vec<(u64, u64)>,
    /// After a recovered resume, offsets up to this are the replay.
    replay_until: u64,
    /// Earlier epochs folded in, and counters.
    totals: OffsetTotals,
    active: bool,
}

impl OffsetTracker {
    /// Whether any offset, position or resync was seen.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The current epoch.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// Where to resume from: the highest offset seen in the current epoch,
    /// or the position learnt when higher; `None` without an epoch.
    pub fn resume_point(&self) -> Option<(u64, &str)> {
        let epoch = self.epoch.as_deref()?;
        if self.floor.is_none() && self.seen.unique() == 0 {
            return None;
        }
        Some((self.top(), epoch))
    }

    fn top(&self) -> u64 {
        self.seen.max().max(self.floor.unwrap_or(0))
    }

    fn announce(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        if let Some(last) = self.announced.last_mut()
            && lo <= last.1.saturating_add(1)
        {
            last.0 = last.0.min(lo);
            last.1 = last.1.max(hi);
            return;
        }
        if self.announced.len() >= MAX_ANNOUNCED {
            if let Some(last) = self.announced.last_mut() {
                last.1 = last.1.max(hi);
            }
            return;
        }
        self.announced.push((lo, hi));
        self.announced.sort_unstable();
    }

    /// Closes the current epoch's segment: its missing offsets become lost
    /// (`tail`: the last offset owed, when known).
    fn fold(&mut self, tail: Option<u64>) {
        let from = self.floor.map(|f| f + 1);
        let (ranges, untracked) = self.seen.missing(from, tail);
        let lost: u64 = untracked + ranges.iter().map(|&(lo, hi)| hi - lo + 1).sum::<u64>();
        self.totals.lost += lost;
        self.totals.lost_announced += overlap(&ranges, &self.announced).min(lost);
        self.totals.unique += self.seen.unique();
        self.totals.duplicates += self.seen.duplicates();
        self.totals.out_of_order += self.seen.out_of_order();
        self.seen = SeqTracker::default();
        self.announced.clear();
        self.floor = None;
        self.replay_until = 0;
    }

    fn new_epoch(&mut self, epoch: Option<&str>, floor: u64) {
        if self.epoch.is_some() || self.seen.unique() > 0 || self.floor.is_some() {
            self.fold(None);
            self.totals.epoch_changes += 1;
        }
        self.epoch = epoch.map(str::to_owned);
        self.floor = Some(floor);
    }

    /// A position learnt from `ok` (subscribe) or `welcome`.
    pub fn position(&mut self, offset: u64, epoch: Option<&str>, kind: PositionKind) {
        self.active = true;
        let known = self.epoch.is_some() || self.floor.is_some() || self.seen.unique() > 0;
        let same = !known || self.epoch.as_deref() == epoch;
        match kind {
            PositionKind::Start => {
                if !same {
                    self.new_epoch(epoch, offset);
                } else {
                    if self.epoch.is_none() {
                        self.epoch = epoch.map(str::to_owned);
                    }
                    if self.floor.is_none() && self.seen.unique() == 0 {
                        self.floor = Some(offset);
                    }
                }
            }
            PositionKind::Resumed(Some(true)) => {
                self.totals.recovered += 1;
                if !same {
                    // Recovered into another epoch: the contract says the
                    // epoch must match.
                    self.totals.anomalies += 1;
                    self.new_epoch(epoch, offset);
                } else {
                    if offset < self.top() {
                        self.totals.anomalies += 1;
                    }
                    self.replay_until = offset;
                }
            }
            PositionKind::Resumed(r) => {
                self.totals.not_recovered += 1;
                if r.is_none() {
                    self.totals.anomalies += 1;
                }
                if !same {
                    self.new_epoch(epoch, offset);
                } else {
                    let top = self.top();
                    self.announce(top + 1, offset);
                    if offset < top {
                        self.totals.anomalies += 1;
                    }
                }
            }
        }
    }

    /// A `resync`: events up to `offset` are lost for this socket; with a
    /// new epoch, the old one ends and the new one is owed after `offset`.
    pub fn resync(&mut self, offset: u64, epoch: Option<&str>) {
        self.active = true;
        self.totals.resyncs += 1;
        let known = self.epoch.is_some() || self.floor.is_some() || self.seen.unique() > 0;
        if known && epoch.is_some() && self.epoch.as_deref() != epoch {
            self.new_epoch(epoch, offset);
            return;
        }
        if self.epoch.is_none() {
            self.epoch = epoch.map(str::to_owned);
        }
        let lo = self.floor.map_or(1, |f| f + 1);
        self.announce(lo, offset);
    }

    /// An event with an offset, in the current epoch.
    pub fn event(&mut self, offset: u64) -> OffsetSeen {
        self.active = true;
        self.totals.events += 1;
        let seen = self.seen.observe(offset);
        let replayed = seen != Seen::Duplicate && offset <= self.replay_until;
        if replayed {
            self.totals.replayed += 1;
        }
        OffsetSeen { seen, replayed }
    }

    /// The totals, with the current epoch closed. `last_offset`: the
    /// publisher's last offset on this channel when the socket stayed to the
    /// end (the tail is owed), else `None`.
    pub fn finish(&self, last_offset: Option<u64>) -> OffsetTotals {
        let mut t = self.clone();
        if t.active {
            t.fold(last_offset);
            t.totals.socket_channels = 1;
        }
        t.totals
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

    // ---- offsets (contract section 6) ----

    fn started(offset: u64, epoch: &str) -> OffsetTracker {
        let mut t = OffsetTracker::default();
        t.position(offset, Some(epoch), PositionKind::Start);
        t
    }

    fn events(t: &mut OffsetTracker, offsets: impl IntoIterator<Item = u64>) -> Vec<OffsetSeen> {
        offsets.into_iter().map(|o| t.event(o)).collect()
    }

    #[test]
    fn offsets_in_order_from_the_subscribe_position_lose_nothing() {
        let mut t = started(0, "e");
        events(&mut t, 1..=5);
        let r = t.finish(Some(5));
        assert_eq!(
            (r.socket_channels, r.events, r.unique, r.lost),
            (1, 5, 5, 0)
        );
        assert_eq!((r.duplicates, r.out_of_order, r.anomalies), (0, 0, 0));
    }

    #[test]
    fn offset_gaps_head_and_tail_are_lost_silently() {
        let mut t = started(10, "e");
        events(&mut t, [13, 14, 16]);
        // 11, 12 (head after the position), 15 (gap), 17, 18 (tail)
        let r = t.finish(Some(18));
        assert_eq!((r.lost, r.lost_announced, r.lost_silent()), (5, 0, 5));
        // A socket that left early is not owed the tail.
        assert_eq!(t.finish(None).lost, 3);
    }

    #[test]
    fn offset_duplicates_and_late_arrivals() {
        let mut t = started(0, "e");
        let seen: Vec<Seen> = events(&mut t, [1, 3, 2, 3, 1])
            .iter()
            .map(|s| s.seen)
            .collect();
        assert_eq!(
            seen,
            [
                Seen::InOrder,
                Seen::InOrder,
                Seen::OutOfOrder,
                Seen::Duplicate,
                Seen::Duplicate
            ]
        );
        let r = t.finish(Some(3));
        assert_eq!(
            (r.unique, r.duplicates, r.out_of_order, r.lost),
            (3, 2, 1, 0)
        );
    }

    #[test]
    fn a_recovered_resume_replays_what_was_missed_across_the_reconnect() {
        let mut t = started(0, "e");
        events(&mut t, 1..=3);
        assert_eq!(t.resume_point(), Some((3, "e")));
        // reconnect: subscribe since {3, e} -> ok {offset 6, epoch e, recovered true}
        t.position(6, Some("e"), PositionKind::Resumed(Some(true)));
        let replay: Vec<bool> = events(&mut t, 4..=7).iter().map(|s| s.replayed).collect();
        assert_eq!(replay, [true, true, true, false]);
        let r = t.finish(Some(7));
        assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 0));
        assert_eq!((r.recovered, r.replayed, r.not_recovered), (1, 3, 0));
        assert_eq!(t.resume_point(), Some((7, "e")));
    }

    #[test]
    fn a_replay_that_skips_or_repeats_is_caught() {
        let mut t = started(0, "e");
        events(&mut t, 1..=3);
        t.position(6, Some("e"), PositionKind::Resumed(Some(true)));
        // 4 never comes; 3 comes again.
        events(&mut t, [3, 5, 6, 7]);
        let r = t.finish(Some(7));
        assert_eq!((r.lost, r.lost_silent(), r.duplicates), (1, 1, 1));
    }

    #[test]
    fn not_recovered_in_the_same_epoch_announces_the_loss() {
        let mut t = started(0, "e");
        events(&mut t, 1..=3);
        t.position(10, Some("e"), PositionKind::Resumed(Some(false)));
        events(&mut t, [11, 12]);
        let r = t.finish(Some(12));
        // 4..=10 were lost, and the gateway said so.
        assert_eq!((r.lost, r.lost_announced, r.lost_silent()), (7, 7, 0));
        assert_eq!((r.not_recovered, r.epoch_changes), (1, 0));
    }

    #[test]
    fn a_new_epoch_restarts_the_numbering_without_false_duplicates() {
        let mut t = started(0, "e");
        events(&mut t, 1..=3);
        t.position(0, Some("f"), PositionKind::Resumed(Some(false)));
        assert_eq!(t.epoch(), Some("f"));
        // The new epoch numbers from 1 again: not duplicates of the old 1..3.
        let seen: Vec<Seen> = events(&mut t, 1..=2).iter().map(|s| s.seen).collect();
        assert_eq!(seen, [Seen::InOrder, Seen::InOrder]);
        let r = t.finish(Some(2));
        assert_eq!(
            (r.unique, r.duplicates, r.lost, r.epoch_changes),
            (5, 0, 0, 1)
        );
        assert_eq!(t.resume_point(), Some((2, "f")));
    }

    #[test]
    fn resync_in_the_same_epoch_declares_the_gap() {
        let mut t = started(0, "e");
        events(&mut t, [1, 2]);
        t.resync(5, Some("e"));
        events(&mut t, [6, 7]);
        let r = t.finish(Some(8));
        // 3, 4, 5 announced by the resync; 8 (tail) lost without a word.
        assert_eq!(
            (r.resyncs, r.lost, r.lost_announced, r.lost_silent()),
            (1, 4, 3, 1)
        );
        // A resync covering events that did arrive costs nothing.
        let mut u = started(0, "e");
        events(&mut u, 1..=3);
        u.resync(3, Some("e"));
        events(&mut u, [4]);
        assert_eq!(u.finish(Some(4)).lost, 0);
    }

    #[test]
    fn resync_with_a_new_epoch_starts_after_its_offset() {
        let mut t = started(0, "e");
        events(&mut t, [1, 2]);
        t.resync(40, Some("f"));
        events(&mut t, [42, 43]);
        let r = t.finish(Some(43));
        // Old epoch: nothing owed beyond what was seen. New one: 41 missing.
        assert_eq!((r.epoch_changes, r.lost, r.lost_silent()), (1, 1, 1));
    }

    #[test]
    fn recovered_into_another_epoch_or_backwards_is_an_anomaly() {
        let mut t = started(0, "e");
        events(&mut t, 1..=3);
        t.position(5, Some("f"), PositionKind::Resumed(Some(true)));
        let mut u = started(0, "e");
        events(&mut u, 1..=3);
        u.position(2, Some("e"), PositionKind::Resumed(Some(true)));
        let mut w = started(0, "e");
        w.position(0, Some("e"), PositionKind::Resumed(None));
        assert_eq!(t.finish(None).anomalies, 1);
        assert_eq!(u.finish(None).anomalies, 1);
        let r = w.finish(None);
        assert_eq!((r.anomalies, r.not_recovered), (1, 1));
    }

    #[test]
    fn an_untouched_tracker_reports_nothing() {
        let t = OffsetTracker::default();
        assert!(!t.active());
        assert_eq!(t.resume_point(), None);
        assert_eq!(t.finish(Some(10)), OffsetTotals::default());
        // A position without events: owed from there.
        let s = started(7, "e");
        assert_eq!(s.resume_point(), Some((7, "e")));
        assert_eq!(s.finish(Some(9)).lost, 2);
    }

    #[test]
    fn missing_ranges_list_head_gaps_and_tail() {
        let t = feed(&[3, 4, 7]);
        assert_eq!(
            t.missing(Some(1), Some(9)),
            (vec![(1, 2), (5, 6), (8, 9)], 0)
        );
        assert_eq!(t.missing(None, None), (vec![(5, 6)], 0));
        let empty = SeqTracker::default();
        assert_eq!(empty.missing(Some(4), Some(3)), (vec![], 0));
    }
}
