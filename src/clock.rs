//! Time helpers shared by modules: wall-clock Unix seconds, the cancellable fixed-interval
//! loop of the background tasks, and the one retry backoff (capped, exponential, jittered).

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

/// The pause before the next attempt after `failures` consecutive failures (at least one):
/// `base` after the first, doubling per failure, capped at `max`; then "equal jitter" takes
/// it to a random point of its upper half, so that retries of many tasks (or of many pgpulse
/// processes after one outage) do not arrive in step.
pub fn backoff(
    base: std::time::Duration,
    failures: u32,
    max: std::time::Duration,
) -> std::time::Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let full = base.saturating_mul(2u32.saturating_pow(exponent)).min(max);
    let half = full / 2;
    half + half.mul_f64(unit_random())
}

/// A number in [0, 1) that differs from call to call (std's per-process random hash keys;
/// good enough for jitter, not for anything secret).
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::backoff;

    #[test]
    fn backoff_starts_at_its_base_doubles_and_stays_in_the_upper_half_under_the_cap() {
        let (base, max) = (Duration::from_millis(250), Duration::from_secs(30));
        for _ in 0..200 {
            for (failures, full) in [(1, 250), (2, 500), (3, 1000), (40, 30_000)] {
                let full = Duration::from_millis(full);
                let got = backoff(base, failures, max);
                assert!(
                    got >= full / 2 && got <= full,
                    "{failures}: {got:?} of {full:?}"
                );
            }
        }
        let spread: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff(base, 5, max)).collect();
        assert!(spread.len() > 10, "jitter spreads the pauses: {spread:?}");
    }
}
