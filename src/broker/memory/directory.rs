//! The embedded broker's directory: presence, revocations and the node
//! registry of a one-node cluster, in memory, with the same semantics as
//! the Redis one (`broker/redis/directory.rs`): a user counts once in
//! `users` whatever its sockets, `join` / `leave` fire on the first socket
//! in and the last out, revocations expire with the tokens they cover.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::broker::{PresenceApplied, PresenceChange};
use crate::cluster::{NodeInfo, Revocation};
use crate::protocol::{PresenceInfo, RoomName};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Presence, revocations and the registry of one node.
#[derive(Default)]
pub(super) struct Directory {
    /// room -> user -> sockets.
    rooms: Mutex<HashMap<RoomName, HashMap<Arc<str>, i64>>>,
    revocations: Mutex<HashMap<String, Revocation>>,
    node: Mutex<Option<(NodeInfo, Instant)>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Directory")
    }
}

/// A user whose first socket joined (`true`) or last socket left a room.
pub(super) type Transition = (Arc<str>, bool);

impl Directory {
    /// Applies a change; returns the joins and leaves it caused.
    pub(super) fn apply(&self, change: PresenceChange) -> (PresenceApplied, Vec<Transition>) {
        let mut rooms = lock(&self.rooms);
        let unknown = !rooms.contains_key(&change.room);
        let room = rooms.entry(change.room.clone()).or_default();
        let mut transitions = Vec::new();
        if change.full {
            let before: Vec<Arc<str>> = room.keys().cloned().collect();
            let after: HashMap<Arc<str>, i64> = change
                .users
                .iter()
                .filter(|(_, n)| *n > 0)
                .cloned()
                .collect();
            transitions.extend(
                before
                    .iter()
                    .filter(|u| !after.contains_key(*u))
                    .map(|u| (u.clone(), false)),
            );
            transitions.extend(
                after
                    .keys()
                    .filter(|u| !room.contains_key(*u))
                    .map(|u| (u.clone(), true)),
            );
            *room = after;
        } else {
            for (user, delta) in &change.users {
                let count = room.entry(user.clone()).or_insert(0);
                let was = *count;
                *count = (*count + delta).max(0);
                match (was > 0, *count > 0) {
                    (false, true) => transitions.push((user.clone(), true)),
                    (true, false) => transitions.push((user.clone(), false)),
                    _ => {}
                }
                if *count == 0 {
                    room.remove(user);
                }
            }
        }
        let users = room.len();
        if room.is_empty() {
            rooms.remove(&change.room);
        }
        let events = change.events.is_some_and(|max| users <= max);
        if !events {
            transitions.clear();
        }
        (
            PresenceApplied {
                unknown: unknown && !change.full,
            },
            transitions,
        )
    }

    /// Who is in `room`.
    pub(super) fn presence(&self, room: &RoomName, max_members: usize) -> PresenceInfo {
        let rooms = lock(&self.rooms);
        let Some(users) = rooms.get(room) else {
            return PresenceInfo::default();
        };
        PresenceInfo {
            users: users.len() as u64,
            clients: users.values().sum::<i64>().max(0) as u64,
            members: users
                .keys()
                .take(max_members)
                .map(|u| u.to_string())
                .collect(),
            truncated: users.len() > max_members,
        }
    }

    pub(super) fn store_revocation(&self, r: Revocation) {
        lock(&self.revocations).insert(r.key(), r);
    }

    pub(super) fn revocations(&self) -> Vec<Revocation> {
        let now = unix_now();
        let mut all = lock(&self.revocations);
        all.retain(|_, r| r.expires() > now);
        all.values().cloned().collect()
    }

    pub(super) fn register(&self, info: NodeInfo, ttl_seconds: u64) {
        *lock(&self.node) = Some((info, Instant::now() + Duration::from_secs(ttl_seconds)));
    }

    pub(super) fn nodes(&self) -> Vec<NodeInfo> {
        lock(&self.node)
            .iter()
            .filter(|(_, until)| *until > Instant::now())
            .map(|(info, _)| info.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(users: &[(&str, i64)], full: bool) -> PresenceChange {
        PresenceChange {
            room: RoomName::parse("lobby").unwrap(),
            node: "n".into(),
            users: users.iter().map(|(u, n)| (Arc::from(*u), *n)).collect(),
            full,
            ttl_ms: 30_000,
            events: Some(10),
        }
    }

    #[test]
    fn users_count_once_and_transitions_are_first_in_last_out() {
        let d = Directory::default();
        let room = RoomName::parse("lobby").unwrap();
        let (applied, t) = d.apply(change(&[("alice", 1), ("alice", 1), ("bob", 1)], false));
        assert!(applied.unknown);
        assert_eq!(t.len(), 2, "alice and bob joined once each: {t:?}");
        let p = d.presence(&room, 10);
        assert_eq!((p.users, p.clients, p.truncated), (2, 3, false));
        let (_, t) = d.apply(change(&[("alice", -1)], false));
        assert!(t.is_empty(), "alice still has a socket");
        let (_, t) = d.apply(change(&[("alice", -1), ("bob", -1)], false));
        assert_eq!(t.iter().filter(|(_, joined)| !joined).count(), 2);
        assert_eq!(d.presence(&room, 10), PresenceInfo::default());
        d.apply(change(&[("a", 1), ("b", 1), ("c", 1)], true));
        let p = d.presence(&room, 2);
        assert_eq!((p.users, p.members.len(), p.truncated), (3, 2, true));
    }
}
