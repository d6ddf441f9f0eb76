//! Admission limits and abuse limits: node capacity, sockets per IP and per
//! user, the node's connection rate, and each socket's inbound message rate.
//!
//! Admission hands out a [`ConnPermit`] that holds the socket's place in every
//! count; dropping it gives the places back and removes zero entries, so the
//! per-IP and per-user tables are empty again once every socket has gone.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

use crate::config::LimitsConfig;
use crate::protocol::Refusal;

/// Counts shared by every admission on the node.
pub struct Limits {
    capacity: usize,
    open: AtomicUsize,
    per_ip: DashMap<IpAddr, u32, FxBuildHasher>,
    per_user: DashMap<Arc<str>, u32, FxBuildHasher>,
    max_per_ip: u32,
    max_per_user: u32,
    connect_bucket: Option<Mutex<TokenBucket>>,
}

impl Limits {
    /// Limits for a node that may hold `capacity` sockets.
    pub fn new(cfg: &LimitsConfig, capacity: usize) -> Limits {
        Limits {
            capacity,
            open: AtomicUsize::new(0),
            per_ip: DashMap::with_hasher(FxBuildHasher),
            per_user: DashMap::with_hasher(FxBuildHasher),
            max_per_ip: cfg.max_sockets_per_ip,
            max_per_user: cfg.max_sockets_per_user,
            connect_bucket: (cfg.connect_rate > 0)
                .then(|| Mutex::new(TokenBucket::new(cfg.connect_rate, cfg.connect_burst.max(1)))),
        }
    }

    /// Whether the node is at capacity (readiness reports it).
    pub fn is_full(&self) -> bool {
        self.open.load(Ordering::Relaxed) >= self.capacity
    }

    /// Cheap node-wide checks, run before the token is verified.
    pub fn check_node(&self) -> Result<(), Refusal> {
        if self.is_full() {
            return Err(Refusal::Capacity);
        }
        if let Some(bucket) = &self.connect_bucket
            && !bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now())
        {
            return Err(Refusal::Rate);
        }
        Ok(())
    }

    /// Takes a place for one socket of `user` from `ip`, or refuses.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, user: &Arc<str>) -> Result<ConnPermit, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Capacity);
        }
        // From here on the permit owns the places it has taken; an early
        // return drops it, which gives them back.
        let mut permit = ConnPermit {
            limits: self.clone(),
            ip: None,
            user: None,
        };
        if !take(&self.per_ip, ip, self.max_per_ip) {
            return Err(Refusal::PerIp);
        }
        permit.ip = Some(ip);
        if !take(&self.per_user, user.clone(), self.max_per_user) {
            return Err(Refusal::PerUser);
        }
        permit.user = Some(user.clone());
        Ok(permit)
    }

    /// Entries in the per-IP and per-user tables (zero when no socket is open).
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        (
            self.open.load(Ordering::Relaxed),
            self.per_ip.len(),
            self.per_user.len(),
        )
    }
}

fn take<K: std::hash::Hash + Eq>(map: &DashMap<K, u32, FxBuildHasher>, key: K, max: u32) -> bool {
    // A refused key always has a count >= max > 0, so no zero entry is left behind.
    let mut count = map.entry(key).or_insert(0);
    if max > 0 && *count >= max {
        return false;
    }
    *count += 1;
    true
}

fn give_back<K: std::hash::Hash + Eq>(map: &DashMap<K, u32, FxBuildHasher>, key: &K) {
    map.remove_if_mut(key, |_, count| {
        *count = count.saturating_sub(1);
        *count == 0
    });
}

/// One socket's places in the node's counts; released on drop.
pub struct ConnPermit {
    limits: Arc<Limits>,
    ip: Option<IpAddr>,
    user: Option<Arc<str>>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some(ip) = &self.ip {
            give_back(&self.limits.per_ip, ip);
        }
        if let Some(user) = &self.user {
            give_back(&self.limits.per_user, user);
        }
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    // f32: rates and bursts are small integers, and every socket has one.
    rate: f32,
    burst: f32,
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: rate as f32,
            burst: burst as f32,
            tokens: burst as f32,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(per_ip: u32, per_user: u32) -> LimitsConfig {
        LimitsConfig {
            max_sockets_per_ip: per_ip,
            max_sockets_per_user: per_user,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn permits_count_and_release() {
        let limits = Arc::new(Limits::new(&cfg(2, 1), 10));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let a = limits.admit(ip, &alice).unwrap();
        assert_eq!(limits.admit(ip, &alice).err(), Some(Refusal::PerUser));
        let b = limits.admit(ip, &bob).unwrap();
        assert_eq!(
            limits.admit(ip, &"carol".into()).err(),
            Some(Refusal::PerIp)
        );
        assert_eq!(limits.table_sizes(), (2, 1, 2));
        drop((a, b));
        assert_eq!(limits.table_sizes(), (0, 0, 0));
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let limits = Arc::new(Limits::new(&cfg(0, 0), 1));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let p = limits.admit(ip, &"a".into()).unwrap();
        assert!(limits.is_full());
        assert_eq!(limits.check_node(), Err(Refusal::Capacity));
        assert_eq!(limits.admit(ip, &"b".into()).err(), Some(Refusal::Capacity));
        drop(p);
        assert_eq!(limits.table_sizes(), (0, 0, 0));
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, 2);
        assert!(b.take(start) && b.take(start));
        assert!(!b.take(start));
        assert!(b.take(start + Duration::from_millis(100)));
        assert!(!b.take(start + Duration::from_millis(100)));
    }
}
