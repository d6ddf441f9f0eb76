//! The client's view of the wire contract (v2, section 2 frames and section 6
//! continuity): frames a socket sends and reads (JSON text or MessagePack
//! binary) and the event payload the publisher stamps. Reading is the hot
//! path, so frames are read borrowed and padding is skipped, never copied.
//! Every v2 field is optional, so a v1 server's frames read the same as before.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::scenario::Codec;

/// What the publisher puts in every event's `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Payload {
    /// Send time, microseconds since the Unix epoch.
    pub ts: u64,
    /// Per-channel sequence number, from 1.
    pub seq: u64,
    /// Publisher id (a run has one publisher per connection lane).
    #[serde(rename = "pub")]
    pub publisher: u32,
    /// Rate step the event was sent in (0 for a constant rate).
    pub step: u32,
}

impl Payload {
    /// The payload as JSON text, with `pad` bytes of padding in field `pad`.
    pub fn to_json(&self, pad: usize) -> String {
        let mut s = format!(
            r#"{{"ts":{},"seq":{},"pub":{},"step":{}"#,
            self.ts, self.seq, self.publisher, self.step
        );
        if pad > 0 {
            s.push_str(r#","pad":""#);
            s.extend(std::iter::repeat_n('x', pad));
            s.push('"');
        }
        s.push('}');
        s
    }
}

/// An event's `data`: ours, or something another publisher sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventData {
    /// A payload with at least `ts` and `seq`.
    Ours(Payload),
    /// Anything else (counted, not measured).
    Foreign,
}

impl<'de> Deserialize<'de> for EventData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = EventData;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event payload")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventData, A::Error> {
        let (mut ts, mut seq, mut publisher, mut step) = (None, None, 0u64, 0u64);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "ts" => ts = map.next_value::<MaybeU64>()?.0,
                "seq" => seq = map.next_value::<MaybeU64>()?.0,
                "pub" => publisher = map.next_value::<MaybeU64>()?.0.unwrap_or(0),
                "step" => step = map.next_value::<MaybeU64>()?.0.unwrap_or(0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (ts, seq) {
            (Some(ts), Some(seq)) => Ok(EventData::Ours(Payload {
                ts,
                seq,
                publisher: publisher as u32,
                step: step as u32,
            })),
            _ => Ok(EventData::Foreign),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventData, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(EventData::Foreign)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<EventData, E> {
        Ok(EventData::Foreign)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<EventData, E> {
        Ok(EventData::Foreign)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<EventData, E> {
        Ok(EventData::Foreign)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<EventData, E> {
        Ok(EventData::Foreign)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<EventData, E> {
        Ok(EventData::Foreign)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<EventData, E> {
        Ok(EventData::Foreign)
    }
    fn visit_unit<E: de::Error>(self) -> Result<EventData, E> {
        Ok(EventData::Foreign)
    }
    fn visit_none<E: de::Error>(self) -> Result<EventData, E> {
        Ok(EventData::Foreign)
    }
}

/// A value that is an unsigned integer or anything else (`None`), read
/// without failing so a foreign payload never breaks the frame around it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaybeU64(pub Option<u64>);

impl<'de> Deserialize<'de> for MaybeU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MaybeU64Visitor)
    }
}

struct MaybeU64Visitor;

impl<'de> Visitor<'de> for MaybeU64Visitor {
    type Value = MaybeU64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MaybeU64, E> {
        Ok(MaybeU64(Some(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MaybeU64, E> {
        Ok(MaybeU64(u64::try_from(v).ok()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<MaybeU64, E> {
        Ok(MaybeU64(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<MaybeU64, E> {
        Ok(MaybeU64(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<MaybeU64, E> {
        Ok(MaybeU64(None))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<MaybeU64, E> {
        Ok(MaybeU64(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<MaybeU64, E> {
        Ok(MaybeU64(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<MaybeU64, E> {
        Ok(MaybeU64(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeU64, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MaybeU64(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeU64, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(MaybeU64(None))
    }
}

/// A channel's history epoch: an opaque string (section 6). A number is
/// accepted too and kept as its decimal text, so a server that chose
/// numeric epochs still compares correctly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epoch(pub Option<String>);

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EpochVisitor)
    }
}

struct EpochVisitor;

impl<'de> Visitor<'de> for EpochVisitor {
    type Value = Epoch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an epoch (string)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Epoch, E> {
        Ok(Epoch(Some(v.to_owned())))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Epoch, E> {
        Ok(Epoch(Some(String::from_utf8_lossy(v).into_owned())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Epoch, E> {
        Ok(Epoch(Some(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Epoch, E> {
        Ok(Epoch(Some(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Epoch, E> {
        Ok(Epoch(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Epoch, E> {
        Ok(Epoch(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Epoch, E> {
        Ok(Epoch(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Epoch, E> {
        Ok(Epoch(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Epoch, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Epoch(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Epoch, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Epoch(None))
    }
}

/// A channel position, as in `welcome.position`: `{"offset":12,"epoch":"x1"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Position {
    /// Top offset of the channel.
    #[serde(default)]
    pub offset: MaybeU64,
    /// Its epoch.
    #[serde(default)]
    pub epoch: Epoch,
}

/// A frame from the gateway, read borrowed where the codec allows.
#[derive(Debug, Deserialize)]
pub struct ServerFrame<'a> {
    /// `welcome`, `ok`, `error`, `pong`, `event`, ...
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Echo of the request id.
    #[serde(default)]
    pub id: Option<u64>,
    /// Channel of an event.
    #[serde(default, borrow)]
    pub channel: Option<Cow<'a, str>>,
    /// Payload of an event.
    #[serde(default)]
    pub data: Option<EventData>,
    /// Error code of an `error` frame.
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    /// Heartbeat seconds of `welcome`.
    #[serde(default)]
    pub heartbeat: Option<u64>,
    /// Offset of an `event`, position of an `ok` to `subscribe`, or the last
    /// lost offset of a `resync` (section 6; absent on channels without history).
    #[serde(default)]
    pub offset: MaybeU64,
    /// Epoch of an `ok` or a `resync`.
    #[serde(default)]
    pub epoch: Epoch,
    /// `ok` to a subscribe with `since`, and `welcome` after a resume (user channel).
    #[serde(default)]
    pub recovered: Option<bool>,
    /// `welcome` after a resume: the broadcast channel's outcome.
    #[serde(default)]
    pub broadcast_recovered: Option<bool>,
    /// `welcome`: the user channel's position.
    #[serde(default)]
    pub position: Option<Position>,
    /// `welcome`: the broadcast channel's position.
    #[serde(default)]
    pub broadcast_position: Option<Position>,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub struct BadFrame(pub String);

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unreadable frame: {}", self.0)
    }
}

impl std::error::Error for BadFrame {}

/// Reads a JSON text frame.
pub fn parse_json(text: &str) -> Result<ServerFrame<'_>, BadFrame> {
    serde_json::from_str(text).map_err(|e| BadFrame(e.to_string()))
}

/// Reads a MessagePack binary frame.
pub fn parse_msgpack(bytes: &[u8]) -> Result<ServerFrame<'_>, BadFrame> {
    rmp_serde::from_slice(bytes).map_err(|e| BadFrame(e.to_string()))
}

/// Reads a `+batch` text message: an array of frames, or one frame.
pub fn parse_json_batch(text: &str) -> Result<Vec<ServerFrame<'_>>, BadFrame> {
    if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(|e| BadFrame(e.to_string()))
    } else {
        parse_json(text).map(|f| vec![f])
    }
}

/// Reads a `+batch` binary message: a MessagePack array of frames, or one.
pub fn parse_msgpack_batch(bytes: &[u8]) -> Result<Vec<ServerFrame<'_>>, BadFrame> {
    match bytes.first() {
        Some(0x90..=0x9f | 0xdc | 0xdd) => {
            rmp_serde::from_slice(bytes).map_err(|e| BadFrame(e.to_string()))
        }
        _ => parse_msgpack(bytes).map(|f| vec![f]),
    }
}

#[derive(Serialize)]
struct Subscribe<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<Since<'a>>,
}

#[derive(Serialize)]
struct Since<'a> {
    offset: u64,
    epoch: &'a str,
}

/// An encoded client frame: text for JSON, bytes for MessagePack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// Encodes `{"type":"subscribe","room":..,"id":..}` in the socket's codec,
/// with `"since":{"offset":..,"epoch":..}` when resuming.
pub fn subscribe(codec: Codec, room: &str, id: u64, since: Option<(u64, &str)>) -> Outgoing {
    let frame = Subscribe {
        kind: "subscribe",
        room,
        id,
        since: since.map(|(offset, epoch)| Since { offset, epoch }),
    };
    match codec {
        Codec::Json | Codec::JsonBatch => {
            Outgoing::Text(serde_json::to_string(&frame).unwrap_or_default())
        }
        Codec::Msgpack | Codec::MsgpackBatch => {
            Outgoing::Binary(rmp_serde::to_vec_named(&frame).unwrap_or_default())
        }
    }
}

/// Percent-encodes a query parameter value (everything but RFC 3986
/// unreserved characters).
pub fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The resume query of section 6: `user_offset`/`user_epoch` and
/// `broadcast_offset`/`broadcast_epoch` for the channels that have a
/// position (empty when neither has).
pub fn resume_query(user: Option<(u64, &str)>, broadcast: Option<(u64, &str)>) -> String {
    let mut parts = Vec::new();
    if let Some((o, e)) = user {
        parts.push(format!("user_offset={o}&user_epoch={}", query_escape(e)));
    }
    if let Some((o, e)) = broadcast {
        parts.push(format!(
            "broadcast_offset={o}&broadcast_epoch={}",
            query_escape(e)
        ));
    }
    parts.join("&")
}

/// The subprotocol name offered for a codec.
pub fn subprotocol(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "v1.json",
        Codec::Msgpack => "v1.msgpack",
        Codec::JsonBatch => "v1.json+batch",
        Codec::MsgpackBatch => "v1.msgpack+batch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_welcome_and_errors() {
        let p = Payload {
            ts: 5,
            seq: 7,
            publisher: 1,
            step: 2,
        };
        let text = format!(
            r#"{{"type":"event","channel":"room:r1","data":{}}}"#,
            p.to_json(16)
        );
        let f = parse_json(&text).unwrap();
        assert_eq!(f.kind, "event");
        assert_eq!(f.channel.as_deref(), Some("room:r1"));
        assert_eq!(f.data, Some(EventData::Ours(p)));

        let w = parse_json(r#"{"type":"welcome","conn":"c","user":"u","node":"n","heartbeat":25}"#)
            .unwrap();
        assert_eq!((w.kind.as_ref(), w.heartbeat), ("welcome", Some(25)));
        let e = parse_json(r#"{"type":"error","id":1,"code":"forbidden","message":"no"}"#).unwrap();
        assert_eq!((e.id, e.code.as_deref()), (Some(1), Some("forbidden")));
    }

    #[test]
    fn foreign_payloads_are_not_errors() {
        for data in [
            r#""hello""#,
            "42",
            "[1,2]",
            r#"{"ts":"x","seq":1}"#,
            r#"{"other":true}"#,
        ] {
            let text = format!(r#"{{"type":"event","channel":"broadcast","data":{data}}}"#);
            let f = parse_json(&text).unwrap();
            assert_eq!(f.data, Some(EventData::Foreign), "{data}");
        }
        // `null` reads as no payload, which the socket also counts as foreign.
        let f = parse_json(r#"{"type":"event","channel":"broadcast","data":null}"#).unwrap();
        assert_eq!(f.data, None);
    }

    #[test]
    fn msgpack_frames_round_trip() {
        #[derive(Serialize)]
        struct Ev<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            channel: &'a str,
            data: Payload,
        }
        let p = Payload {
            ts: 1,
            seq: 2,
            publisher: 0,
            step: 0,
        };
        let bytes = rmp_serde::to_vec_named(&Ev {
            kind: "event",
            channel: "user:u1",
            data: p,
        })
        .unwrap();
        let f = parse_msgpack(&bytes).unwrap();
        assert_eq!(f.channel.as_deref(), Some("user:u1"));
        assert_eq!(f.data, Some(EventData::Ours(p)));
        let Outgoing::Binary(sub) = subscribe(Codec::Msgpack, "lt-1", 3, None) else {
            panic!("binary expected")
        };
        let v: serde_json::Value = rmp_serde::from_slice(&sub).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"subscribe","room":"lt-1","id":3})
        );
        assert_eq!(
            subscribe(Codec::Json, "lt-1", 3, None),
            Outgoing::Text(r#"{"type":"subscribe","room":"lt-1","id":3}"#.into())
        );
    }

    #[test]
    fn reads_v2_offsets_positions_and_resyncs() {
        let e = parse_json(
            r#"{"type":"event","channel":"room:lobby","offset":42,"data":{"ts":1,"seq":2}}"#,
        )
        .unwrap();
        assert_eq!(e.offset, MaybeU64(Some(42)));
        let ok = parse_json(r#"{"type":"ok","id":1,"offset":57,"epoch":"k3Jd","recovered":true}"#)
            .unwrap();
        assert_eq!(
            (ok.offset.0, ok.epoch.0.as_deref(), ok.recovered),
            (Some(57), Some("k3Jd"), Some(true))
        );
        let r =
            parse_json(r#"{"type":"resync","channel":"room:lobby","offset":9,"epoch":7}"#).unwrap();
        assert_eq!((r.kind.as_ref(), r.offset.0), ("resync", Some(9)));
        assert_eq!(
            r.epoch.0.as_deref(),
            Some("7"),
            "numeric epochs are kept as text"
        );
        let w = parse_json(
            r#"{"type":"welcome","conn":"c","user":"u","node":"n","heartbeat":25,"recovered":false,
               "broadcast_recovered":true,"position":{"offset":12,"epoch":"x1"},
               "broadcast_position":{"offset":3,"epoch":"b7"}}"#,
        )
        .unwrap();
        assert_eq!(
            (w.recovered, w.broadcast_recovered),
            (Some(false), Some(true))
        );
        let p = w.position.unwrap();
        assert_eq!((p.offset.0, p.epoch.0.as_deref()), (Some(12), Some("x1")));
        assert_eq!(w.broadcast_position.unwrap().offset.0, Some(3));
        // v1 frames: no offsets, nothing breaks.
        let v1 = parse_json(r#"{"type":"ok","id":1}"#).unwrap();
        assert_eq!(
            (v1.offset.0, v1.epoch.0.clone(), v1.recovered),
            (None, None, None)
        );
    }

    #[test]
    fn subscribe_with_since_and_the_resume_query() {
        assert_eq!(
            subscribe(Codec::Json, "lobby", 1, Some((41, "k3Jd"))),
            Outgoing::Text(
                r#"{"type":"subscribe","room":"lobby","id":1,"since":{"offset":41,"epoch":"k3Jd"}}"#
                    .into()
            )
        );
        let Outgoing::Binary(b) = subscribe(Codec::Msgpack, "lobby", 1, Some((0, "e"))) else {
            panic!("binary expected")
        };
        let v: serde_json::Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(v["since"], serde_json::json!({"offset":0,"epoch":"e"}));
        assert_eq!(
            resume_query(Some((9, "x1")), Some((3, "b/7 +"))),
            "user_offset=9&user_epoch=x1&broadcast_offset=3&broadcast_epoch=b%2F7%20%2B"
        );
        assert_eq!(
            resume_query(None, Some((3, "b"))),
            "broadcast_offset=3&broadcast_epoch=b"
        );
        assert_eq!(resume_query(None, None), "");
    }
}
