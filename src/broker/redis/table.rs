//! The subscription table: which Redis channels this node wants (local
//! interest, plus broadcast) and where each one is live, i.e. on which
//! master's connection Redis confirmed it.
//!
//! Only the reconciler changes `live`, one pass at a time, so a plan never
//! races an in-flight command for the same channel. A waiter (a first local
//! subscriber) is released only when its channel is confirmed live on the
//! connection of the master that owns it now: the `ok` a client gets means
//! an event published after it is delivered.

use std::collections::{BTreeMap, HashMap, HashSet};

use fred::bytes_utils::Str;
use tokio::sync::oneshot;

use super::topology::Addr;

/// What a reconciler pass sends to one master.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct NodeOps {
    /// Channels to subscribe, each with whether it is a re-subscription
    /// (nobody waits on it: it was live before a reconnect, failover or move).
    pub(super) subscribe: Vec<(Str, bool)>,
    /// Channels to unsubscribe.
    pub(super) unsubscribe: Vec<Str>,
}

/// A wanted channel.
#[derive(Default)]
struct Want {
    /// First local subscribers waiting for the channel to be live.
    waiters: Vec<oneshot::Sender<()>>,
    /// Live at some point since it was wanted: subscribing it again is a
    /// re-subscription (reconnect, failover, migration), not a first one.
    was_live: bool,
}

/// Desired and live subscriptions.
#[derive(Default)]
pub(super) struct Table {
    desired: HashMap<Str, Want>,
    live: HashMap<Str, Addr>,
    per_node: HashMap<Addr, usize>,
    dirty: HashSet<Str>,
}

impl Table {
    /// Wants `name`; the receiver resolves once it is live.
    pub(super) fn want(&mut self, name: Str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.desired
            .entry(name.clone())
            .or_default()
            .waiters
            .push(tx);
        self.dirty.insert(name);
        rx
    }

    /// Wants `name` with nobody waiting (broadcast).
    pub(super) fn want_quietly(&mut self, name: Str) {
        self.desired.entry(name.clone()).or_default();
        self.dirty.insert(name);
    }

    /// No longer wants `name`.
    pub(super) fn unwant(&mut self, name: &Str) {
        self.desired.remove(name);
        self.dirty.insert(name.clone());
    }

    /// Whether something changed since the last plan.
    #[cfg(test)]
    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Channels live on the bus, excluding `except` (broadcast).
    pub(super) fn live_count(&self, except: &[&Str]) -> usize {
        let skipped = except
            .iter()
            .filter(|n| self.live.contains_key(**n))
            .count();
        self.live.len() - skipped
    }

    /// Whether `name` is live on some master.
    pub(super) fn is_live(&self, name: &Str) -> bool {
        self.live.contains_key(name)
    }

    /// The names live on `addr`'s connection.
    pub(super) fn live_names_on(&self, addr: &Addr) -> Vec<Str> {
        self.live
            .iter()
            .filter(|(_, at)| *at == addr)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Channels live on `addr`'s connection, as far as this node knows.
    pub(super) fn live_on(&self, addr: &Addr) -> usize {
        self.per_node.get(addr).copied().unwrap_or(0)
    }

    /// Drops every live entry on `addr` (its connection was lost or rebuilt,
    /// or Redis shows fewer subscriptions than we think); the next full pass
    /// subscribes them again. Returns how many were dropped.
    pub(super) fn forget_node(&mut self, addr: &Addr) -> usize {
        let before = self.live.len();
        self.live.retain(|_, at| at != addr);
        self.per_node.remove(addr);
        before - self.live.len()
    }

    fn set_live(&mut self, name: Str, addr: Addr) {
        *self.per_node.entry(addr.clone()).or_default() += 1;
        if let Some(old) = self.live.insert(name, addr) {
            self.dec(&old);
        }
    }

    fn clear_live(&mut self, name: &Str) {
        if let Some(old) = self.live.remove(name) {
            self.dec(&old);
        }
    }

    fn dec(&mut self, addr: &Addr) {
        if let Some(n) = self.per_node.get_mut(addr) {
            *n = n.saturating_sub(1);
        }
    }

    /// Decides what to send where. `full` looks at every channel (reconnect,
    /// topology change, timer); otherwise only at channels changed since the
    /// last plan. `owner` routes a channel to its master; `usable` says
    /// whether that master's connection can take commands now. Waiters of
    /// channels already live where they belong are released here.
    pub(super) fn plan(
        &mut self,
        full: bool,
        owner: &dyn Fn(&Str) -> Option<Addr>,
        usable: &dyn Fn(&Addr) -> bool,
    ) -> BTreeMap<Addr, NodeOps> {
        let names: Vec<Str> = if full {
            self.dirty.clear();
            self.desired
                .keys()
                .chain(self.live.keys())
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        } else {
            self.dirty.drain().collect()
        };
        let mut ops: BTreeMap<Addr, NodeOps> = BTreeMap::new();
        let mut pending = Vec::new();
        for name in names {
            let owner = owner(&name);
            let at = self.live.get(&name).cloned();
            let wanted = self.desired.contains_key(&name);
            match (wanted, at, owner) {
                (true, Some(at), Some(owner)) if at == owner && usable(&owner) => {
                    if let Some(want) = self.desired.get_mut(&name) {
                        release(&mut want.waiters);
                    }
                }
                (true, at, owner) => {
                    // Live somewhere else: that master lost the slot, and Redis
                    // dropped the subscription with it (its `sunsubscribe`
                    // notice is what fred discards). Never SUNSUBSCRIBE there:
                    // the MOVED it answers has no reply slot in fred's queue.
                    if at.is_some() && at != owner {
                        self.clear_live(&name);
                    }
                    match owner.filter(|o| usable(o)) {
                        Some(owner) if self.live.get(&name) != Some(&owner) => {
                            let resubscribe = self.desired.get(&name).is_some_and(|w| w.was_live);
                            ops.entry(owner)
                                .or_default()
                                .subscribe
                                .push((name, resubscribe));
                        }
                        _ => pending.push(name),
                    }
                }
                (false, Some(at), owner) => {
                    if owner.as_ref() == Some(&at) && usable(&at) {
                        ops.entry(at).or_default().unsubscribe.push(name);
                    } else if owner.as_ref() != Some(&at) {
                        // The master no longer owns it: Redis already dropped it.
                        self.clear_live(&name);
                    } else {
                        pending.push(name);
                    }
                }
                (false, None, _) => {}
            }
        }
        // Not routable now: retried by the next pass that runs anyway.
        self.dirty.extend(pending);
        ops
    }

    /// A command for `name` failed: plan it again in the next pass.
    pub(super) fn retry(&mut self, name: Str) {
        self.dirty.insert(name);
    }

    /// Redis confirmed `name` on `addr`.
    pub(super) fn subscribed(&mut self, addr: &Addr, name: Str) {
        match self.desired.get_mut(&name) {
            Some(want) => {
                want.was_live = true;
                release(&mut want.waiters);
            }
            // Unwanted while the command was in flight: undo it next pass.
            None => {
                self.dirty.insert(name.clone());
            }
        }
        self.set_live(name, addr.clone());
    }

    /// `name` was unsubscribed on `addr`.
    pub(super) fn unsubscribed(&mut self, addr: &Addr, name: &Str) {
        if self.live.get(name) == Some(addr) {
            self.clear_live(name);
        }
        if self.desired.contains_key(name) {
            // Wanted again while the command was in flight.
            self.dirty.insert(name.clone());
        }
    }
}

fn release(waiters: &mut Vec<oneshot::Sender<()>>) {
    for waiter in waiters.drain(..) {
        // A waiter that gave up (timed out) no longer listens; nothing to do.
        let _ = waiter.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> Addr {
        Addr::new("127.0.0.1", 7000)
    }
    fn b() -> Addr {
        Addr::new("127.0.0.1", 7001)
    }
    fn s(name: &str) -> Str {
        Str::from(name)
    }

    #[test]
    fn a_waiter_is_released_only_once_live_at_the_owner() {
        let mut t = Table::default();
        let mut rx = t.want(s("x"));
        let ops = t.plan(false, &|_| Some(a()), &|_| true);
        assert_eq!(ops[&a()].subscribe, vec![(s("x"), false)]);
        assert!(rx.try_recv().is_err());
        t.subscribed(&a(), s("x"));
        assert!(rx.try_recv().is_ok());
        assert_eq!(t.live_on(&a()), 1);
        // Nothing changed: an incremental plan is empty.
        assert!(t.plan(false, &|_| Some(a()), &|_| true).is_empty());
    }

    #[test]
    fn an_unreachable_owner_keeps_the_channel_pending() {
        let mut t = Table::default();
        let mut rx = t.want(s("x"));
        assert!(t.plan(false, &|_| Some(a()), &|_| false).is_empty());
        assert!(t.has_dirty());
        let ops = t.plan(false, &|_| Some(a()), &|_| true);
        assert_eq!(ops.len(), 1);
        t.subscribed(&a(), s("x"));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn a_moved_slot_resubscribes_at_the_new_owner_without_unsubscribing_the_old() {
        let mut t = Table::default();
        t.want_quietly(s("x"));
        let first = t.plan(false, &|_| Some(a()), &|_| true);
        assert_eq!(
            first[&a()].subscribe,
            vec![(s("x"), false)],
            "a first subscription is no re-subscription"
        );
        t.subscribed(&a(), s("x"));
        let ops = t.plan(true, &|_| Some(b()), &|_| true);
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert_eq!(ops[&b()].subscribe, vec![(s("x"), true)]);
        assert_eq!(t.live_on(&a()), 0);
        t.subscribed(&b(), s("x"));
        assert_eq!(t.live_on(&b()), 1);
    }

    #[test]
    fn unwant_while_subscribing_and_want_while_unsubscribing_converge() {
        let mut t = Table::default();
        let _rx = t.want(s("x"));
        let ops = t.plan(false, &|_| Some(a()), &|_| true);
        assert_eq!(ops[&a()].subscribe.len(), 1);
        t.unwant(&s("x")); // e.g. the subscribe timed out and rolled back
        t.subscribed(&a(), s("x")); // the reply arrives late
        let ops = t.plan(false, &|_| Some(a()), &|_| true);
        assert_eq!(ops[&a()].unsubscribe, vec![s("x")]);
        let mut rx = t.want(s("x")); // a new first subscriber meanwhile
        t.unsubscribed(&a(), &s("x"));
        assert_eq!(t.live_count(&[&s("broadcast")]), 0);
        let ops = t.plan(false, &|_| Some(a()), &|_| true);
        assert_eq!(ops[&a()].subscribe, vec![(s("x"), false)]);
        t.subscribed(&a(), s("x"));
        assert!(rx.try_recv().is_ok());
        assert_eq!(t.live_count(&[&s("broadcast")]), 1);
    }

    #[test]
    fn a_lost_connection_is_forgotten_and_fully_replanned() {
        let mut t = Table::default();
        for name in ["x", "y", "broadcast"] {
            t.want_quietly(s(name));
        }
        let ops = t.plan(false, &|_| Some(a()), &|_| true);
        for (name, _) in &ops[&a()].subscribe {
            t.subscribed(&a(), name.clone());
        }
        assert_eq!(t.live_count(&[&s("broadcast")]), 2);
        assert_eq!(t.forget_node(&a()), 3);
        let ops = t.plan(true, &|_| Some(a()), &|_| true);
        assert_eq!(ops[&a()].subscribe.len(), 3);
        assert!(ops[&a()].subscribe.iter().all(|(_, re)| *re));
    }

    #[test]
    fn unwanted_channels_on_a_master_that_lost_the_slot_are_just_dropped() {
        let mut t = Table::default();
        t.want_quietly(s("x"));
        t.plan(false, &|_| Some(a()), &|_| true);
        t.subscribed(&a(), s("x"));
        t.unwant(&s("x"));
        assert!(t.plan(false, &|_| Some(b()), &|_| true).is_empty());
        assert_eq!(t.live_on(&a()), 0);
    }
}
