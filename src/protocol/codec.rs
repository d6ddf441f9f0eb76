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

use super::{ClientFrame, RequestId, ServerFrame};

/// The socket's wire format, chosen by subprotocol at upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `v1.json`: text frames (the default).
    Json,
    /// `v1.msgpack`: binary frames.
    MsgPack,
}

impl Format {
    /// The subprotocol name echoed to the client.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::Json => "v1.json",
            Format::MsgPack => "v1.msgpack",
        }
    }

    /// Picks the format from a `Sec-WebSocket-Protocol` offer: the first of ours
    /// in the client's order. `Ok(None)`: nothing offered (JSON, no echo).
    /// `Err(())`: protocols offered but none of ours.
    #[allow(clippy::result_unit_err)]
    pub fn negotiate(offer: Option<&str>) -> Result<Option<Format>, ()> {
        let Some(offer) = offer else { return Ok(None) };
        for proto in offer.split(',').map(str::trim) {
            match proto {
                "v1.json" => return Ok(Some(Format::Json)),
                "v1.msgpack" => return Ok(Some(Format::MsgPack)),
                _ => {}
            }
        }
        Err(())
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
        into_frame(wire.kind, wire.id, wire.room, wire.token, data)
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
        into_frame(wire.kind, wire.id, wire.room, wire.token, data)
    }
}

fn into_frame(
    kind: Option<String>,
    id: Option<RequestId>,
    room: Option<String>,
    token: Option<String>,
    data: Option<Bytes>,
) -> Result<ClientFrame, DecodeError> {
    let missing = |field: &str, id: Option<RequestId>| DecodeError {
        message: format!("missing field `{field}`"),
        id,
    };
    let Some(kind) = kind else {
        return Err(missing("type", id));
    };
    match kind.as_str() {
        "subscribe" => match room {
            Some(room) => Ok(ClientFrame::Subscribe { room, id }),
            None => Err(missing("room", id)),
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
        other => Err(DecodeError {
            message: format!(
                "unknown frame type `{}`",
                other.chars().take(32).collect::<String>()
            ),
            id,
        }),
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
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
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
        } => WireOut::Welcome {
            conn,
            user,
            node,
            heartbeat: *heartbeat,
        },
        ServerFrame::Ok { id } => WireOut::Ok { id: id.as_ref() },
        ServerFrame::Error { id, code, message } => WireOut::Error {
            id: id.as_ref(),
            code: code.code(),
            message,
        },
        ServerFrame::Pong { id } => WireOut::Pong { id: id.as_ref() },
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
    use crate::protocol::ErrorCode;

    #[test]
    fn decodes_every_client_frame_type_from_json() {
        let f = |s: &str| decode_client_frame(s.as_bytes(), false);
        assert_eq!(
            f(r#"{"type":"subscribe","room":"lobby","id":1}"#).unwrap(),
            ClientFrame::Subscribe {
                room: "lobby".into(),
                id: Some(1.into())
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
                heartbeat: 25
            }),
            r#"{"type":"welcome","conn":"c1","user":"alice","node":"n1","heartbeat":25}"#
        );
        let bin = encode_server_frame(Format::MsgPack, &ServerFrame::Ok { id: Some(1.into()) })
            .into_data();
        let v: serde_json::Value = rmp_serde::from_slice(&bin).unwrap();
        assert_eq!(v, serde_json::json!({"type":"ok","id":1}));
    }

    #[test]
    fn subprotocol_negotiation() {
        assert_eq!(Format::negotiate(None), Ok(None));
        assert_eq!(
            Format::negotiate(Some("v1.msgpack")),
            Ok(Some(Format::MsgPack))
        );
        assert_eq!(
            Format::negotiate(Some("chat, v1.json")),
            Ok(Some(Format::Json))
        );
        assert_eq!(Format::negotiate(Some("v2.json")), Err(()));
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
