//! Subscribe + unsubscribe throughput with 2 threads contending, on the
//! sharded hub (DashMap shards + striped per-channel locks) against one
//! `Mutex<HashMap<room, HashMap<conn, sender>>>`. Both threads work on the same
//! 1,000 rooms, so they meet on the same entries. `sharded_hub` includes the
//! broker interest bookkeeping (most joins here are a room's first);
//! `sharded_hub_warm_rooms` keeps one resident per room, so it is tables only.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::broker::MemoryBroker;
use gateway::hub::{Hub, Subscriber};
use gateway::metrics::Metrics;
use gateway::outbox::Outbox;
use gateway::protocol::{Channel, Format};

const ROOMS: usize = 1_000;
const CONNS_PER_THREAD: u64 = 500;

fn rooms() -> Vec<Channel> {
    (0..ROOMS)
        .map(|i| Channel::parse(&format!("room:r{i}")).unwrap())
        .collect()
}

fn new_hub() -> Arc<Hub> {
    let (broker, _rx) = MemoryBroker::new(16);
    Arc::new(Hub::new(
        broker,
        Metrics::new(&prometheus::Registry::new()).unwrap(),
        1 << 20,
    ))
}

/// `iters` rounds of: on each of 2 tasks, 500 connections join 5 rooms and leave them.
fn churn(
    rt: &tokio::runtime::Runtime,
    hub: &Arc<Hub>,
    rooms: &Arc<Vec<Channel>>,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        rt.block_on(async {
            let tasks: Vec<_> = (0..2u64)
                .map(|t| {
                    let (hub, rooms) = (hub.clone(), rooms.clone());
                    tokio::spawn(async move {
                        for c in 0..CONNS_PER_THREAD {
                            let sub = Subscriber {
                                outbox: Arc::new(Outbox::new(8, 1024)),
                                format: Format::Json,
                            };
                            let id = hub.register(sub.clone());
                            let mine: Vec<&Channel> =
                                (0..5).map(|k| &rooms[pick(t, c, k)]).collect();
                            for room in &mine {
                                hub.subscribe(room, id, sub.clone()).await.unwrap();
                            }
                            for room in &mine {
                                hub.unsubscribe(room, id).await;
                            }
                            hub.unregister(id);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
    }
    start.elapsed()
}

/// The room connection `c` of thread `t` takes as its `k`-th (same for both contenders).
fn pick(t: u64, c: u64, k: u64) -> usize {
    ((t * 7919 + c * 31 + k * 211) as usize) % ROOMS
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let rooms = Arc::new(rooms());
    let mut g = c.benchmark_group("subscribe_unsubscribe_2_threads");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    // Each iteration: per thread, 500 connections x (join 5 rooms, leave them).
    g.throughput(criterion::Throughput::Elements(
        2 * CONNS_PER_THREAD * 5 * 2,
    ));

    g.bench_function("sharded_hub", |b| {
        let hub = new_hub();
        b.iter_custom(|iters| churn(&rt, &hub, &rooms, iters))
    });

    g.bench_function("sharded_hub_warm_rooms", |b| {
        let hub = new_hub();
        // One resident subscriber per room: joins and leaves never touch the
        // broker, so this measures the tables alone.
        rt.block_on(async {
            let resident = Subscriber {
                outbox: Arc::new(Outbox::new(8, 1024)),
                format: Format::Json,
            };
            let id = hub.register(resident.clone());
            for room in rooms.iter() {
                hub.subscribe(room, id, resident.clone()).await.unwrap();
            }
        });
        b.iter_custom(|iters| churn(&rt, &hub, &rooms, iters))
    });

    g.bench_function("naive_mutex_map", |b| {
        type Map = Mutex<HashMap<String, HashMap<u64, Arc<Outbox>>>>;
        let map: Arc<Map> = Arc::new(Mutex::new(HashMap::new()));
        let names: Arc<Vec<String>> = Arc::new(rooms.iter().map(|r| r.to_string()).collect());
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let threads: Vec<_> = (0..2u64)
                    .map(|t| {
                        let (map, names) = (map.clone(), names.clone());
                        std::thread::spawn(move || {
                            for c in 0..CONNS_PER_THREAD {
                                let outbox = Arc::new(Outbox::new(8, 1024));
                                let id = t * 1_000_000 + c;
                                let mine: Vec<&String> = (0..5)
                                    .map(|k| {
                                        &names[((t * 7919 + c * 31 + k * 211) as usize) % ROOMS]
                                    })
                                    .collect();
                                for room in &mine {
                                    map.lock()
                                        .unwrap()
                                        .entry((*room).clone())
                                        .or_default()
                                        .insert(id, outbox.clone());
                                }
                                for room in &mine {
                                    let mut m = map.lock().unwrap();
                                    if let Some(s) = m.get_mut(*room) {
                                        s.remove(&id);
                                        if s.is_empty() {
                                            m.remove(*room);
                                        }
                                    }
                                }
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
