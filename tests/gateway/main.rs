//! Black-box tests of one gateway node: real sockets on loopback, real JWTs,
//! the embedded broker. One test binary (modules under `tests/gateway/`) so
//! the suite links once.

// Helpers are shared between the modules of one test binary: `pub` is
// their visibility inside it, not an API.
#![allow(unreachable_pub)]

#[path = "../support/kit.rs"]
mod kit;

mod admission;
mod backpressure;
mod continuity;
mod delivery;
mod drain;
mod frames;
mod hardening;
mod lifetime;
mod presence;
mod server_api;
mod sse;
