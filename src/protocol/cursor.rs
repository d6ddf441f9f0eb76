//! The SSE cursor (contract section 9): the `id:` of an SSE event, from which
//! a node resumes every channel of a stream. Opaque to clients; here it is
//! base64url (no padding) of a version byte and, per channel with history,
//! a 32-bit FNV-1a hash of the channel's name, the offset (LEB128) and the
//! epoch (length byte + bytes).
//!
//! Channels are named by hash, not by position in the URL, so a cursor stays
//! valid when the client reorders or changes its rooms; a hash that matches
//! no channel of the new stream is ignored, and a (vanishingly unlikely)
//! collision is caught by the epoch check of section 6. A cursor carries
//! positions only, never permissions: every room is still checked against
//! the token. Parsing is strict and bounded: anything but a cursor this
//! module could have written is an error.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Channel, MAX_EPOCH_LEN, Since};

const VERSION: u8 = 1;

/// Most channels one cursor names: the user channel, `broadcast` and this
/// many rooms (far above `limits.max_rooms_per_socket`'s default of 100 would
/// make the id a header larger than proxies like).
pub const MAX_CURSOR_CHANNELS: usize = 258;

/// Longest cursor accepted, in characters (checked before decoding).
pub const MAX_CURSOR_LEN: usize = 8 * 1024;

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorError {
    /// Longer than [`MAX_CURSOR_LEN`].
    TooLong,
    /// Not base64url without padding.
    NotBase64,
    /// An unknown version byte, a truncated entry, trailing bytes, an
    /// offset that overflows, an epoch too long or not UTF-8, a channel
    /// named twice, or too many channels.
    Malformed,
}

impl CursorError {
    /// A message for the client.
    pub fn message(self) -> &'static str {
        match self {
            CursorError::TooLong => "cursor too long",
            CursorError::NotBase64 => "cursor is not base64url",
            CursorError::Malformed => "malformed cursor: send back an id this gateway sent",
        }
    }
}

/// The positions of a stream's channels, in the order they were first seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    entries: Vec<(u32, Since)>,
}

/// FNV-1a, 32 bits: small, stable across versions and platforms.
fn hash(channel: &Channel) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    match channel {
        Channel::Room(r) => {
            feed(b"room:");
            feed(r.as_str().as_bytes());
        }
        Channel::User(u) => {
            feed(b"user:");
            feed(u.as_bytes());
        }
        Channel::Broadcast => feed(b"broadcast"),
    }
    h
}

impl Cursor {
    /// Where `channel` stood, if the cursor names it.
    pub fn get(&self, channel: &Channel) -> Option<&Since> {
        let h = hash(channel);
        self.entries.iter().find(|(k, _)| *k == h).map(|(_, s)| s)
    }

    /// Records `channel`'s position (its offset and epoch).
    pub fn set(&mut self, channel: &Channel, offset: u64, epoch: &str) {
        let h = hash(channel);
        let full = self.entries.len() >= MAX_CURSOR_CHANNELS;
        match self.entries.iter_mut().find(|(k, _)| *k == h) {
            Some((_, since)) => {
                since.offset = offset;
                if since.epoch != epoch {
                    since.epoch = epoch.to_owned();
                }
            }
            None if !full && epoch.len() <= MAX_EPOCH_LEN => self.entries.push((
                h,
                Since {
                    offset,
                    epoch: epoch.to_owned(),
                },
            )),
            None => {}
        }
    }

    /// Moves `channel` to `offset` in the epoch it already has; `false` when
    /// the cursor does not name it.
    pub fn advance(&mut self, channel: &Channel, offset: u64) -> bool {
        let h = hash(channel);
        match self.entries.iter_mut().find(|(k, _)| *k == h) {
            Some((_, since)) => {
                since.offset = offset;
                true
            }
            None => false,
        }
    }

    /// Whether it names no channel.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cursor as the text of an SSE `id:` field.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(1 + self.entries.len() * 24);
        bytes.push(VERSION);
        for (h, since) in &self.entries {
            bytes.extend_from_slice(&h.to_be_bytes());
            let mut offset = since.offset;
            loop {
                let low = (offset & 0x7f) as u8;
                offset >>= 7;
                if offset == 0 {
                    bytes.push(low);
                    break;
                }
                bytes.push(low | 0x80);
            }
            // `set` admits no epoch longer than MAX_EPOCH_LEN (< 256).
            bytes.push(since.epoch.len() as u8);
            bytes.extend_from_slice(since.epoch.as_bytes());
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses what [`encode`](Self::encode) wrote, and nothing else.
    pub fn parse(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| CursorError::NotBase64)?;
        let (&version, mut rest) = bytes.split_first().ok_or(CursorError::Malformed)?;
        if version != VERSION {
            return Err(CursorError::Malformed);
        }
        let mut cursor = Cursor::default();
        while !rest.is_empty() {
            if cursor.entries.len() >= MAX_CURSOR_CHANNELS {
                return Err(CursorError::Malformed);
            }
            let (h, after) = rest
                .split_first_chunk::<4>()
                .ok_or(CursorError::Malformed)?;
            let h = u32::from_be_bytes(*h);
            rest = after;
            let mut offset: u64 = 0;
            let mut shift = 0u32;
            loop {
                let (&b, after) = rest.split_first().ok_or(CursorError::Malformed)?;
                rest = after;
                let low = u64::from(b & 0x7f);
                // The tenth byte may carry one bit; more is an overflow, and a
                // zero final byte after the first is a non-canonical encoding.
                if shift > 63 || (shift == 63 && low > 1) || (shift > 0 && b == 0) {
                    return Err(CursorError::Malformed);
                }
                offset |= low << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            let (&len, after) = rest.split_first().ok_or(CursorError::Malformed)?;
            let len = usize::from(len);
            if len > MAX_EPOCH_LEN || after.len() < len {
                return Err(CursorError::Malformed);
            }
            let (epoch, after) = after.split_at(len);
            rest = after;
            let epoch = std::str::from_utf8(epoch).map_err(|_| CursorError::Malformed)?;
            if cursor.entries.iter().any(|(k, _)| *k == h) {
                return Err(CursorError::Malformed);
            }
            cursor.entries.push((
                h,
                Since {
                    offset,
                    epoch: epoch.to_owned(),
                },
            ));
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomName;
    use std::sync::Arc;

    fn room(name: &str) -> Channel {
        Channel::Room(RoomName::parse(name).unwrap())
    }

    #[test]
    fn a_cursor_round_trips_every_channel() {
        let mut c = Cursor::default();
        c.set(&Channel::User(Arc::from("alice")), 9, "x1");
        c.set(&Channel::Broadcast, 0, "b7");
        c.set(&room("lobby"), u64::MAX, &"e".repeat(MAX_EPOCH_LEN));
        assert!(c.advance(&Channel::Broadcast, 300));
        assert!(!c.advance(&room("other"), 1));
        let back = Cursor::parse(&c.encode()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get(&Channel::Broadcast).unwrap().offset, 300);
        assert_eq!(back.get(&room("lobby")).unwrap().offset, u64::MAX);
        assert_eq!(
            back.get(&Channel::User(Arc::from("alice"))).unwrap().epoch,
            "x1"
        );
        assert!(back.get(&room("other")).is_none());
        assert!(
            Cursor::parse(&Cursor::default().encode())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn anything_but_a_written_cursor_is_refused() {
        let mut c = Cursor::default();
        c.set(&room("lobby"), 5, "ep");
        let good = URL_SAFE_NO_PAD.decode(c.encode()).unwrap();
        let enc = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut bad_version = good.clone();
        bad_version[0] = 2;
        let mut trailing = good.clone();
        trailing.push(0);
        let mut long_epoch = vec![VERSION, 0, 0, 0, 1, 5, 65];
        long_epoch.extend(std::iter::repeat_n(b'e', 65));
        let mut duplicate = good.clone();
        duplicate.extend_from_slice(&good[1..]);
        let cases: Vec<(String, CursorError)> = vec![
            ("".into(), CursorError::Malformed),
            ("!!!".into(), CursorError::NotBase64),
            (format!("{}=", c.encode()), CursorError::NotBase64),
            ("a".repeat(MAX_CURSOR_LEN + 1), CursorError::TooLong),
            (enc(&bad_version), CursorError::Malformed),
            (enc(&trailing), CursorError::Malformed),
            (enc(&good[..good.len() - 1]), CursorError::Malformed),
            (enc(&long_epoch), CursorError::Malformed),
            (enc(&duplicate), CursorError::Malformed),
            // An offset of eleven continuation bytes overflows a u64.
            (
                enc(&[
                    VERSION, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0x7f, 0,
                ]),
                CursorError::Malformed,
            ),
            // Non-canonical: a trailing zero continuation.
            (
                enc(&[VERSION, 0, 0, 0, 1, 0x85, 0x00, 0]),
                CursorError::Malformed,
            ),
            // Epoch not UTF-8.
            (
                enc(&[VERSION, 0, 0, 0, 1, 5, 1, 0xff]),
                CursorError::Malformed,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Cursor::parse(&text), Err(want), "{text:?}");
        }
    }
}
