//! The reaper: ends runs whose heartbeat went stale (a hung step on a live
//! pod: retried within budget, else timed out) and runs past their
//! deadline (plus a grace), on the store's clock.
//!
//! "Stale" means something only to an observer that could have seen a
//! heartbeat: after the store was unreachable from here, the reaper first
//! watches for one full heartbeat timeout of the longest heartbeating lane,
//! so owners driving their runs again after the same outage get to say so.
//! A store that hangs instead of failing (a frozen server, a stuck disk:
//! every statement waits, none errors) is an outage too: a call that took
//! longer than a quarter of that timeout starts the watch again, because
//! the owners' heartbeats were waiting behind the same hang. So does this
//! pod's own lease running short: its renew is a write, and reads (what the
//! watch makes) can be quick while writes queue for minutes behind a slow
//! disk (SQLite's one write lock under a 150 ms fsync reaped healthy runs,
//! `slow-fsync`).

use super::Engine;
use super::switches::REAPER_ENABLED;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one pass did.
#[derive(Debug, Default)]
pub struct ReaperPass {
    /// False when the pass did not judge staleness (switched off, or still
    /// watching after an outage).
    pub judged: bool,
    /// Stale runs timed out, and the retries queued for them.
    pub stale: crate::engine::store::ReapReport,
    /// Runs timed out past their deadline.
    pub overdue: Vec<String>,
}

#[derive(Debug)]
pub struct Reaper {
    engine: Arc<Engine>,
    /// How far past its deadline a run may go (ms).
    grace_ms: i64,
    /// How long to watch before judging staleness (the longest heartbeat
    /// timeout of any heartbeating lane).
    watch_for_ms: i64,
    /// Store-clock ms since which this reaper has seen the store answer.
    watching_since_ms: i64,
    /// A store call slower than this (ms) was a hang, not an answer.
    hang_ms: i64,
}

impl Reaper {
    pub fn new(engine: Arc<Engine>, grace: Duration) -> Self {
        let watch_for = engine
            .lanes
            .names()
            .filter(|(_, l)| l.heartbeat)
            .map(|(_, l)| l.heartbeat_timeout_ms)
            .max()
            .unwrap_or_default();
        let now = engine.clock.now_ms();
        let watch_for_ms = i64::try_from(watch_for).unwrap_or(i64::MAX);
        Reaper {
            engine,
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
            watch_for_ms,
            watching_since_ms: now,
            hang_ms: watch_for_ms / 4,
        }
    }

    /// After a store call begun at `began`: whether it failed or hung. Either
    /// way the watch starts again from now.
    fn blinded<T, E>(&mut self, began: i64, outcome: &Result<T, E>) -> bool {
        let now = self.engine.clock.now_ms();
        let hung = self.watch_for_ms > 0 && now.saturating_sub(began) > self.hang_ms;
        if outcome.is_err() || hung {
            if hung {
                tracing::warn!(
                    waited_ms = now.saturating_sub(began),
                    "the store hung; the reaper watches a full heartbeat timeout before judging again"
                );
            }
            self.watching_since_ms = now;
            return true;
        }
        false
    }

    /// One pass: stale heartbeats, then deadlines.
    pub async fn pass(&mut self) -> ReaperPass {
        let mut out = ReaperPass::default();
        if !self.engine.switches.enabled(REAPER_ENABLED) {
            return out;
        }
        let engine = self.engine.clone();
        let (store, pod_id) = (&engine.store, &engine.config.pod_id);
        let now = engine.clock.now_ms();
        if !engine.config.lease.holds() {
            // Our own renew (a write) did not land in time: writes are not
            // getting through steadily (a slow or saturated disk, a slow
            // link), and a heartbeat missing now says as little as ours
            // would. Watch a full heartbeat timeout of steady writes first.
            self.watching_since_ms = now;
            return out;
        }
        if now.saturating_sub(self.watching_since_ms) < self.watch_for_ms {
            // Still earning the right to call a heartbeat missing; a cheap
            // read tells whether the store is there at all.
            let seen = store.switches().await;
            self.blinded(now, &seen);
            return out;
        }
        // The statement judges as of `now`: a verdict reached after a hang
        // is still one about heartbeats due before it began.
        let reaped = store.reap_stale(pod_id).await;
        self.blinded(now, &reaped);
        match reaped {
            Ok(r) => {
                out.judged = true;
                if !r.timed_out.is_empty() {
                    tracing::warn!(
                        timed_out = ?r.timed_out, retried = ?r.retried, "reaper timed out stale runs"
                    );
                }
                out.stale = r;
            }
            Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
        }
        let began = self.engine.clock.now_ms();
        let overdue = store.time_out_overdue(self.grace_ms, pod_id).await;
        self.blinded(began, &overdue);
        match overdue {
            Ok(ids) => {
                if !ids.is_empty() {
                    tracing::warn!(runs = ?ids, "reaper timed out runs past their deadline");
                }
                out.overdue = ids;
            }
            Err(e) => tracing::warn!(error = %e, "deadline pass failed"),
        }
        self.engine.metrics.tick("reaper");
        out
    }

    /// A pass every `every` until `cancel`.
    pub async fn run(mut self, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            self.pass().await;
        }
    }
}
