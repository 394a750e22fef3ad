//! One retry policy for the whole engine, so every loop that waits and tries again
//! backs off the same way (exponential, jittered so racing writers spread out) and has
//! a stated budget instead of a magic attempt count.
//!
//! The loops themselves stay with their owners, because what happens between attempts
//! is the owner's business (reload the table, re-validate a plan, reconnect): this module
//! only answers "how long do I wait now, and have I waited enough?".

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A budget of attempts with jittered exponential pauses between them.
#[derive(Debug)]
pub struct Retry {
    pauses: ExponentialBackoff,
    attempts: usize,
}

impl Retry {
    /// For an optimistic commit that lost the compare-and-swap to another writer: quick
    /// first retries, pauses growing to one second, and ten minutes of waiting in all
    /// before the writer reports the conflict (a live competing writer never starves a
    /// writer that keeps retrying for that long unless it commits without pause).
    pub fn commit_race() -> Self {
        Self::new(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(5))
                .with_max_delay(Duration::from_secs(1))
                .with_factor(1.6)
                .with_jitter()
                .without_max_times()
                .with_total_delay(Some(Duration::from_secs(600))),
        )
    }

    /// For an idempotent storage or catalog request that failed in transport (a reset
    /// connection, a 503): a handful of attempts within a few seconds.
    pub fn transient_io() -> Self {
        Self::new(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_jitter()
                .with_max_times(5),
        )
    }

    /// For finding out whether a commit whose acknowledgement was lost applied: eight
    /// checks over about twenty seconds, enough to ride out a catalog database failover
    /// before the commit is reported as in doubt.
    pub fn in_doubt() -> Self {
        Self::new(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .with_max_times(8),
        )
    }

    /// For a replication slot still held by a session that is going away (a restart right
    /// after a stop finds the old walsender alive): pauses growing to five seconds, for up
    /// to a minute (PostgreSQL's default `wal_sender_timeout`, after which a server drops a
    /// session whose client vanished without closing its socket).
    pub fn slot_release() -> Self {
        Self::new(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .with_total_delay(Some(Duration::from_secs(60))),
        )
    }

    /// For re-establishing a lost connection to the source database: pauses growing to
    /// thirty seconds, for up to fifteen minutes of waiting, long enough to ride out a
    /// server restart or failover, short enough that a supervisor hears of a lasting outage.
    pub fn reconnect() -> Self {
        Self::new(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times()
                .with_total_delay(Some(Duration::from_secs(900))),
        )
    }

    fn new(builder: ExponentialBuilder) -> Self {
        Self {
            pauses: builder.build(),
            attempts: 0,
        }
    }

    /// The pause before the next attempt, or `None` once the budget is spent.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let pause = self.pauses.next()?;
        self.attempts += 1;
        Some(pause)
    }

    /// Sleeps before the next attempt; `false` (at once) once the budget is spent.
    pub async fn pause(&mut self) -> bool {
        match self.next_pause() {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }

    /// How many retries have been granted so far (0 before the first).
    pub fn retries(&self) -> usize {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_io_gives_five_growing_bounded_pauses() {
        let mut r = Retry::transient_io();
        let pauses: Vec<Duration> = std::iter::from_fn(|| r.next_pause()).collect();
        assert_eq!(pauses.len(), 5);
        assert_eq!(r.retries(), 5);
        // Each step doubles and jitter adds less than one step: every pause is longer than
        // the one before, and none reaches twice the cap.
        assert!(pauses[0] >= Duration::from_millis(50));
        assert!(pauses.windows(2).all(|w| w[1] > w[0]), "{pauses:?}");
        assert!(pauses.iter().all(|d| *d < Duration::from_secs(4)));
    }

    #[test]
    fn commit_race_is_bounded_by_total_waiting_not_by_count() {
        let mut r = Retry::commit_race();
        let mut total = Duration::ZERO;
        while let Some(d) = r.next_pause() {
            assert!(d <= Duration::from_secs(2), "{d:?}");
            total += d;
        }
        assert!(r.retries() > 100, "{} retries", r.retries());
        assert!(total <= Duration::from_secs(600), "{total:?}");
        assert!(total >= Duration::from_secs(590), "{total:?}");
    }
}
