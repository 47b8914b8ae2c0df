//! Waiting with a deadline: poll a condition and, when the deadline passes, fail with what was last seen.

use std::{
    fmt::Debug,
    future::Future,
    time::{Duration, Instant},
};

/// Polls `probe` every `every` until it returns `Ok(Some(value))`, or panics after `timeout` with the
/// last observation (`Ok(None)` carries none; `Err` carries an error description).
pub async fn until<T, F, Fut, O>(what: &str, timeout: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, O>>,
    O: Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last: Option<String> = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(seen) => last = Some(format!("{seen:?}")),
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {}",
                last.unwrap_or_else(|| "nothing".into())
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Asserts that `probe` keeps returning `Ok(())` for the whole `period` (used to prove that something
/// does NOT happen, e.g. no second rollout). Panics with the first violation.
pub async fn holds<F, Fut, O>(what: &str, period: Duration, every: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), O>>,
    O: Debug,
{
    let deadline = Instant::now() + period;
    loop {
        if let Err(seen) = probe().await {
            panic!("expected {what} to hold for {period:?}, but: {seen:?}");
        }
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(every).await;
    }
}
