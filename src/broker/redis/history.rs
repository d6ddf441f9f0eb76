//! History reads through the Function library: `gw_history` (a channel's
//! position and the publications after an offset) and `gw_epoch` (a new
//! epoch after the top went backwards). They go through the publisher's
//! cluster-aware client, which routes each call to the master owning the
//! channel's slot; the replies are parsed here.

use std::time::{Duration, Instant};

use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::types::Value;

use super::client::fcall;
use crate::broker::BrokerError;
use crate::continuity::{HistoryPage, Stored};
use crate::metrics::Metrics;
use crate::protocol::{Epoch, Position};

/// `FCALL gw_history 1 <channel> <since or ""> <limit>`.
pub(super) async fn read(
    client: Client,
    name: Str,
    since: Option<u64>,
    limit: usize,
    timeout: Duration,
    metrics: Metrics,
) -> Result<Option<HistoryPage>, BrokerError> {
    let args: Vec<Value> = vec![
        since.map_or_else(String::new, |s| s.to_string()).into(),
        limit.to_string().into(),
    ];
    let start = Instant::now();
    let reply = fcall(&client, "gw_history", name, args, timeout).await?;
    metrics
        .history_read_latency
        .observe(start.elapsed().as_secs_f64());
    Ok(page(reply))
}

/// `FCALL gw_epoch 1 <channel> <stale epoch> <stale offset>`.
pub(super) async fn new_epoch(
    client: Client,
    name: Str,
    stale: Position,
    timeout: Duration,
) -> Result<Option<Position>, BrokerError> {
    let args: Vec<Value> = vec![stale.epoch.as_str().into(), stale.offset.to_string().into()];
    let reply = fcall(&client, "gw_epoch", name, args, timeout).await?;
    Ok(page(reply).map(|p| p.position))
}

/// `{top, epoch, offset, data, ...}`; `{}` (no history) is `None`.
fn page(reply: Value) -> Option<HistoryPage> {
    let mut items = reply.into_array().into_iter();
    let top = items.next()?.as_u64()?;
    let epoch = items.next()?.into_string()?;
    let mut events = Vec::new();
    while let (Some(offset), Some(data)) = (items.next(), items.next()) {
        let (Some(offset), Some(data)) = (offset.as_u64(), data.into_bytes()) else {
            break;
        };
        events.push(Stored { offset, data });
    }
    Some(HistoryPage {
        position: Position {
            offset: top,
            epoch: Epoch::new(&epoch),
        },
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn replies_parse_into_pages() {
        let reply = Value::Array(vec![
            Value::Integer(57),
            Value::String("k3Jd".into()),
            Value::Integer(56),
            Value::Bytes(Bytes::from_static(b"{}")),
            Value::Integer(57),
            Value::Bytes(Bytes::from_static(b"1")),
        ]);
        let p = page(reply).unwrap();
        assert_eq!(p.position.offset, 57);
        assert_eq!(p.position.epoch.as_str(), "k3Jd");
        assert_eq!(
            p.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [56, 57]
        );
        assert!(page(Value::Array(vec![])).is_none());
    }
}
