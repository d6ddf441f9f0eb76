//! Continuity from the client's side, for tests: what a resuming client
//! remembers of each channel (its last offset and epoch) and every offset
//! it received, so a test asserts "every offset exactly once, in order"
//! across reconnects, resyncs and nodes. It reads the contract's frames
//! only; nothing here knows how the gateway works inside.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::client::Client;
use super::test_gateway::{API_KEY, TestGateway};

/// One channel as a client saw it.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// The epoch the offsets belong to.
    pub epoch: Option<String>,
    /// The last offset received (or announced by `ok` / `welcome` / `resync`).
    pub offset: u64,
    /// Every event offset received, in arrival order.
    pub received: Vec<u64>,
    /// `resync` frames received: (offset, epoch).
    pub resyncs: Vec<(u64, String)>,
    /// Events and resyncs in arrival order: (`'e'` or `'r'`, offset).
    pub timeline: Vec<(char, u64)>,
}

impl Stream {
    /// `since` for a resume, once a position is known.
    pub fn since(&self) -> Option<Value> {
        self.epoch
            .as_ref()
            .map(|e| json!({"offset": self.offset, "epoch": e}))
    }

    /// Asserts every offset of `range` arrived exactly once, in order.
    pub fn assert_exactly(&self, range: std::ops::RangeInclusive<u64>, what: &str) {
        let expected: Vec<u64> = range.collect();
        assert_eq!(
            self.received, expected,
            "{what}: every offset once, in order"
        );
    }

    /// Asserts the contract's promise over the whole stream: each event is
    /// the one right after the last position (an event, or a `resync`,
    /// which says everything up to its offset is lost). Returns how many
    /// offsets were announced lost by resyncs.
    pub fn assert_consistent(&self, first: u64, what: &str) -> u64 {
        let mut at = first.saturating_sub(1);
        let mut announced = 0;
        for (kind, offset) in &self.timeline {
            if *kind == 'e' {
                assert_eq!(
                    *offset,
                    at + 1,
                    "{what}: event {offset} after position {at} ({:?})",
                    self.timeline
                );
            } else {
                announced += offset.saturating_sub(at);
            }
            at = *offset;
        }
        announced
    }
}

/// What a client saw of every channel.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// By channel name (`room:lobby`, `user:alice`, `broadcast`).
    pub channels: BTreeMap<String, Stream>,
}

impl Seen {
    /// The stream of `channel`.
    pub fn of(&self, channel: &str) -> Stream {
        self.channels.get(channel).cloned().unwrap_or_default()
    }

    fn position(&mut self, channel: &str, position: &Value, recovered: &Value) {
        if let (Some(offset), Some(epoch)) =
            (position["offset"].as_u64(), position["epoch"].as_str())
        {
            let s = self.channels.entry(channel.to_owned()).or_default();
            // After `recovered: true` the replay moves the offset itself;
            // otherwise the reported position is where the client stands.
            if recovered.as_bool() != Some(true) {
                s.offset = offset;
            }
            s.epoch = Some(epoch.to_owned());
        }
    }

    /// Records a `welcome` (positions of the user channel and broadcast).
    pub fn welcome(&mut self, welcome: &Value, user: &str) {
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        self.position(
            &format!("user:{user}"),
            &welcome["position"],
            &welcome["recovered"],
        );
        self.position(
            "broadcast",
            &welcome["broadcast_position"],
            &welcome["broadcast_recovered"],
        );
    }

    /// Records a subscribe's `ok` for `room`.
    pub fn subscribed(&mut self, room: &str, ok: &Value) {
        assert_eq!(ok["type"], "ok", "{ok}");
        self.position(&format!("room:{room}"), ok, &ok["recovered"]);
    }

    /// Records an event or a resync; returns the event's data, if it was one.
    pub fn record(&mut self, frame: &Value) -> Option<Value> {
        let channel = frame["channel"].as_str()?.to_owned();
        let s = self.channels.entry(channel).or_default();
        match frame["type"].as_str() {
            Some("event") => {
                let offset = frame["offset"]
                    .as_u64()
                    .expect("events of history channels carry offsets");
                s.received.push(offset);
                s.timeline.push(('e', offset));
                s.offset = offset;
                Some(frame["data"].clone())
            }
            Some("resync") => {
                let (offset, epoch) = (
                    frame["offset"].as_u64().unwrap(),
                    frame["epoch"].as_str().unwrap().to_owned(),
                );
                s.resyncs.push((offset, epoch.clone()));
                s.timeline.push(('r', offset));
                s.offset = offset;
                s.epoch = Some(epoch);
                None
            }
            _ => None,
        }
    }

    /// The resume query of a reconnect (`user_offset` ... `broadcast_epoch`).
    pub fn resume_query(&self, user: &str) -> String {
        let mut q = String::new();
        for (name, channel) in [
            ("user", format!("user:{user}")),
            ("broadcast", "broadcast".into()),
        ] {
            if let Some(s) = self.channels.get(&channel)
                && let Some(e) = &s.epoch
            {
                q.push_str(&format!("&{name}_offset={}&{name}_epoch={e}", s.offset));
            }
        }
        q
    }
}

/// Connects to `gw` resuming what `seen` remembers of the user channel and
/// broadcast; returns the client and its `welcome`.
pub async fn reconnect(gw: &TestGateway, token: &str, user: &str, seen: &Seen) -> (Client, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{}", gw.ws_url(token), seen.resume_query(user));
    let mut c = gw
        .try_connect(url.into_client_request().unwrap())
        .await
        .expect("upgrade accepted");
    let welcome = c.recv().await;
    (c, welcome)
}

/// `POST /api/publish`; the offset history gave it.
pub async fn publish_offset(gw: &TestGateway, channel: &str, data: Value) -> u64 {
    let body = json!({"channel": channel, "data": data}).to_string();
    let auth = format!("Bearer {API_KEY}");
    let (status, reply) = super::http::http(
        gw.addr,
        "POST",
        "/api/publish",
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    reply["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {reply}"))
}
