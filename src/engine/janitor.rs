//! The janitor: marks runs lost once their owner has been dead for
//! `lost_after` and nobody resumed them (measured from the owner's death,
//! on the store's clock, never from the run's last checkpoint).

use super::Engine;
use super::switches::JANITOR_ENABLED;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct Janitor {
    engine: Arc<Engine>,
    lost_after_ms: i64,
}

impl Janitor {
    pub fn new(engine: Arc<Engine>, lost_after: Duration) -> Self {
        Janitor {
            engine,
            lost_after_ms: i64::try_from(lost_after.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// One pass: the runs it marked lost (none when switched off or when
    /// the store did not answer).
    pub async fn pass(&self) -> Vec<String> {
        if !self.engine.switches.enabled(JANITOR_ENABLED) {
            return Vec::new();
        }
        let lost = match self
            .engine
            .store
            .mark_lost(self.lost_after_ms, &self.engine.config.pod_id)
            .await
        {
            Ok(ids) => {
                if !ids.is_empty() {
                    tracing::warn!(runs = ?ids, "janitor marked runs lost");
                }
                ids
            }
            Err(e) => {
                tracing::warn!(error = %e, "janitor pass failed");
                Vec::new()
            }
        };
        self.engine.metrics.tick("janitor");
        lost
    }

    /// A pass every `every` until `cancel`.
    pub async fn run(self, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            self.pass().await;
        }
    }
}
