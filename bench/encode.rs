//! Encode of one event, per wire format: what `Event` does once per
//! publication (JSON splice after a tree-free validation; MessagePack via one
//! parse) against the naive way (parse the payload, build the frame as a
//! tree, serialize it), which a per-socket encoder would pay per subscriber.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway::protocol::{Channel, Event, Format, Publication};

fn payload() -> Bytes {
    Bytes::from_static(br#"{"seq":12345,"ts":1732200000000000,"kind":"chat","text":"hello, this is a typical small chat message","user":{"id":"u-42","name":"Alice"}}"#)
}

fn bench(c: &mut Criterion) {
    let channel = Channel::parse("room:lobby").unwrap();
    let mut g = c.benchmark_group("encode_event");
    g.bench_function("json_once", |b| {
        b.iter(|| {
            let e = Event::new(Publication::new(channel.clone(), payload()), 1 << 20).unwrap();
            black_box(e.message(Format::Json).clone());
        })
    });
    g.bench_function("msgpack_once", |b| {
        b.iter(|| {
            let e = Event::new(Publication::new(channel.clone(), payload()), 1 << 20).unwrap();
            black_box(e.message(Format::MsgPack).clone());
        })
    });
    g.bench_function("naive_json_tree", |b| {
        b.iter(|| {
            let data: serde_json::Value = serde_json::from_slice(&payload()).unwrap();
            let frame =
                serde_json::json!({"type": "event", "channel": channel.to_string(), "data": data});
            black_box(serde_json::to_string(&frame).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
