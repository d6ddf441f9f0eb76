//! Black-box tests of one gateway node: real sockets on loopback, real JWTs,
//! the embedded broker. One test binary (modules under `tests/gateway/`) so
//! the suite links once.

mod harness;
#[path = "../support/http.rs"]
mod http;

mod admission;
mod backpressure;
mod delivery;
mod drain;
mod frames;
mod lifetime;
