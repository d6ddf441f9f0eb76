//! Positions in a channel's history (contract section 6): an offset, which
//! grows by exactly one per publication, within an epoch, an opaque string
//! that changes whenever the history was lost or reset. Offsets of two
//! epochs are never compared.

use std::fmt;
use std::sync::Arc;

/// Longest epoch accepted from a client (ours are at most 16 characters).
pub const MAX_EPOCH_LEN: usize = 64;

/// An epoch: opaque, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// Wraps an epoch string.
    pub fn new(epoch: &str) -> Epoch {
        Epoch(Arc::from(epoch))
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `bytes` spell this epoch (compared without allocating).
    pub fn is(&self, bytes: &[u8]) -> bool {
        self.0.as_bytes() == bytes
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a channel's history stands: its top offset (0 before the first
/// publication) in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The offset of the last publication.
    pub offset: u64,
    /// The epoch that offset belongs to.
    pub epoch: Epoch,
}

/// Where a client asks to resume from: the last position it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The last offset the client received.
    pub offset: u64,
    /// The epoch of that offset.
    pub epoch: String,
}

impl Since {
    /// Validates a client's `since` as it arrived: an object with an
    /// unsigned integer `offset` and a string `epoch` of at most
    /// [`MAX_EPOCH_LEN`] bytes. The error says what is wrong.
    pub fn from_value(value: &serde_json::Value) -> Result<Since, String> {
        let obj = value
            .as_object()
            .ok_or("`since` must be an object {\"offset\":<integer>,\"epoch\":<string>}")?;
        let offset = match obj.get("offset") {
            Some(serde_json::Value::Number(n)) => n.as_u64().ok_or(
                "`since.offset` must be an unsigned integer below 2^64 (not negative or fractional)",
            )?,
            Some(_) => return Err("`since.offset` must be a number".into()),
            None => return Err("missing field `since.offset`".into()),
        };
        let epoch = match obj.get("epoch") {
            Some(serde_json::Value::String(e)) if e.len() <= MAX_EPOCH_LEN => e.clone(),
            Some(serde_json::Value::String(_)) => {
                return Err(format!(
                    "`since.epoch` is longer than {MAX_EPOCH_LEN} bytes"
                ));
            }
            Some(_) => return Err("`since.epoch` must be a string".into()),
            None => return Err("missing field `since.epoch`".into()),
        };
        Ok(Since { offset, epoch })
    }

    /// Parses `offset` and `epoch` as given in query parameters
    /// (`user_offset` / `user_epoch` and their `broadcast_` twins).
    pub fn from_query(offset: &str, epoch: &str) -> Result<Since, String> {
        let offset = offset
            .parse::<u64>()
            .map_err(|_| format!("offset {offset:?} must be an unsigned integer"))?;
        if epoch.len() > MAX_EPOCH_LEN {
            return Err(format!("epoch is longer than {MAX_EPOCH_LEN} bytes"));
        }
        Ok(Since {
            offset,
            epoch: epoch.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn since_accepts_only_an_unsigned_offset_and_a_short_epoch() {
        assert_eq!(
            Since::from_value(&json!({"offset": 41, "epoch": "k3Jd"})),
            Ok(Since {
                offset: 41,
                epoch: "k3Jd".into()
            })
        );
        assert!(Since::from_value(&json!({"offset": u64::MAX, "epoch": ""})).is_ok());
        for bad in [
            json!({"offset": -1, "epoch": "e"}),
            json!({"offset": 1.5, "epoch": "e"}),
            json!({"offset": "41", "epoch": "e"}),
            json!({"offset": 1e30, "epoch": "e"}),
            json!({"offset": 1, "epoch": 7}),
            json!({"offset": 1, "epoch": "x".repeat(10_000)}),
            json!({"epoch": "e"}),
            json!({"offset": 1}),
            json!([1, "e"]),
            json!(null),
        ] {
            assert!(Since::from_value(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_positions_parse_strictly() {
        assert_eq!(Since::from_query("9", "x1").unwrap().offset, 9);
        for bad in ["-1", "1.5", "", "nine", "18446744073709551616"] {
            assert!(Since::from_query(bad, "x").is_err(), "{bad}");
        }
        assert!(Since::from_query("1", &"e".repeat(65)).is_err());
    }
}
