//! The embedded broker's history: the same semantics as the Redis one, in
//! memory. Per channel a bounded log (size and age), its top offset and its
//! epoch. Epochs are unique to this process (a restart loses history, and a
//! client resuming across it gets `recovered: false`), and a channel whose
//! offsets outlived `history.meta_ttl_seconds` without a publication starts a
//! new epoch, like an expired Redis key.
//!
//! Worst-case memory: every publication of the last `ttl_seconds`, at most
//! `size` per channel, each its payload plus about 80 bytes; plus about 200
//! bytes per channel published to within `meta_ttl_seconds`. Sweeps run as
//! publications arrive, so an idle node holds what it held.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use tokio::time::Instant;

use crate::continuity::{HistoryPage, RetentionRules, Stored};
use crate::protocol::{Channel, Epoch, Position};

/// A sweep of idle channels runs once per this many publications.
const SWEEP_EVERY: u64 = 4096;

struct Log {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<(u64, Bytes, Instant)>,
    touched: Instant,
}

/// Every channel's log.
pub(super) struct History {
    rules: RetentionRules,
    process: String,
    generation: AtomicU64,
    published: AtomicU64,
    logs: DashMap<Channel, Log, FxBuildHasher>,
}

impl History {
    pub(super) fn new(rules: RetentionRules) -> History {
        let seed = std::collections::hash_map::RandomState::new()
            .hash_one((std::process::id(), std::time::SystemTime::now()));
        History {
            rules,
            process: format!("{:x}", seed & 0xff_ffff_ffff),
            generation: AtomicU64::new(0),
            published: AtomicU64::new(0),
            logs: DashMap::with_hasher(FxBuildHasher),
        }
    }

    fn new_log(&self, now: Instant) -> Log {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        Log {
            epoch: Epoch::new(&format!("{}{generation:x}", self.process)),
            top: 0,
            entries: VecDeque::new(),
            touched: now,
        }
    }

    fn meta_ttl(&self) -> Duration {
        Duration::from_secs(self.rules.meta_ttl_seconds)
    }

    /// Appends a publication of `channel` and hands it, numbered, to
    /// `deliver` while the channel's log is still locked, so that offsets
    /// reach the hub in order. `None`: the channel keeps no history.
    pub(super) fn append<T>(
        &self,
        channel: &Channel,
        payload: &Bytes,
        deliver: impl FnOnce(u64, &Epoch) -> T,
    ) -> Option<T> {
        let retention = self.rules.of(channel)?;
        let now = Instant::now();
        let mut log = self
            .logs
            .entry(channel.clone())
            .or_insert_with(|| self.new_log(now));
        if now.duration_since(log.touched) > self.meta_ttl() {
            *log = self.new_log(now);
        }
        log.top += 1;
        log.touched = now;
        let offset = log.top;
        log.entries.push_back((offset, payload.clone(), now));
        trim(&mut log.entries, retention.size, retention.ttl_seconds, now);
        let out = deliver(offset, &log.epoch);
        drop(log);
        if self.published.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now);
        }
        Some(out)
    }

    /// Drops channels idle beyond `meta_ttl_seconds` and expired entries.
    fn sweep(&self, now: Instant) {
        let meta_ttl = self.meta_ttl();
        self.logs.retain(|channel, log| {
            if now.duration_since(log.touched) > meta_ttl {
                return false;
            }
            if let Some(r) = self.rules.of(channel) {
                trim(&mut log.entries, r.size, r.ttl_seconds, now);
            }
            true
        });
    }

    /// Reads `channel`'s history (see `Broker::history`).
    pub(super) fn read(
        &self,
        channel: &Channel,
        since: Option<u64>,
        limit: usize,
    ) -> Option<HistoryPage> {
        let retention = self.rules.of(channel)?;
        let now = Instant::now();
        let mut log = self
            .logs
            .entry(channel.clone())
            .or_insert_with(|| self.new_log(now));
        if now.duration_since(log.touched) > self.meta_ttl() {
            *log = self.new_log(now);
        }
        trim(&mut log.entries, retention.size, retention.ttl_seconds, now);
        let events = match since {
            Some(since) => log
                .entries
                .iter()
                .filter(|(o, _, _)| *o > since)
                .take(limit)
                .map(stored)
                .collect(),
            None => {
                let skip = log.entries.len().saturating_sub(limit);
                log.entries.iter().skip(skip).map(stored).collect()
            }
        };
        Some(HistoryPage {
            position: Position {
                offset: log.top,
                epoch: log.epoch.clone(),
            },
            events,
        })
    }

    /// Starts a new epoch if the top went backwards (see `Broker::new_epoch`).
    pub(super) fn new_epoch(&self, channel: &Channel, stale: &Position) -> Option<Position> {
        self.rules.of(channel)?;
        let now = Instant::now();
        let mut log = self.logs.get_mut(channel)?;
        if log.epoch == stale.epoch && log.top < stale.offset {
            let top = log.top;
            let entries = std::mem::take(&mut log.entries);
            *log = self.new_log(now);
            log.top = top;
            log.entries = entries;
        }
        Some(Position {
            offset: log.top,
            epoch: log.epoch.clone(),
        })
    }
}

fn stored((offset, data, _): &(u64, Bytes, Instant)) -> Stored {
    Stored {
        offset: *offset,
        data: data.clone(),
    }
}

fn trim(entries: &mut VecDeque<(u64, Bytes, Instant)>, size: usize, ttl: u64, now: Instant) {
    while entries.len() > size {
        entries.pop_front();
    }
    let ttl = Duration::from_secs(ttl);
    while entries
        .front()
        .is_some_and(|(_, _, at)| now.duration_since(*at) > ttl)
    {
        entries.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryConfig;
    use crate::protocol::RoomName;

    fn history(size: usize, ttl: u64) -> History {
        History::new(RetentionRules::new(&HistoryConfig {
            size,
            ttl_seconds: ttl,
            meta_ttl_seconds: 600,
            ..HistoryConfig::default()
        }))
    }

    fn lobby() -> Channel {
        Channel::Room(RoomName::parse("lobby").unwrap())
    }

    fn publish(h: &History, n: u64) -> u64 {
        h.append(&lobby(), &Bytes::from(n.to_string()), |o, _| o)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn offsets_are_contiguous_and_history_is_bounded_by_size_and_age() {
        let h = history(3, 10);
        let page = h.read(&lobby(), None, 10).unwrap();
        assert_eq!(
            page.position.offset, 0,
            "never published to: offset 0, an epoch already"
        );
        let epoch = page.position.epoch.clone();
        for n in 1..=5 {
            assert_eq!(publish(&h, n), n);
        }
        let page = h.read(&lobby(), Some(0), 10).unwrap();
        assert_eq!(
            page.position,
            Position {
                offset: 5,
                epoch: epoch.clone()
            }
        );
        assert_eq!(
            page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [3, 4, 5],
            "size 3"
        );
        assert_eq!(h.read(&lobby(), None, 2).unwrap().events[0].offset, 4);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            h.read(&lobby(), Some(0), 10).unwrap().events.is_empty(),
            "age 10 s"
        );
        assert_eq!(h.read(&lobby(), None, 1).unwrap().position.offset, 5);
        // Idle beyond meta_ttl: a new epoch, offsets from 1 again.
        tokio::time::advance(Duration::from_secs(600)).await;
        let page = h.read(&lobby(), None, 1).unwrap();
        assert_ne!(page.position.epoch, epoch);
        assert_eq!(page.position.offset, 0);
        assert_eq!(publish(&h, 1), 1);
    }

    #[test]
    fn a_channel_without_history_is_none_and_two_processes_never_share_an_epoch() {
        let off = History::new(RetentionRules::new(&HistoryConfig {
            size: 0,
            ..HistoryConfig::default()
        }));
        assert!(off.read(&lobby(), None, 1).is_none());
        assert!(off.append(&lobby(), &Bytes::new(), |o, _| o).is_none());
        let (a, b) = (history(3, 10), history(3, 10));
        assert_ne!(
            a.read(&lobby(), None, 1).unwrap().position.epoch,
            b.read(&lobby(), None, 1).unwrap().position.epoch
        );
    }
}
