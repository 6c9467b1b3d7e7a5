//! This pod's own view of its liveness lease, on its own monotonic clock.
//!
//! Peers may judge a pod dead one liveness timeout after the store last
//! heard from it (PostgreSQL ends a session silent that long, and with it
//! the pod's lock; a SQLite lease runs out). The store heard from us no
//! earlier than the moment our last successful renew was *sent*, so our
//! lease surely stands until `sent + timeout`, whatever the network did
//! since. Past a margin before that, the pod fences itself (Jepsen's lesson
//! from etcd: a lease holder must stop acting before its lease can have
//! expired by its own clock): no new step body starts, `/readyz` answers
//! 503, and open streams end with a retryable error so clients move to
//! another pod. It never needs the store to know: a half-open link, a
//! frozen database or a paused process all leave this view honest.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The pod's lease as it knows it.
#[derive(Debug)]
pub struct Lease {
    timeout: Duration,
    /// When the last successful renew was sent (None: unbounded, for an
    /// engine outside a pod: tests, the demo's in-process engine).
    sent: Mutex<Option<Instant>>,
    /// Bumped on every successful renew, to wake what waits for the lease.
    renewed: watch::Sender<u64>,
    unbounded: bool,
}

impl Lease {
    /// A lease of `timeout`, held from now (joining was the first renew).
    pub fn new(timeout: Duration) -> Self {
        Lease {
            timeout,
            sent: Mutex::new(Some(Instant::now())),
            renewed: watch::Sender::new(0),
            unbounded: false,
        }
    }

    /// A lease that never ends: an engine with no membership to keep.
    pub fn unbounded() -> Self {
        Lease {
            timeout: Duration::MAX,
            sent: Mutex::new(None),
            renewed: watch::Sender::new(0),
            unbounded: true,
        }
    }

    /// The margin kept before the lease's end: a body must start with at
    /// least this much of the lease left (a quarter of the timeout: more
    /// than a renew interval, so a steady pod never fences itself).
    pub fn margin(&self) -> Duration {
        self.timeout / 4
    }

    /// A renew sent at `sent` succeeded.
    pub fn renewed(&self, sent: Instant) {
        if self.unbounded {
            return;
        }
        let mut s = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none_or(|prev| sent > prev) {
            *s = Some(sent);
        }
        drop(s);
        self.renewed.send_modify(|n| *n += 1);
    }

    /// How much of the lease is left at `now` (zero once it may have
    /// expired); None when unbounded.
    pub fn left(&self, now: Instant) -> Option<Duration> {
        if self.unbounded {
            return None;
        }
        let sent = *self.sent.lock().unwrap_or_else(|p| p.into_inner());
        Some(sent.map_or(Duration::ZERO, |s| {
            (s + self.timeout).saturating_duration_since(now)
        }))
    }

    /// Whether the pod may start a step body now: more than the margin left.
    pub fn holds(&self) -> bool {
        if crate::faults::on(crate::faults::Bug::NoSelfFence) {
            return true;
        }
        self.left(Instant::now())
            .is_none_or(|left| left > self.margin())
    }

    /// Wait until [`Lease::holds`] (at once when it does).
    pub async fn held(&self) {
        let mut rx = self.renewed.subscribe();
        while !self.holds() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Wait until the lease no longer holds (never, when unbounded): for
    /// streams that must end when their pod fences itself.
    pub async fn lapsed(&self) {
        loop {
            let Some(left) = self.left(Instant::now()) else {
                return std::future::pending().await;
            };
            if crate::faults::on(crate::faults::Bug::NoSelfFence) {
                return std::future::pending().await;
            }
            let until_fenced = left.saturating_sub(self.margin());
            if until_fenced.is_zero() {
                return;
            }
            tokio::time::sleep(until_fenced).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lease;
    use std::time::{Duration, Instant};

    #[test]
    fn the_lease_runs_from_when_the_last_good_renew_was_sent() {
        let t = Duration::from_millis(1000);
        let lease = Lease::new(t);
        let t0 = Instant::now();
        lease.renewed(t0);
        assert_eq!(lease.left(t0), Some(t));
        assert_eq!(
            lease.left(t0 + Duration::from_millis(600)),
            Some(Duration::from_millis(400))
        );
        assert_eq!(lease.left(t0 + t * 2), Some(Duration::ZERO));
        // An older renew answered late does not move the lease back.
        lease.renewed(t0 - Duration::from_millis(10));
        assert_eq!(lease.left(t0), Some(t));
        assert_eq!(Lease::unbounded().left(t0), None);
        assert!(Lease::unbounded().holds());
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_held_again_after_a_renew() {
        let lease = std::sync::Arc::new(Lease::new(Duration::from_millis(40)));
        lease.lapsed().await;
        assert!(!lease.holds());
        let waiter = tokio::spawn({
            let lease = lease.clone();
            async move { lease.held().await }
        });
        lease.renewed(Instant::now());
        waiter.await.ok();
        assert!(lease.holds());
    }
}
