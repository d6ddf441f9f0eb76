//! The bridge's directory: presence through the Function library
//! (`gw_presence`, `gw_presence_get`, in the room channel's own slot), the
//! control channel `<prefix>control`, and two small hashes: `<prefix>revoked`
//! (revocations, each a JSON value under its key) and `<prefix>nodes` (the
//! registry, each node's JSON entry with the time it lapses). Expired
//! entries of both are dropped by whichever node reads them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::interfaces::{HashesInterface, PubsubInterface};
use fred::types::Value;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::client::{fcall, timed};
use crate::broker::{BrokerError, PresenceApplied, PresenceChange};
use crate::cluster::{Control, NodeInfo, Revocation};
use crate::protocol::PresenceInfo;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A node id as the library's key names carry it: hex, so any id (braces
/// included) leaves the room's hash tag alone.
fn node_hex(node: &str) -> String {
    node.bytes().map(|b| format!("{b:02x}")).collect()
}

/// `FCALL gw_presence 1 <room channel> <node> <ttl ms> full|delta user n ...`.
pub(super) async fn presence_apply(
    client: Client,
    channel: Str,
    change: PresenceChange,
    timeout: Duration,
) -> Result<PresenceApplied, BrokerError> {
    let mut args: Vec<Value> = Vec::with_capacity(3 + 2 * change.users.len());
    args.push(node_hex(&change.node).into());
    args.push(change.ttl_ms.to_string().into());
    args.push(if change.full { "full" } else { "delta" }.into());
    for (user, n) in &change.users {
        args.push(Value::String(Str::from(&**user)));
        args.push(n.to_string().into());
    }
    let reply = fcall(&client, "gw_presence", channel, args, timeout).await?;
    let unknown = reply
        .into_array()
        .first()
        .and_then(Value::as_u64)
        .ok_or(BrokerError::Unavailable)?;
    Ok(PresenceApplied {
        unknown: unknown == 1,
    })
}

/// `FCALL gw_presence_get 1 <room channel> <max members>`.
pub(super) async fn presence(
    client: Client,
    channel: Str,
    max_members: usize,
    timeout: Duration,
) -> Result<PresenceInfo, BrokerError> {
    let args: Vec<Value> = vec![max_members.to_string().into()];
    let reply = fcall(&client, "gw_presence_get", channel, args, timeout).await?;
    let mut items = reply.into_array().into_iter();
    let (Some(users), Some(clients)) = (
        items.next().and_then(|v| v.as_u64()),
        items.next().and_then(|v| v.as_u64()),
    ) else {
        return Err(BrokerError::Unavailable);
    };
    let members: Vec<String> = items.filter_map(Value::into_string).collect();
    Ok(PresenceInfo {
        users,
        clients,
        truncated: (members.len() as u64) < users,
        members,
    })
}

/// Publishes a control message on the control channel.
pub(super) async fn control(
    client: Client,
    channel: Str,
    sharded: bool,
    message: Control,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let payload = message.encode();
    if sharded {
        timed(
            "SPUBLISH",
            timeout,
            client.spublish::<Value, _, _>(channel, payload),
        )
        .await?;
    } else {
        timed(
            "PUBLISH",
            timeout,
            client.publish::<Value, _, _>(channel, payload),
        )
        .await?;
    }
    Ok(())
}

/// Keeps `revocation` under its key in the `revoked` hash.
pub(super) async fn store_revocation(
    client: Client,
    hash: String,
    revocation: Revocation,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let value = serde_json::to_string(&revocation).unwrap_or_default();
    timed(
        "HSET",
        timeout,
        client.hset::<Value, _, _>(hash, (revocation.key(), value)),
    )
    .await?;
    Ok(())
}

/// The revocations still in force; the lapsed ones are deleted.
pub(super) async fn revocations(
    client: Client,
    hash: String,
    timeout: Duration,
) -> Result<Vec<Revocation>, BrokerError> {
    let now = unix_now();
    read_live(&client, hash, timeout, |r: &Revocation| r.expires() > now).await
}

/// A registry entry: the node's info and when it lapses.
#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    info: NodeInfo,
    /// Unix ms after which the entry is ignored and deleted.
    lapses_at_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Lists `info` in the registry for `ttl_seconds`.
pub(super) async fn register_node(
    client: Client,
    hash: String,
    info: NodeInfo,
    ttl_seconds: u64,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let id = info.id.clone();
    let entry = Entry {
        info,
        lapses_at_ms: unix_ms() + ttl_seconds * 1000,
    };
    let value = serde_json::to_string(&entry).unwrap_or_default();
    timed(
        "HSET",
        timeout,
        client.hset::<Value, _, _>(hash, (id, value)),
    )
    .await?;
    Ok(())
}

/// Every node whose entry has not lapsed; the lapsed ones are deleted.
pub(super) async fn nodes(
    client: Client,
    hash: String,
    timeout: Duration,
) -> Result<Vec<NodeInfo>, BrokerError> {
    let now = unix_ms();
    let entries = read_live(&client, hash, timeout, |e: &Entry| e.lapses_at_ms > now).await?;
    let mut live: Vec<NodeInfo> = entries.into_iter().map(|e| e.info).collect();
    live.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(live)
}

/// The JSON values of `hash` that parse and that `live` keeps; the fields of
/// the others (lapsed, or unreadable) are deleted.
async fn read_live<T: DeserializeOwned>(
    client: &Client,
    hash: String,
    timeout: Duration,
    live: impl Fn(&T) -> bool,
) -> Result<Vec<T>, BrokerError> {
    let map: std::collections::HashMap<String, String> =
        timed("HGETALL", timeout, client.hgetall(&hash)).await?;
    let mut kept = Vec::new();
    let mut lapsed = Vec::new();
    for (field, value) in map {
        match serde_json::from_str::<T>(&value) {
            Ok(v) if live(&v) => kept.push(v),
            _ => lapsed.push(field),
        }
    }
    forget(client, hash, lapsed, timeout).await;
    Ok(kept)
}

/// Deletes lapsed fields; a failure only leaves them for the next reader.
async fn forget(client: &Client, hash: String, fields: Vec<String>, timeout: Duration) {
    if fields.is_empty() {
        return;
    }
    let _ = timed("HDEL", timeout, client.hdel::<Value, _, _>(hash, fields)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_become_brace_free_hex() {
        assert_eq!(node_hex("a{b}"), "617b627d");
        assert!(!node_hex("{x}").contains(['{', '}']));
    }

    #[test]
    fn registry_entries_keep_the_contract_fields_flat() {
        let entry = Entry {
            info: NodeInfo {
                id: "n1".into(),
                sockets: 3,
                channels: 2,
                draining: false,
                version: "0.2.0".into(),
                uptime_seconds: 9,
            },
            lapses_at_ms: 42,
        };
        let json: serde_json::Value = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["id"], "n1");
        assert_eq!(json["lapses_at_ms"], 42);
        let back: Entry = serde_json::from_value(json).unwrap();
        assert_eq!(back.info, entry.info);
    }
}
