//! What a resuming subscriber gets (contract section 6): every publication
//! after its `since`, or `recovered: false` and nothing, never a partial
//! replay. The page comes from the broker, read with `since.offset` and a
//! limit of `history.max_recover`.

use super::{HistoryPage, Stored};
use crate::protocol::{Resumed, Since};

/// The outcome of a (re)subscribe.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The reply's position and `recovered`.
    pub resumed: Resumed,
    /// Publications to replay, oldest first.
    pub replay: Vec<Stored>,
    /// Live events at or below this offset are covered (by the replay, or by
    /// the position the reply reports) and must not follow it.
    pub after: Option<u64>,
}

/// Decides a resume. `page` is `None` for a channel without history.
pub fn resume(since: Option<&Since>, page: Option<HistoryPage>, max_recover: usize) -> Resume {
    let Some(page) = page else {
        return Resume {
            resumed: Resumed {
                position: None,
                recovered: since.map(|_| false),
            },
            replay: Vec::new(),
            after: None,
        };
    };
    let top = page.position.offset;
    let recovered_events = since.and_then(|s| {
        if s.epoch != page.position.epoch.as_str() || s.offset > top {
            return None;
        }
        let missed = top - s.offset;
        if missed > max_recover as u64 || page.events.len() as u64 != missed {
            return None;
        }
        let contiguous = page
            .events
            .iter()
            .enumerate()
            .all(|(i, e)| e.offset == s.offset + 1 + i as u64);
        contiguous.then_some(page.events)
    });
    let recovered = since.map(|_| recovered_events.is_some());
    Resume {
        resumed: Resumed {
            position: Some(page.position),
            recovered,
        },
        replay: recovered_events.unwrap_or_default(),
        after: Some(top),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Epoch, Position};
    use bytes::Bytes;

    fn page(top: u64, from: u64) -> HistoryPage {
        HistoryPage {
            position: Position {
                offset: top,
                epoch: Epoch::new("E"),
            },
            events: (from..=top)
                .map(|o| Stored {
                    offset: o,
                    data: Bytes::from(o.to_string()),
                })
                .collect(),
        }
    }

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn every_missed_event_follows_or_none_does() {
        let r = resume(Some(&since(41, "E")), Some(page(57, 42)), 1000);
        assert_eq!(r.resumed.recovered, Some(true));
        assert_eq!(r.replay.len(), 16);
        assert_eq!((r.replay[0].offset, r.after), (42, Some(57)));

        let caught_up = resume(Some(&since(57, "E")), Some(page(57, 58)), 1000);
        assert_eq!(
            (caught_up.resumed.recovered, caught_up.replay.len()),
            (Some(true), 0)
        );

        for (why, s, p, max) in [
            ("another epoch", since(41, "F"), page(57, 42), 1000),
            ("beyond the top", since(58, "E"), page(57, 58), 1000),
            (
                "history no longer reaches",
                since(41, "E"),
                page(57, 45),
                1000,
            ),
            ("more than max_recover", since(41, "E"), page(57, 42), 10),
        ] {
            let r = resume(Some(&s), Some(p), max);
            assert_eq!(r.resumed.recovered, Some(false), "{why}");
            assert!(r.replay.is_empty(), "{why}: never a partial replay");
            assert_eq!(r.after, Some(57), "{why}: live events after the top follow");
        }
    }

    #[test]
    fn without_since_the_position_alone_and_without_history_nothing() {
        let r = resume(None, Some(page(57, 58)), 1000);
        assert_eq!(r.resumed.recovered, None);
        assert_eq!(r.resumed.position.unwrap().offset, 57);
        let none = resume(Some(&since(1, "E")), None, 1000);
        assert_eq!(none.resumed.position, None);
        assert_eq!(none.resumed.recovered, Some(false));
        assert_eq!(none.after, None);
    }
}
