//! The revocations a node enforces, held in memory so that checking a token
//! adds no round trip to the upgrade: a hash lookup by `jti` and one by
//! user. Fed at start-up from the broker's stored revocations and then by
//! the control channel; each entry is dropped once the tokens it covers
//! have expired anyway.

use std::sync::Arc;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

use super::{AuthError, Identity};
use crate::cluster::Revocation;

/// Revoked tokens, by `jti` and by user.
#[derive(Default)]
pub struct Revocations {
    /// jti -> expiry (unix seconds).
    jtis: DashMap<Box<str>, u64, FxBuildHasher>,
    /// user -> (issued_before, expiry).
    users: DashMap<Arc<str>, (u64, u64), FxBuildHasher>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("jtis", &self.jtis.len())
            .field("users", &self.users.len())
            .finish()
    }
}

impl Revocations {
    /// Enforces `r` from now on (a later `issued_before` for a user wins).
    pub fn apply(&self, r: &Revocation) {
        match r {
            Revocation::Jti { jti, expires } => {
                self.jtis.insert(jti.as_str().into(), *expires);
            }
            Revocation::User {
                user,
                issued_before,
                expires,
            } => {
                let mut entry = self.users.entry(user.as_str().into()).or_insert((0, 0));
                entry.0 = entry.0.max(*issued_before);
                entry.1 = entry.1.max(*expires);
            }
        }
    }

    /// Whether `identity`'s token is revoked.
    pub fn revokes(&self, identity: &Identity) -> bool {
        if let Some(jti) = &identity.jti
            && self.jtis.contains_key(&**jti)
        {
            return true;
        }
        self.users
            .get(&identity.user)
            .is_some_and(|e| identity.issued_at.is_none_or(|iat| iat < e.0))
    }

    /// [`AuthError::Revoked`] if `identity`'s token is revoked: the check
    /// every verification path (upgrade, SSE, `refresh`) ends with.
    pub fn check(&self, identity: &Identity) -> Result<(), AuthError> {
        if self.revokes(identity) {
            Err(AuthError::Revoked)
        } else {
            Ok(())
        }
    }

    /// Drops revocations whose tokens have all expired by `now` (unix s).
    pub fn sweep(&self, now: u64) {
        self.jtis.retain(|_, expires| *expires > now);
        self.users.retain(|_, (_, expires)| *expires > now);
    }

    /// Revocations held (for the registry and tests).
    pub fn len(&self) -> usize {
        self.jtis.len() + self.users.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grants;

    fn identity(user: &str, jti: Option<&str>, iat: Option<u64>) -> Identity {
        Identity {
            user: user.into(),
            expires_at: 100,
            rooms: Grants::default(),
            publish: Grants::default(),
            jti: jti.map(Into::into),
            issued_at: iat,
        }
    }

    #[test]
    fn by_jti_and_by_user_issued_before() {
        let r = Revocations::default();
        assert!(!r.revokes(&identity("alice", Some("t1"), Some(5))));
        r.apply(&Revocation::Jti {
            jti: "t1".into(),
            expires: 50,
        });
        assert!(r.revokes(&identity("bob", Some("t1"), Some(5))));
        assert!(!r.revokes(&identity("bob", Some("t2"), Some(5))));
        r.apply(&Revocation::User {
            user: "alice".into(),
            issued_before: 10,
            expires: 60,
        });
        assert!(r.revokes(&identity("alice", None, Some(9))));
        assert!(
            r.revokes(&identity("alice", None, None)),
            "no iat: issued before"
        );
        assert!(
            !r.revokes(&identity("alice", None, Some(10))),
            "issued at or after: valid"
        );
        r.sweep(55);
        assert!(
            !r.revokes(&identity("bob", Some("t1"), Some(5))),
            "expired with its tokens"
        );
        assert!(r.revokes(&identity("alice", None, Some(9))));
        r.sweep(60);
        assert!(r.is_empty());
    }
}
