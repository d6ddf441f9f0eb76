//! Bounded waits for something observable: poll a condition until it holds,
//! and fail the test once a deadline passes first. A deadline here is a test
//! failure, never a synchronisation: a test waits for the event it needs (a
//! frame, a metric, a table size), not for time to pass.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long any single awaited event may take before the test fails, unless
/// a suite sets its own (the Redis suite allows more).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Pause between two checks of a polled condition.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it holds; fails the test after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    eventually_async(what, limit, || std::future::ready(check())).await;
}

/// Polls an async `check` until it holds; fails the test after `limit`.
pub async fn eventually_async<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(until(limit, check).await, "timed out waiting for: {what}");
}

/// Polls an async `check` until it holds or `limit` passes; whether it held.
/// For a caller whose own assertion, made next, explains a failure better
/// than "timed out" would.
pub async fn until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for tests without a runtime: blocks the thread between checks.
#[expect(
    clippy::disallowed_methods,
    reason = "for synchronous tests only, which have no runtime worker to block"
)]
pub fn eventually_blocking(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(POLL);
    }
}
