//! Black-box tests of one gateway node: real sockets on loopback, real JWTs,
//! the embedded broker. One test binary (modules under `tests/gateway/`) so
//! the suite links once.

#[path = "../support/kit.rs"]
mod kit;

mod admission;
mod backpressure;
mod delivery;
mod drain;
mod frames;
mod lifetime;
