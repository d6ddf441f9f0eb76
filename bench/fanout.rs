//! Delivery of one publication to 1k / 10k / 100k local subscribers, measured
//! until every subscriber's queue has been drained, against a naive baseline:
//! one `Mutex<HashMap<room, Vec<sender>>>`, a frame serialized per subscriber,
//! unbounded channels.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::broker::MemoryBroker;
use gateway::hub::{Hub, Subscriber};
use gateway::metrics::Metrics;
use gateway::outbox::Outbox;
use gateway::protocol::{Channel, Event, Format, Publication};
use tokio::sync::mpsc;

const PAYLOAD: &[u8] = br#"{"seq":1,"text":"hello, this is a typical small chat message"}"#;

fn hub_with(n: usize, rt: &tokio::runtime::Runtime) -> (Arc<Hub>, Vec<Arc<Outbox>>, Channel) {
    let (broker, _rx) = MemoryBroker::new(16);
    let hub = Arc::new(Hub::new(
        broker,
        Metrics::new(&prometheus::Registry::new()).unwrap(),
        1 << 20,
    ));
    let room = Channel::parse("room:lobby").unwrap();
    let mut outboxes = Vec::with_capacity(n);
    rt.block_on(async {
        for _ in 0..n {
            let outbox = Arc::new(Outbox::new(1024, 1 << 20));
            let sub = Subscriber {
                outbox: outbox.clone(),
                format: Format::Json,
            };
            let id = hub.register(sub.clone());
            hub.subscribe(&room, id, sub).await.unwrap();
            outboxes.push(outbox);
        }
    });
    (hub, outboxes, room)
}

type Naive = Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>;

fn naive_with(n: usize) -> (Naive, Vec<mpsc::UnboundedReceiver<String>>) {
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        receivers.push(rx);
    }
    (
        Mutex::new(HashMap::from([("lobby".to_string(), senders)])),
        receivers,
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("fanout_one_publication");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for n in [1_000usize, 10_000, 100_000] {
        let (hub, outboxes, room) = hub_with(n, &rt);
        let mut batch = VecDeque::new();
        g.bench_with_input(BenchmarkId::new("hub_encode_once", n), &n, |b, _| {
            b.iter(|| {
                let event = Event::new(
                    Publication::new(room.clone(), Bytes::from_static(PAYLOAD)),
                    1 << 20,
                )
                .unwrap();
                assert_eq!(hub.deliver(&event), n);
                for o in &outboxes {
                    o.take(&mut batch, usize::MAX);
                    black_box(batch.len());
                    batch.clear();
                }
            })
        });
        let (naive, mut receivers) = naive_with(n);
        g.bench_with_input(BenchmarkId::new("naive_mutex_map", n), &n, |b, _| {
            b.iter(|| {
                let map = naive.lock().unwrap();
                for tx in &map["lobby"] {
                    let data: serde_json::Value = serde_json::from_slice(PAYLOAD).unwrap();
                    let frame =
                        serde_json::json!({"type": "event", "channel": "room:lobby", "data": data});
                    tx.send(frame.to_string()).unwrap();
                }
                drop(map);
                for rx in &mut receivers {
                    black_box(rx.try_recv().unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
