//! gateway: a WebSocket realtime gateway and fan-out engine.
//!
//! Data flow of one publication:
//!
//! ```text
//!  backend ── Redis / POST /api/publish ──> broker ──(bounded queue)──> hub::pump
//!     hub::deliver: encode once per wire format (protocol::Event), then
//!     try-push the same bytes into each subscriber's bounded outbox (never awaits)
//!  session (one task per socket): drain outbox -> feed every frame -> one flush
//! ```
//!
//! Where things live: admission before the upgrade in `http/upgrade.rs`;
//! tokens in `auth`; session tables and fan-out in `hub`; slow consumers in
//! `outbox`; one socket's life in `session`; the bus in `broker`; drain in
//! `lifecycle`; limits in `limits`; the composition root in `app`;
//! offsets, history and resume in `continuity`; presence in `presence`;
//! what nodes tell each other in `cluster`, applied by `control`.

pub mod app;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod continuity;
pub mod control;
pub mod http;
pub mod hub;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod session;
