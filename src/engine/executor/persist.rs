//! A run's writes wait for the store instead of failing the step.
//!
//! A store that cannot take a write right now (a full disk, an outage, a
//! frozen or unreachable server, no answer within the deadline) is not the
//! step's failure. Before, every such error ended the driver, which claimed
//! the run back from itself and ran the interrupted step's body again: a
//! full disk for six seconds spent every attempt of every run in flight and
//! repeated their side effects without one checkpoint being possible.
//! Now the write that failed is tried again in place, backing off, until
//! the store takes it, the run's deadline passes or the run is stopped
//! (the pod stopping, the run taken): the body is not run again, so an
//! outage of any length spends no attempt while the owner lives.
//!
//! Trying a write again is safe: every write of an attempt is fenced by the
//! run's epoch (a run another pod took meanwhile refuses it) and either
//! idempotent (a chunk at the same epoch and sequence number is written
//! once) or reconciled (a checkpoint whose first try landed though its
//! answer was lost is recognised, see `step.rs`).

use super::*;
use crate::engine::store::StoreResult;
use std::future::Future;

/// The first wait after a failed write, doubled up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(2);

impl Engine {
    /// `write`, tried again while the store fails it with a transient
    /// error (see [`StoreError::is_transient`]). Gives up with the last
    /// error when the run is cancelled or past its deadline; any other
    /// error returns at once. `tried` counts the failed tries, for callers
    /// that must reconcile a write whose outcome was unknown.
    pub(super) async fn until_written<T, F, Fut>(
        &self,
        ctx: &RunCtx<'_>,
        op: &'static str,
        tried: &mut u32,
        mut write: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut wait = FIRST_WAIT;
        // Counted while this write waits (readiness reads it); uncounted on
        // every way out.
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let e = match write().await {
                Ok(v) => {
                    if *tried > 0 {
                        tracing::info!(
                            run_id = ctx.run_id,
                            op,
                            tries = *tried + 1,
                            "the store took the write"
                        );
                    }
                    return Ok(v);
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) if crate::faults::on(crate::faults::Bug::NoStoreWait) => return Err(e),
                Err(e) => e,
            };
            *tried += 1;
            self.metrics.inc_write_wait(op);
            let past_deadline = ctx.deadline_at_ms.is_some_and(|d| self.clock.now_ms() >= d);
            if past_deadline || ctx.cancel.is_cancelled() {
                return Err(e);
            }
            if waiting.is_none() {
                waiting = Some(Waiting::new(&self.writes_waiting));
            }
            tracing::warn!(run_id = ctx.run_id, op, error = %e, ?wait, "the store could not take the write; waiting, not failing the step");
            // Waiting on the store is not a hung driver: the run keeps
            // heartbeating where the store takes heartbeats.
            ctx.progress.mark();
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(e),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(MAX_WAIT);
        }
    }
}

/// One write waiting for the store, counted in the engine's gauge for as
/// long as it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
