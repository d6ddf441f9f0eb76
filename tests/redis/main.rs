//! The Redis bridge against real `redis-server` processes (never a mock): a
//! throwaway 6-node Redis Cluster per test (3 masters, 3 replicas) or a single
//! Redis, and gateway nodes started in-process. One binary (modules under
//! `tests/redis/`) so the suite links once.
//!
//!     cargo test --test redis                      # the suite
//!     cargo test --release --test redis -- --ignored --nocapture   # measurements

// Helpers are shared between the modules of one test binary: `pub` is
// their visibility inside it, not an API.
#![allow(unreachable_pub)]

mod harness;
#[path = "../support/kit.rs"]
mod kit;

mod bench;
mod classic;
mod cluster;
mod continuity;
mod examples;
mod faults;
mod presence;
mod secure;
