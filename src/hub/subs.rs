//! One channel's local subscribers. Most channels have one: every socket's
//! user channel, and every room of a user alone on this node. Those keep
//! their subscriber inline, with no table allocated; a second subscriber
//! turns the set into a hash table.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use super::{ConnId, Subscriber};

/// A channel's subscribers by connection id.
#[derive(Default)]
pub(super) enum Subs {
    #[default]
    Empty,
    One(ConnId, Subscriber),
    Many(HashMap<ConnId, Subscriber, FxBuildHasher>),
}

impl Subs {
    /// Adds `sub` as `id`; whether `id` was there already (it is replaced).
    pub(super) fn insert(&mut self, id: ConnId, sub: Subscriber) -> bool {
        match self {
            Subs::Empty => {
                *self = Subs::One(id, sub);
                false
            }
            Subs::One(held, existing) if *held == id => {
                *existing = sub;
                true
            }
            Subs::One(..) => {
                let Subs::One(held, existing) = std::mem::take(self) else {
                    unreachable!("matched One above")
                };
                let mut many = HashMap::with_capacity_and_hasher(2, FxBuildHasher);
                many.insert(held, existing);
                many.insert(id, sub);
                *self = Subs::Many(many);
                false
            }
            Subs::Many(many) => many.insert(id, sub).is_some(),
        }
    }

    /// Removes `id`; whether it was there.
    pub(super) fn remove(&mut self, id: ConnId) -> bool {
        match self {
            Subs::One(held, _) if *held == id => {
                *self = Subs::Empty;
                true
            }
            Subs::Many(many) => {
                let removed = many.remove(&id).is_some();
                if many.is_empty() {
                    *self = Subs::Empty;
                }
                removed
            }
            _ => false,
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Subs::Empty => 0,
            Subs::One(..) => 1,
            Subs::Many(many) => many.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` on every subscriber.
    pub(super) fn for_each(&self, mut f: impl FnMut(&Subscriber)) {
        match self {
            Subs::Empty => {}
            Subs::One(_, sub) => f(sub),
            Subs::Many(many) => many.values().for_each(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outbox::Outbox;
    use crate::protocol::Format;

    fn sub() -> Subscriber {
        Subscriber {
            outbox: Arc::new(Outbox::new(8, 1024)),
            format: Format::Json,
        }
    }

    #[test]
    fn one_inline_then_a_table_then_back() {
        let mut s = Subs::default();
        assert!(!s.insert(1, sub()));
        assert!(matches!(s, Subs::One(1, _)));
        assert!(s.insert(1, sub()), "same id: replaced");
        assert!(!s.insert(2, sub()));
        assert!(!s.insert(3, sub()));
        assert_eq!(s.len(), 3);
        let mut n = 0;
        s.for_each(|_| n += 1);
        assert_eq!(n, 3);
        assert!(s.remove(2) && !s.remove(2));
        assert!(s.remove(1) && s.remove(3));
        assert!(s.is_empty() && matches!(s, Subs::Empty));
        assert!(!s.remove(9));
    }
}
