//! The reaper: ends runs whose heartbeat went stale (a hung step on a live
//! pod: retried within budget, else timed out) and runs past their
//! deadline (plus a grace), on the store's clock.
//!
//! "Stale" means something only to an observer that could have seen a
//! heartbeat: after the store was unreachable from here, the reaper first
//! watches for one full heartbeat timeout of the longest heartbeating lane,
//! so owners driving their runs again after the same outage get to say so.

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
        Reaper {
            engine,
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
            watch_for_ms: i64::try_from(watch_for).unwrap_or(i64::MAX),
            watching_since_ms: now,
        }
    }

    /// One pass: stale heartbeats, then deadlines.
    pub async fn pass(&mut self) -> ReaperPass {
        let mut out = ReaperPass::default();
        if !self.engine.switches.enabled(REAPER_ENABLED) {
            return out;
        }
        let store = &self.engine.store;
        let pod_id = &self.engine.config.pod_id;
        let now = self.engine.clock.now_ms();
        if now.saturating_sub(self.watching_since_ms) < self.watch_for_ms {
            // Still earning the right to call a heartbeat missing; a cheap
            // read tells whether the store is there at all.
            if store.switches().await.is_err() {
                self.watching_since_ms = self.engine.clock.now_ms();
            }
            return out;
        }
        match store.reap_stale(pod_id).await {
            Ok(r) => {
                out.judged = true;
                if !r.timed_out.is_empty() {
                    tracing::warn!(
                        timed_out = ?r.timed_out, retried = ?r.retried, "reaper timed out stale runs"
                    );
                }
                out.stale = r;
            }
            Err(e) => {
                self.watching_since_ms = self.engine.clock.now_ms();
                tracing::warn!(error = %e, "reaper pass failed");
            }
        }
        match store.time_out_overdue(self.grace_ms, pod_id).await {
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
