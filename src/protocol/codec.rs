//! JSON and MessagePack encodings of the frames: JSON frames are WebSocket
//! text messages, MessagePack frames are binary messages holding the same map.
//!
//! Decoding is lenient about which message kind carries which encoding (a text
//! message is always parsed as JSON), strict about shape: anything that does not
//! name a known `type` with its fields is a [`DecodeError`] (`bad_frame`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;

use super::{ClientFrame, Position, PresenceInfo, RequestId, ServerFrame, Since};

/// The socket's wire format, chosen by subprotocol at upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `v1.json`: text frames (the default).
    Json,
    /// `v1.msgpack`: binary frames.
    MsgPack,
}

/// What a socket's subprotocol chose: the encoding, and whether several
/// frames may travel packed in one message (`v1.json+batch`,
/// `v1.msgpack+batch`: a contract extension, docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subprotocol {
    /// Text JSON or binary MessagePack.
    pub format: Format,
    /// Frames queued together may be written as one array message.
    pub batch: bool,
}

impl Subprotocol {
    /// Plain JSON, what a client that offers no subprotocol gets.
    pub const JSON: Subprotocol = Subprotocol {
        format: Format::Json,
        batch: false,
    };

    /// The subprotocol name echoed to the client.
    pub fn name(self) -> &'static str {
        match (self.format, self.batch) {
            (Format::Json, false) => "v1.json",
            (Format::MsgPack, false) => "v1.msgpack",
            (Format::Json, true) => "v1.json+batch",
            (Format::MsgPack, true) => "v1.msgpack+batch",
        }
    }

    /// Picks the wire from a `Sec-WebSocket-Protocol` offer: the first of ours
    /// in the client's order. `Ok(None)`: nothing offered (JSON, no echo).
    /// `Err(())`: protocols offered but none of ours.
    #[allow(clippy::result_unit_err)]
    pub fn negotiate(offer: Option<&str>) -> Result<Option<Subprotocol>, ()> {
        let Some(offer) = offer else { return Ok(None) };
        for proto in offer.split(',').map(str::trim) {
            let (format, batch) = match proto {
                "v1.json" => (Format::Json, false),
                "v1.msgpack" => (Format::MsgPack, false),
                "v1.json+batch" => (Format::Json, true),
                "v1.msgpack+batch" => (Format::MsgPack, true),
                _ => continue,
            };
            return Ok(Some(Subprotocol { format, batch }));
        }
        Err(())
    }
}

/// Packs runs of consecutive frames into batch messages for a `+batch`
/// socket: a JSON array of the frames (text) or a MessagePack array (binary),
/// in queue order. A run closes before it would pass `max_bytes`; a run of
/// one frame, and any other kind of message, is written as it came, so a
/// lone event costs no copy. The frames are already encoded once for the
/// whole room; packing copies them into this socket's message, which is
/// what the client saves in per-message overhead.
pub fn pack(
    format: Format,
    messages: impl IntoIterator<Item = Message>,
    max_bytes: usize,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut run: Vec<Message> = Vec::new();
    let mut run_bytes = 0;
    for m in messages {
        let packable = matches!(
            (format, &m),
            (Format::Json, Message::Text(_)) | (Format::MsgPack, Message::Binary(_))
        );
        if !packable {
            flush_run(format, &mut run, &mut out);
            run_bytes = 0;
            out.push(m);
            continue;
        }
        let len = m.len();
        if !run.is_empty() && run_bytes + len + 1 > max_bytes {
            flush_run(format, &mut run, &mut out);
            run_bytes = 0;
        }
        run_bytes += len + 1;
        run.push(m);
    }
    flush_run(format, &mut run, &mut out);
    out
}

fn flush_run(format: Format, run: &mut Vec<Message>, out: &mut Vec<Message>) {
    if run.len() < 2 {
        out.append(run);
        return;
    }
    let bytes: usize = run.iter().map(Message::len).sum();
    match format {
        Format::Json => {
            let mut text = String::with_capacity(bytes + run.len() + 1);
            text.push('[');
            for (i, m) in run.drain(..).enumerate() {
                if i > 0 {
                    text.push(',');
                }
                if let Message::Text(t) = m {
                    text.push_str(t.as_str());
                }
            }
            text.push(']');
            out.push(Message::text(text));
        }
        Format::MsgPack => {
            let mut bin = Vec::with_capacity(bytes + 5);
            let n = run.len();
            // MessagePack array header: fixarray, array 16 or array 32.
            if n < 16 {
                bin.push(0x90 | n as u8);
            } else if let Ok(n) = u16::try_from(n) {
                bin.push(0xdc);
                bin.extend_from_slice(&n.to_be_bytes());
            } else {
                bin.push(0xdd);
                bin.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for m in run.drain(..) {
                if let Message::Binary(b) = m {
                    bin.extend_from_slice(&b);
                }
            }
            out.push(Message::binary(bin));
        }
    }
}

/// Why an inbound message is not a valid client frame.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// Text for the `error` frame.
    pub message: String,
    /// The request id, when it could still be read, so the error can echo it.
    pub id: Option<RequestId>,
}

/// The union of every client frame's fields; `type` decides which are needed.
#[derive(Deserialize)]
struct WireIn<D> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<RequestId>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    token: Option<String>,
    data: Option<D>,
    since: Option<D>,
}

/// The fields `into_frame` needs, however they were encoded.
struct Fields {
    kind: Option<String>,
    id: Option<RequestId>,
    room: Option<String>,
    token: Option<String>,
    data: Option<Bytes>,
    since: Option<Result<Since, String>>,
}

/// Decodes one inbound WebSocket message. `binary` selects MessagePack.
pub fn decode_client_frame(payload: &[u8], binary: bool) -> Result<ClientFrame, DecodeError> {
    if binary {
        let wire: WireIn<serde_json::Value> =
            rmp_serde::from_slice(payload).map_err(|e| DecodeError {
                message: format!("malformed MessagePack frame: {e}"),
                id: None,
            })?;
        let data = wire
            .data
            .as_ref()
            .map(|v| Bytes::from(serde_json::to_vec(v).unwrap_or_default()));
        into_frame(Fields {
            since: wire.since.as_ref().map(Since::from_value),
            kind: wire.kind,
            id: wire.id,
            room: wire.room,
            token: wire.token,
            data,
        })
    } else {
        let text = std::str::from_utf8(payload).map_err(|_| DecodeError {
            message: "frame is not UTF-8".into(),
            id: None,
        })?;
        let wire: WireIn<&RawValue> = serde_json::from_str(text).map_err(|e| DecodeError {
            message: format!("malformed JSON frame: {e}"),
            id: None,
        })?;
        let data = wire
            .data
            .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()));
        let since = wire.since.map(|raw| {
            serde_json::from_str::<serde_json::Value>(raw.get())
                .map_err(|e| format!("malformed `since`: {e}"))
                .and_then(|v| Since::from_value(&v))
        });
        into_frame(Fields {
            since,
            kind: wire.kind,
            id: wire.id,
            room: wire.room,
            token: wire.token,
            data,
        })
    }
}

fn into_frame(f: Fields) -> Result<ClientFrame, DecodeError> {
    let Fields {
        kind,
        id,
        room,
        token,
        data,
        since,
    } = f;
    let missing = |field: &str, id: Option<RequestId>| DecodeError {
        message: format!("missing field `{field}`"),
        id,
    };
    let Some(kind) = kind else {
        return Err(missing("type", id));
    };
    match kind.as_str() {
        "subscribe" => match (room, since.transpose()) {
            (Some(room), Ok(since)) => Ok(ClientFrame::Subscribe { room, id, since }),
            (None, _) => Err(missing("room", id)),
            (_, Err(message)) => Err(DecodeError { message, id }),
        },
        "unsubscribe" => match room {
            Some(room) => Ok(ClientFrame::Unsubscribe { room, id }),
            None => Err(missing("room", id)),
        },
        "publish" => match (room, data) {
            (Some(room), Some(data)) => Ok(ClientFrame::Publish { room, data, id }),
            (None, _) => Err(missing("room", id)),
            (_, None) => Err(missing("data", id)),
        },
        "refresh" => match token {
            Some(token) => Ok(ClientFrame::Refresh { token, id }),
            None => Err(missing("token", id)),
        },
        "ping" => Ok(ClientFrame::Ping { id }),
        "presence" => match room {
            Some(room) => Ok(ClientFrame::Presence { room, id }),
            None => Err(missing("room", id)),
        },
        other => Err(DecodeError {
            message: format!(
                "unknown frame type `{}`",
                other.chars().take(32).collect::<String>()
            ),
            id,
        }),
    }
}

/// A position on the wire: `{"offset":12,"epoch":"x1"}`.
#[derive(Serialize)]
struct WirePosition<'a> {
    offset: u64,
    epoch: &'a str,
}

impl<'a> From<&'a Position> for WirePosition<'a> {
    fn from(p: &'a Position) -> Self {
        WirePosition {
            offset: p.offset,
            epoch: p.epoch.as_str(),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum WireOut<'a> {
    Welcome {
        conn: &'a str,
        user: &'a str,
        node: &'a str,
        heartbeat: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        position: Option<WirePosition<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        broadcast_position: Option<WirePosition<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        broadcast_recovered: Option<bool>,
    },
    Ok(WireOk<'a>),
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        code: &'a str,
        message: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Resync {
        channel: String,
        offset: u64,
        epoch: &'a str,
    },
    Join {
        channel: String,
        user: &'a str,
    },
    Leave {
        channel: String,
        user: &'a str,
    },
    Close {
        code: u16,
    },
}

/// Every `ok` reply's fields; each kind of reply fills its own.
#[derive(Serialize, Default)]
struct WireOk<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence: Option<&'a PresenceInfo>,
}

/// Encodes a reply frame for one socket (replies are per socket, so there is
/// nothing to share; events go through [`super::Event`] instead).
pub fn encode_server_frame(format: Format, frame: &ServerFrame) -> Message {
    let wire = match frame {
        ServerFrame::Welcome {
            conn,
            user,
            node,
            heartbeat,
            user_channel,
            broadcast,
        } => WireOut::Welcome {
            conn,
            user,
            node,
            heartbeat: *heartbeat,
            position: user_channel.position.as_ref().map(Into::into),
            recovered: user_channel.recovered,
            broadcast_position: broadcast.position.as_ref().map(Into::into),
            broadcast_recovered: broadcast.recovered,
        },
        ServerFrame::Ok { id } => WireOut::Ok(WireOk {
            id: id.as_ref(),
            ..WireOk::default()
        }),
        ServerFrame::Subscribed { id, resumed } => WireOut::Ok(WireOk {
            id: id.as_ref(),
            offset: resumed.position.as_ref().map(|p| p.offset),
            epoch: resumed.position.as_ref().map(|p| p.epoch.as_str()),
            recovered: resumed.recovered,
            presence: None,
        }),
        ServerFrame::Published { id, offset } => WireOut::Ok(WireOk {
            id: id.as_ref(),
            offset: *offset,
            ..WireOk::default()
        }),
        ServerFrame::Presence { id, presence } => WireOut::Ok(WireOk {
            id: id.as_ref(),
            presence: Some(presence),
            ..WireOk::default()
        }),
        ServerFrame::Error { id, code, message } => WireOut::Error {
            id: id.as_ref(),
            code: code.code(),
            message,
        },
        ServerFrame::Pong { id } => WireOut::Pong { id: id.as_ref() },
        ServerFrame::Resync {
            channel,
            offset,
            epoch,
        } => WireOut::Resync {
            channel: channel.to_string(),
            offset: *offset,
            epoch: epoch.as_str(),
        },
        ServerFrame::Join { channel, user } => WireOut::Join {
            channel: channel.to_string(),
            user,
        },
        ServerFrame::Leave { channel, user } => WireOut::Leave {
            channel: channel.to_string(),
            user,
        },
        ServerFrame::Close { code } => WireOut::Close { code: *code },
    };
    match format {
        // Serializing these plain structs cannot fail.
        Format::Json => Message::text(serde_json::to_string(&wire).unwrap_or_default()),
        Format::MsgPack => Message::binary(rmp_serde::to_vec_named(&wire).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, Resumed};

    #[test]
    fn decodes_every_client_frame_type_from_json() {
        let f = |s: &str| decode_client_frame(s.as_bytes(), false);
        assert_eq!(
            f(r#"{"type":"subscribe","room":"lobby","id":1}"#).unwrap(),
            ClientFrame::Subscribe {
                room: "lobby".into(),
                id: Some(1.into()),
                since: None
            }
        );
        assert_eq!(
            f(r#"{"type":"unsubscribe","room":"lobby"}"#).unwrap(),
            ClientFrame::Unsubscribe {
                room: "lobby".into(),
                id: None
            }
        );
        assert_eq!(
            f(r#"{"type":"publish","room":"lobby","data":{"a": [1, 2]},"id":"x"}"#).unwrap(),
            ClientFrame::Publish {
                room: "lobby".into(),
                data: Bytes::from(r#"{"a": [1, 2]}"#),
                id: Some("x".into())
            }
        );
        assert_eq!(
            f(r#"{"type":"refresh","token":"t","id":4}"#).unwrap(),
            ClientFrame::Refresh {
                token: "t".into(),
                id: Some(4.into())
            }
        );
        assert_eq!(
            f(r#"{"type":"ping","id":5}"#).unwrap(),
            ClientFrame::Ping { id: Some(5.into()) }
        );
    }

    #[test]
    fn subscribe_since_is_parsed_and_bad_values_keep_the_id() {
        let f = |s: &str| decode_client_frame(s.as_bytes(), false);
        assert_eq!(
            f(r#"{"type":"subscribe","room":"lobby","id":1,"since":{"offset":41,"epoch":"k3Jd"}}"#)
                .unwrap(),
            ClientFrame::Subscribe {
                room: "lobby".into(),
                id: Some(1.into()),
                since: Some(Since {
                    offset: 41,
                    epoch: "k3Jd".into()
                })
            }
        );
        for bad in [
            r#"{"type":"subscribe","room":"lobby","id":2,"since":{"offset":-1,"epoch":"e"}}"#,
            r#"{"type":"subscribe","room":"lobby","id":2,"since":{"offset":1.5,"epoch":"e"}}"#,
            r#"{"type":"subscribe","room":"lobby","id":2,"since":{"offset":"1","epoch":"e"}}"#,
            r#"{"type":"subscribe","room":"lobby","id":2,"since":{"offset":99999999999999999999,"epoch":"e"}}"#,
            r#"{"type":"subscribe","room":"lobby","id":2,"since":7}"#,
        ] {
            let e = f(bad).unwrap_err();
            assert_eq!(e.id, Some(2.into()), "{bad}");
            assert!(e.message.contains("since"), "{bad}: {}", e.message);
        }
        let long = format!(
            r#"{{"type":"subscribe","room":"lobby","id":3,"since":{{"offset":1,"epoch":"{}"}}}}"#,
            "e".repeat(10_000)
        );
        assert!(f(&long).unwrap_err().message.contains("longer than 64"));
    }

    #[test]
    fn bad_frames_are_errors_that_keep_the_id() {
        let e = decode_client_frame(br#"{"type":"subscribe","id":7}"#, false).unwrap_err();
        assert_eq!(e.id, Some(7.into()));
        assert!(e.message.contains("room"));
        let e = decode_client_frame(br#"{"type":"dance","id":8}"#, false).unwrap_err();
        assert!(e.message.contains("unknown frame type"));
        assert_eq!(e.id, Some(8.into()));
        assert!(decode_client_frame(b"{not json", false).is_err());
        assert!(decode_client_frame(&[0xff, 0xfe], false).is_err());
        assert!(decode_client_frame(&[0xc1], true).is_err());
        assert!(decode_client_frame(br#"[1,2]"#, false).is_err());
    }

    #[test]
    fn decodes_messagepack_frames_and_turns_data_into_json() {
        #[derive(Serialize)]
        struct P<'a> {
            r#type: &'a str,
            room: &'a str,
            data: serde_json::Value,
            id: u32,
        }
        let bin = rmp_serde::to_vec_named(&P {
            r#type: "publish",
            room: "lobby",
            data: serde_json::json!({"n": 1}),
            id: 3,
        })
        .unwrap();
        assert_eq!(
            decode_client_frame(&bin, true).unwrap(),
            ClientFrame::Publish {
                room: "lobby".into(),
                data: Bytes::from(r#"{"n":1}"#),
                id: Some(3.into())
            }
        );
    }

    #[test]
    fn golden_reply_frames() {
        let text = |f: &ServerFrame| {
            encode_server_frame(Format::Json, f)
                .into_text()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            text(&ServerFrame::Ok { id: Some(1.into()) }),
            r#"{"type":"ok","id":1}"#
        );
        assert_eq!(text(&ServerFrame::Pong { id: None }), r#"{"type":"pong"}"#);
        assert_eq!(
            text(&ServerFrame::Error {
                id: Some(1.into()),
                code: ErrorCode::Forbidden,
                message: "no".into()
            }),
            r#"{"type":"error","id":1,"code":"forbidden","message":"no"}"#
        );
        assert_eq!(
            text(&ServerFrame::Welcome {
                conn: "c1".into(),
                user: "alice".into(),
                node: "n1".into(),
                heartbeat: 25,
                user_channel: Resumed {
                    position: None,
                    recovered: None
                },
                broadcast: Resumed {
                    position: None,
                    recovered: None
                },
            }),
            r#"{"type":"welcome","conn":"c1","user":"alice","node":"n1","heartbeat":25}"#
        );
        let pos = |offset, epoch: &str| Position {
            offset,
            epoch: crate::protocol::Epoch::new(epoch),
        };
        assert_eq!(
            text(&ServerFrame::Welcome {
                conn: "c1".into(),
                user: "alice".into(),
                node: "n1".into(),
                heartbeat: 25,
                user_channel: Resumed {
                    position: Some(pos(12, "x1")),
                    recovered: Some(true)
                },
                broadcast: Resumed {
                    position: Some(pos(3, "b7")),
                    recovered: Some(false)
                },
            }),
            r#"{"type":"welcome","conn":"c1","user":"alice","node":"n1","heartbeat":25,"position":{"offset":12,"epoch":"x1"},"recovered":true,"broadcast_position":{"offset":3,"epoch":"b7"},"broadcast_recovered":false}"#
        );
        assert_eq!(
            text(&ServerFrame::Subscribed {
                id: Some(1.into()),
                resumed: Resumed {
                    position: Some(pos(57, "k3Jd")),
                    recovered: Some(true)
                }
            }),
            r#"{"type":"ok","id":1,"offset":57,"epoch":"k3Jd","recovered":true}"#
        );
        assert_eq!(
            text(&ServerFrame::Published {
                id: Some(3.into()),
                offset: Some(58)
            }),
            r#"{"type":"ok","id":3,"offset":58}"#
        );
        assert_eq!(
            text(&ServerFrame::Resync {
                channel: crate::protocol::Channel::parse("room:lobby").unwrap(),
                offset: 41,
                epoch: crate::protocol::Epoch::new("E")
            }),
            r#"{"type":"resync","channel":"room:lobby","offset":41,"epoch":"E"}"#
        );
        assert_eq!(
            text(&ServerFrame::Presence {
                id: Some(7.into()),
                presence: PresenceInfo {
                    users: 2,
                    clients: 3,
                    members: vec!["alice".into(), "bob".into()],
                    truncated: false
                }
            }),
            r#"{"type":"ok","id":7,"presence":{"users":2,"clients":3,"members":["alice","bob"],"truncated":false}}"#
        );
        let bin = encode_server_frame(Format::MsgPack, &ServerFrame::Ok { id: Some(1.into()) })
            .into_data();
        let v: serde_json::Value = rmp_serde::from_slice(&bin).unwrap();
        assert_eq!(v, serde_json::json!({"type":"ok","id":1}));
    }

    #[test]
    fn subprotocol_negotiation() {
        assert_eq!(Subprotocol::negotiate(None), Ok(None));
        let wire = |format, batch| Ok(Some(Subprotocol { format, batch }));
        assert_eq!(
            Subprotocol::negotiate(Some("v1.msgpack")),
            wire(Format::MsgPack, false)
        );
        assert_eq!(
            Subprotocol::negotiate(Some("chat, v1.json")),
            wire(Format::Json, false)
        );
        assert_eq!(
            Subprotocol::negotiate(Some("v1.json+batch, v1.json")),
            wire(Format::Json, true)
        );
        let w = Subprotocol::negotiate(Some("x, v1.msgpack+batch"))
            .unwrap()
            .unwrap();
        assert_eq!(
            w,
            Subprotocol {
                format: Format::MsgPack,
                batch: true
            }
        );
        assert_eq!(w.name(), "v1.msgpack+batch");
        assert_eq!(Subprotocol::negotiate(Some("v2.json")), Err(()));
        assert_eq!(Subprotocol::negotiate(Some("v1.json+gzip")), Err(()));
    }

    fn event(i: u64, format: Format) -> Message {
        use crate::protocol::{Channel, Event, Publication, RoomName};
        let room = RoomName::parse(&format!("r{i}")).unwrap();
        let mut p = Publication::new(Channel::Room(room), Bytes::from(format!("{{\"n\":{i}}}")));
        p.offset = Some(i);
        Event::new(p, 1 << 20).unwrap().message(format).clone()
    }

    #[test]
    fn a_json_batch_is_an_array_of_the_same_frames_in_order() {
        let frames: Vec<Message> = (1..=3).map(|i| event(i, Format::Json)).collect();
        let alone: Vec<serde_json::Value> = frames
            .iter()
            .map(|m| serde_json::from_str(m.to_text().unwrap()).unwrap())
            .collect();
        let packed = pack(Format::Json, frames, 64 * 1024);
        assert_eq!(packed.len(), 1);
        let array: Vec<serde_json::Value> =
            serde_json::from_str(packed[0].to_text().unwrap()).unwrap();
        assert_eq!(array, alone);
    }

    #[test]
    fn a_msgpack_batch_is_an_array_of_the_same_maps_in_order() {
        for n in [2u64, 15, 16, 300] {
            let frames: Vec<Message> = (1..=n).map(|i| event(i, Format::MsgPack)).collect();
            let alone: Vec<serde_json::Value> = frames
                .iter()
                .map(|m| rmp_serde::from_slice(&m.clone().into_data()).unwrap())
                .collect();
            let packed = pack(Format::MsgPack, frames, 1 << 20);
            assert_eq!(packed.len(), 1, "{n} frames");
            let array: Vec<serde_json::Value> =
                rmp_serde::from_slice(&packed[0].clone().into_data()).unwrap();
            assert_eq!(array, alone, "{n} frames");
        }
    }

    #[test]
    fn packing_keeps_order_bounds_size_and_leaves_lone_frames_alone() {
        let one = event(1, Format::Json);
        let size = one.len();
        // A lone frame is not wrapped.
        assert_eq!(pack(Format::Json, [one.clone()], 1024), vec![one.clone()]);
        // A close (or anything not a frame of this format) splits the runs.
        let close = Message::Close(None);
        let msgs = vec![
            event(1, Format::Json),
            event(2, Format::Json),
            close.clone(),
            event(3, Format::Json),
        ];
        let packed = pack(Format::Json, msgs, 1024);
        assert_eq!(packed.len(), 3);
        assert!(packed[0].to_text().unwrap().starts_with('['));
        assert_eq!(packed[1], close);
        assert_eq!(packed[2], event(3, Format::Json));
        // Runs close before passing the bound: 10 frames, room for 3 each.
        let packed = pack(
            Format::Json,
            (1..=10).map(|i| event(i, Format::Json)),
            3 * (size + 1) + 1,
        );
        assert_eq!(packed.len(), 4);
        let offsets: Vec<u64> = packed
            .iter()
            .flat_map(|m| {
                let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                match v {
                    serde_json::Value::Array(a) => a,
                    one => vec![one],
                }
            })
            .map(|f| f["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder() {
        // A xorshift stream of inputs: random bytes, and mutations of valid frames.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: [&[u8]; 3] = [
            br#"{"type":"publish","room":"lobby","data":{"a":[1,2,{"b":null}]},"id":3}"#,
            br#"{"type":"subscribe","room":"lobby","id":"x"}"#,
            &[
                0x83, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i', b'd',
                0x01, 0xc0, 0xc0,
            ],
        ];
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 2 == 0 {
                (0..(next() % 64)).map(|_| next() as u8).collect()
            } else {
                seeds[(next() % 3) as usize].to_vec()
            };
            for _ in 0..(next() % 4) {
                if !input.is_empty() {
                    let at = (next() as usize) % input.len();
                    input[at] = next() as u8;
                }
            }
            let _ = decode_client_frame(&input, round % 3 == 0);
        }
    }
}
