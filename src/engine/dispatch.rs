//! The dispatcher: claims pending runs for this pod whenever it is woken
//! (a run submitted here) or every interval, as far as the pod has room.

use super::worker::Worker;
use std::sync::Arc;
use std::time::Duration;

/// One pass: claim up to the worker's room of pending runs. Returns how
/// many this pod won.
pub async fn pass(worker: &Arc<Worker>) -> Result<usize, crate::engine::store::StoreError> {
    let room = worker.room();
    if room == 0 {
        return Ok(0);
    }
    let ids = worker
        .store()
        .pending_runs(i64::try_from(room).unwrap_or(64))
        .await?;
    let mut won = 0;
    for id in ids {
        if worker.start_run(&id, None).await {
            won += 1;
        }
    }
    worker.engine.metrics.tick("dispatcher");
    Ok(won)
}

/// Dispatch on every wake-up and every `every` until the worker's shutdown.
pub async fn run(worker: Arc<Worker>, every: Duration) {
    loop {
        tokio::select! {
            _ = worker.shutdown.cancelled() => break,
            _ = worker.wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = pass(&worker).await {
            tracing::warn!(error = %e, "dispatcher cannot read pending runs; retrying");
        }
    }
}
