//! Encode once: a publication is serialized at most once per wire format, and
//! every subscriber gets a clone of the same immutable bytes.
//!
//! Backend payloads that are valid JSON are spliced into the JSON event frame
//! verbatim (validated without building a tree); anything else becomes a JSON
//! string, and so does JSON nested deeper than [`super::payload::MAX_DEPTH`],
//! so that every format receives the same data. A payload too large for a
//! socket's queue in either encoding is refused here (the caller counts and
//! drops it) rather than evicting every subscriber with 4008. MessagePack
//! sockets get one conversion per publication, not per socket.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::payload::{PayloadError, inspect};
use super::{Channel, Format};

/// A message as the node received it from the broker.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Where it goes.
    pub channel: Channel,
    /// The backend's payload bytes (JSON expected, anything tolerated).
    pub payload: Bytes,
    /// When this node received it: the start of the fan-out latency clock.
    pub received_at: Instant,
    /// Its offset, on a channel with history.
    pub offset: Option<u64>,
    /// The epoch of `offset` as the broker sent it (empty without one);
    /// bytes, so the inbound path compares it instead of allocating.
    pub epoch: Bytes,
}

impl Publication {
    /// A publication without an offset, received now.
    pub fn new(channel: Channel, payload: Bytes) -> Publication {
        Publication {
            channel,
            payload,
            received_at: Instant::now(),
            offset: None,
            epoch: Bytes::new(),
        }
    }
}

/// A publication ready for fan-out, with lazily built per-format frames.
#[derive(Debug)]
pub struct Event {
    channel: Channel,
    /// Always valid JSON text.
    data: Bytes,
    received_at: Instant,
    offset: Option<u64>,
    json: OnceLock<Message>,
    msgpack: OnceLock<Message>,
}

impl Event {
    /// Validates the payload once: non-JSON (and too deeply nested) payloads
    /// become a JSON string; a payload whose JSON or MessagePack encoding
    /// exceeds `limit` bytes is refused.
    pub fn new(publication: Publication, limit: usize) -> Result<Event, PayloadError> {
        let Publication {
            channel,
            payload,
            received_at,
            offset,
            ..
        } = publication;
        let data = match inspect(&payload, limit) {
            Ok(_) => payload,
            Err(PayloadError::NotJson | PayloadError::TooDeep) => {
                let text = String::from_utf8_lossy(&payload);
                let string = Bytes::from(serde_json::to_vec(&text).unwrap_or_default());
                // A string's MessagePack form is never larger than its JSON form.
                if string.len() > limit {
                    return Err(PayloadError::TooLarge {
                        json: string.len(),
                        msgpack: string.len(),
                    });
                }
                string
            }
            Err(e @ PayloadError::TooLarge { .. }) => return Err(e),
        };
        Ok(Event {
            channel,
            data,
            received_at,
            offset,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        })
    }

    /// The channel this event is for.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// When the node received the publication.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// Its offset, on a channel with history.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The data as JSON text (for history replies).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The `event` frame in `format`, built on first use; clones are cheap
    /// (a reference-count increment on the shared bytes).
    pub fn message(&self, format: Format) -> &Message {
        match format {
            Format::Json => self.json.get_or_init(|| self.encode_json()),
            Format::MsgPack => self.msgpack.get_or_init(|| self.encode_msgpack()),
        }
    }

    fn encode_json(&self) -> Message {
        let channel = serde_json::to_vec(&self.channel.to_string()).unwrap_or_default();
        let mut buf = BytesMut::with_capacity(64 + channel.len() + self.data.len());
        buf.put_slice(br#"{"type":"event","channel":"#);
        buf.put_slice(&channel);
        if let Some(offset) = self.offset {
            buf.put_slice(br#","offset":"#);
            buf.put_slice(offset.to_string().as_bytes());
        }
        buf.put_slice(br#","data":"#);
        buf.put_slice(&self.data);
        buf.put_u8(b'}');
        // Every part is UTF-8: `data` was checked in `new`, the rest is ours.
        match Utf8Bytes::try_from(buf.freeze()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::text(r#"{"type":"event","channel":"","data":null}"#),
        }
    }

    fn encode_msgpack(&self) -> Message {
        #[derive(Serialize)]
        struct Wire<'a> {
            r#type: &'static str,
            channel: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            offset: Option<u64>,
            data: &'a serde_json::Value,
        }
        let value: serde_json::Value = serde_json::from_slice(&self.data).unwrap_or_default();
        let wire = Wire {
            r#type: "event",
            channel: self.channel.to_string(),
            offset: self.offset,
            data: &value,
        };
        Message::Binary(Bytes::from(
            rmp_serde::to_vec_named(&wire).unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomName;

    fn event(payload: &'static [u8]) -> Event {
        Event::new(
            Publication::new(
                Channel::Room(RoomName::parse("lobby").unwrap()),
                Bytes::from_static(payload),
            ),
            1 << 20,
        )
        .unwrap()
    }

    #[test]
    fn json_payload_is_spliced_verbatim() {
        let e = event(br#"{"a":1}"#);
        assert_eq!(
            e.message(Format::Json).to_text().unwrap(),
            r#"{"type":"event","channel":"room:lobby","data":{"a":1}}"#
        );
    }

    #[test]
    fn non_json_payload_becomes_a_string() {
        let e = event(b"hello \"world\"");
        assert_eq!(
            e.message(Format::Json).to_text().unwrap(),
            r#"{"type":"event","channel":"room:lobby","data":"hello \"world\""}"#
        );
        let bad_utf8 = event(b"\"\xff\"");
        let v: serde_json::Value =
            serde_json::from_str(bad_utf8.message(Format::Json).to_text().unwrap()).unwrap();
        assert!(v["data"].is_string());
    }

    #[test]
    fn user_channel_names_are_escaped() {
        let e = Event::new(
            Publication::new(Channel::User("a\"b".into()), Bytes::from_static(b"1")),
            1 << 20,
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(e.message(Format::Json).to_text().unwrap()).unwrap();
        assert_eq!(v["channel"], "user:a\"b");
    }

    #[test]
    fn msgpack_holds_the_same_map() {
        let e = event(br#"{"a":[1,"x"]}"#);
        let v: serde_json::Value =
            rmp_serde::from_slice(&e.message(Format::MsgPack).clone().into_data()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"event","channel":"room:lobby","data":{"a":[1,"x"]}})
        );
    }

    #[test]
    fn deep_json_reaches_every_format_as_the_same_string() {
        let deep: &'static str =
            Box::leak(format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)).into_boxed_str());
        let e = event(deep.as_bytes());
        let json: serde_json::Value =
            serde_json::from_str(e.message(Format::Json).to_text().unwrap()).unwrap();
        let msgpack: serde_json::Value =
            rmp_serde::from_slice(&e.message(Format::MsgPack).clone().into_data()).unwrap();
        assert_eq!(json["data"], serde_json::Value::String(deep.into()));
        assert_eq!(json, msgpack, "never different data to different formats");
    }

    #[test]
    fn a_payload_too_large_in_one_encoding_is_refused() {
        let nulls = format!("[{}]", vec!["null"; 1000].join(","));
        let r = Event::new(
            Publication::new(Channel::Broadcast, Bytes::from(nulls)),
            2000,
        );
        assert!(matches!(r, Err(PayloadError::TooLarge { .. })));
    }

    #[test]
    fn an_offset_is_carried_in_both_formats() {
        let mut p = Publication::new(
            Channel::Room(RoomName::parse("lobby").unwrap()),
            Bytes::from_static(br#"{"a":1}"#),
        );
        p.offset = Some(42);
        let e = Event::new(p, 1 << 20).unwrap();
        assert_eq!(
            e.message(Format::Json).to_text().unwrap(),
            r#"{"type":"event","channel":"room:lobby","offset":42,"data":{"a":1}}"#
        );
        let v: serde_json::Value =
            rmp_serde::from_slice(&e.message(Format::MsgPack).clone().into_data()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"event","channel":"room:lobby","offset":42,"data":{"a":1}})
        );
    }

    #[test]
    fn each_format_is_encoded_once_and_shared() {
        let e = event(br#"{"a":1}"#);
        let (Message::Text(a), Message::Text(b)) = (
            e.message(Format::Json).clone(),
            e.message(Format::Json).clone(),
        ) else {
            panic!("text expected")
        };
        assert_eq!(
            a.as_str().as_ptr(),
            b.as_str().as_ptr(),
            "clones share one buffer"
        );
    }
}
