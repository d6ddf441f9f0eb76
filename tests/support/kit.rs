//! The test kit every test binary shares. A binary includes it once, with
//! `#[path = "../support/kit.rs"] mod kit;` from `tests/<suite>/main.rs` or
//! `#[path = "support/kit.rs"] mod kit;` from a single-file test; its modules
//! are the files beside this one, each named after what it holds. Everything
//! in it talks to real parts: sockets, JWTs, the gateway (in-process or as
//! its binary). No binary uses all of it, hence the `allow` below.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod http;
pub mod process;
pub mod resume;
pub mod sse;
pub mod temp_dir;
pub mod test_gateway;
pub mod token;
pub mod wait;

pub use client::{Client, Ended, event};
pub use http::{http, http_on};
pub use process::{Proc, free_port, gateway_command, repo};
pub use resume::{Seen, Stream, publish_offset, reconnect};
pub use temp_dir::TempDir;
pub use test_gateway::{API_KEY, Builder, TestGateway, metric_value, test_config, with_history};
pub use token::{SECRET, now, sign, sign_with, token};
pub use wait::{DEADLINE, eventually, eventually_async, eventually_blocking, until};
