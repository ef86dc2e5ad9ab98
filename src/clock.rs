//! Time helpers shared by modules: wall-clock Unix seconds, and the cancellable fixed-interval
//! loop of the background tasks.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch of `t` (0 for times before the epoch).
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    unix_seconds(SystemTime::now())
}

/// Runs `step` every `interval` (the first at once; a step that overruns skips the missed
/// ticks instead of bursting) until `stop` is cancelled, also in the middle of a step.
pub async fn every<F, Fut>(
    interval: std::time::Duration,
    stop: &tokio_util::sync::CancellationToken,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = step() => {}
        }
    }
}
