//! Time, injectable where tests need it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock milliseconds since the Unix epoch, as stored in every table.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        wall_ms()
    }
}

/// Wall-clock milliseconds since the Unix epoch, as this host's clock says
/// (plus any [`skew_wall_clock`] step).
pub fn wall_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis())
        .unwrap_or(i64::MAX)
        .saturating_add(WALL_SKEW_MS.load(Ordering::Relaxed))
}

static WALL_SKEW_MS: AtomicI64 = AtomicI64::new(0);

/// Chaos (`clock_skew`): step this process's wall clock `ms` away from the
/// host's, as a drifting host or an NTP step does. Every reading of the wall
/// clock in Vigil goes through [`wall_ms`], so the whole pod sees the skew;
/// what must not care (leases, heartbeats, deadlines on PostgreSQL) reads the
/// server's clock instead.
pub fn skew_wall_clock(ms: i64) {
    WALL_SKEW_MS.store(ms, Ordering::Relaxed);
}

/// The current [`skew_wall_clock`] step.
pub fn wall_skew_ms() -> i64 {
    WALL_SKEW_MS.load(Ordering::Relaxed)
}

/// A clock that moves only when told to.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start_ms)))
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
