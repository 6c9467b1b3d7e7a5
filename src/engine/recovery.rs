//! Recovery: this pod's membership kept alive, its peers probed, and the
//! runs of the dead claimed (compare-and-set on the dead owner).
//!
//! The renew runs on a task of its own and never waits behind a probe or a
//! claim: a row another session holds or a slow server must not let our
//! own liveness go silent, or peers declare a live pod dead. A pod whose
//! own membership was found gone stops its runs, rejoins as a new
//! incarnation and takes back what is still its own; until it has
//! rejoined it neither judges peers nor takes their runs.
//!
//! Between probes, a watcher per peer waits on the peer's liveness lock
//! ([`Liveness::watch`]); the moment the lock is granted (the peer's process
//! or session is gone) it wakes the loop for a pass, so a killed pod is
//! found dead in milliseconds, not at the next probe or lease expiry.
//!
//! A peer's lapsed lease (SQLite) is read as its death only while this
//! pod's own renewals have been steady for a whole liveness timeout
//! ([`Renewals`]): if our own renew could not get through (a peer paused
//! while holding the database's write lock, a stalled disk, or this pod
//! itself paused), the peer's could not either, and its lapsed lease says
//! nothing about the peer. A renew that landed but took longer than a
//! quarter of the timeout is not steady either: a store that slow for us
//! may be slower still for the peer. A lock released by a dead process
//! still counts at once.

use super::store::liveness::{Identity, Liveness, Membership, PodRow, Standing};
use super::switches::RECOVERY_ENABLED;
use super::worker::Worker;
use crate::faults::{self, Bug};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How steadily this pod's own membership has been renewed, as durations
/// this process measured itself (a monotonic clock: a wall-clock step or a
/// skew cannot fake a stall or hide one).
#[derive(Debug, Default)]
pub struct Renewals {
    /// Since when every renew has succeeded, each within half a liveness
    /// timeout of the one before.
    steady_since: Option<Instant>,
    last_ok: Option<Instant>,
    /// When a renew last failed outright (no answer, or an error).
    last_failed: Option<Instant>,
}

/// How one renew of our membership went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// It landed in time.
    Steady,
    /// It landed, but slower than the self-fence margin allows.
    Slow,
    /// It did not land: the store did not answer, or answered an error.
    Failed,
}

impl Renewals {
    /// A renew ended at `at`, as `how`.
    pub fn record(&mut self, at: Instant, how: Renewal, timeout: Duration) {
        if how == Renewal::Failed {
            self.last_failed = Some(at);
        }
        if how != Renewal::Steady {
            self.steady_since = None;
            return;
        }
        let in_time = self
            .last_ok
            .is_some_and(|last| at.saturating_duration_since(last) <= timeout / 2);
        if !in_time || self.steady_since.is_none() {
            self.steady_since = Some(at);
        }
        self.last_ok = Some(at);
    }

    /// Whether the last successful renew ended within `within` of `now`.
    pub fn renewed_within(&self, now: Instant, within: Duration) -> bool {
        self.last_ok
            .is_some_and(|last| now.saturating_duration_since(last) <= within)
    }

    /// Whether a peer's lapsed lease may be read as its death at `now`: our
    /// own renewals steady for a whole `timeout`, the last one recent.
    pub fn leases_speak(&self, now: Instant, timeout: Duration) -> bool {
        self.steady_since
            .is_some_and(|since| now.saturating_duration_since(since) >= timeout)
            && self.renewed_within(now, timeout / 2)
    }

    /// Whether a peer's released lock may be read as its death at `now`:
    /// none of our own renews failed within the last `timeout`.
    pub fn locks_speak(&self, now: Instant, timeout: Duration) -> bool {
        self.last_failed
            .is_none_or(|failed| now.saturating_duration_since(failed) >= timeout)
    }

    /// Both at `now`.
    pub fn standing(&self, now: Instant, timeout: Duration) -> Standing {
        Standing {
            leases_speak: self.leases_speak(now, timeout),
            locks_speak: self.locks_speak(now, timeout),
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryPass {
    /// The peers registered when the pass began, less those it found dead.
    pub peers: Vec<PodRow>,
    /// Peers this pass found dead (and recorded).
    pub deaths: Vec<String>,
    /// Orphaned runs this pod claimed.
    pub won: Vec<String>,
    /// Orphaned runs another pod (or a held row) kept from us.
    pub lost: Vec<String>,
}

/// One pass: probe every peer; claim the runs of the dead. Nothing while
/// this pod's own membership is gone (until it has rejoined); no claims
/// while stopping, switched off, or full.
pub async fn pass(worker: &Arc<Worker>) -> RecoveryPass {
    let mut out = RecoveryPass::default();
    // A pod whose own lease lapsed cannot tell a dead peer from its own
    // silence (a frozen or cut-off store): it judges nobody until a renew
    // gets through.
    if !worker.is_live() || !worker.engine.config.lease.holds() {
        return out;
    }
    let engine = &worker.engine;
    let liveness = worker.store().liveness();
    let standing = || worker.standing();
    // Liveness calls bypass the store's deadline wrapper: a deadline of
    // their own, so a hung link cannot hold the pass.
    let deadline = super::store::deadline::DEFAULT_DEADLINE;
    let metrics = Some(engine.metrics.as_ref());
    let peers = match super::store::deadline::within(
        metrics,
        "pod registry read",
        deadline,
        liveness.pods(),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the pod registry");
            return out;
        }
    };
    for peer in peers.into_iter().filter(|p| p.pod_id != worker.pod_id()) {
        let probed = super::store::deadline::within(
            metrics,
            "probe",
            deadline,
            liveness.probe(&peer, worker.pod_id(), &standing),
        )
        .await;
        match probed {
            Ok(Some(death)) => {
                let latency =
                    (death.detected_at_ms - death.last_heartbeat_at_ms).max(0) as f64 / 1000.0;
                engine.metrics.pod_deaths.inc();
                engine.metrics.detection_latency.observe(latency);
                tracing::warn!(pod = %death.pod_id, incarnation = %death.incarnation, latency_s = latency, "peer pod is dead");
                out.deaths.push(death.pod_id);
            }
            Ok(None) => out.peers.push(peer),
            Err(e) => {
                tracing::warn!(pod = %peer.pod_id, error = %e, "probe failed");
                out.peers.push(peer);
            }
        }
    }
    let room = worker.room();
    if worker.is_stopping() || !engine.switches.enabled(RECOVERY_ENABLED) || room == 0 {
        return out;
    }
    match worker
        .store()
        .orphaned_runs(i64::try_from(room).unwrap_or(64))
        .await
    {
        Ok(orphans) => {
            for (id, owner) in orphans {
                if worker.start_run(&id, owner.as_deref()).await {
                    engine.metrics.inc_claim("won");
                    tracing::info!(run_id = %id, from = ?owner, "recovered an orphaned run");
                    out.won.push(id);
                } else {
                    engine.metrics.inc_claim("lost");
                    out.lost.push(id);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list orphaned runs"),
    }
    out
}

/// Keep our membership alive (on a task of its own), and run a recovery
/// [`pass`] every `probe_interval`, and at once whenever a peer's watcher
/// sees its lock granted, until `stop`. Returns the membership so the
/// caller can leave after the runs have stopped (`None` when `stop` came
/// while it was lost and not yet rejoined).
pub async fn run(
    worker: Arc<Worker>,
    membership: Box<dyn Membership>,
    identity: Identity,
    probe_interval: Duration,
    stop: CancellationToken,
) -> Option<Box<dyn Membership>> {
    let renewer = tokio::spawn(renew_loop(
        worker.clone(),
        membership,
        identity,
        stop.clone(),
    ));
    let mut watchers = Watchers::new(worker.clone());
    let mut probe = tokio::time::interval(probe_interval.max(Duration::from_millis(10)));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = probe.tick() => {}
            _ = watchers.wake.notified() => {}
        }
        // The stalling_claims fault: the renew waits for this pass.
        let _inline = if faults::on(Bug::StallingClaims) {
            Some(worker.renew_gate.lock().await)
        } else {
            None
        };
        let done = tokio::select! {
            _ = stop.cancelled() => break,
            done = pass(&worker) => done,
        };
        watchers.follow(&done.peers);
        worker.engine.metrics.tick("liveness");
    }
    watchers.stop();
    match renewer.await {
        Ok(m) => m,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// One watcher task per registered peer incarnation.
struct Watchers {
    worker: Arc<Worker>,
    wake: Arc<Notify>,
    /// One watcher per (pod id, incarnation). A finished one stays until
    /// its peer leaves the registry: its lock was seen granted (or could
    /// not be waited on), so the probe, or the lease, decides now; no
    /// second watcher for that incarnation.
    watching: HashMap<(String, String), tokio::task::JoinHandle<()>>,
}

impl Watchers {
    fn new(worker: Arc<Worker>) -> Self {
        Watchers {
            worker,
            wake: Arc::new(Notify::new()),
            watching: HashMap::new(),
        }
    }

    /// Watch every peer in `peers`; stop watching the ones gone.
    fn follow(&mut self, peers: &[PodRow]) {
        let keys: HashSet<(String, String)> = peers
            .iter()
            .map(|p| (p.pod_id.clone(), p.incarnation.clone()))
            .collect();
        self.watching.retain(|k, task| {
            let keep = keys.contains(k);
            if !keep {
                task.abort();
            }
            keep
        });
        for peer in peers {
            let key = (peer.pod_id.clone(), peer.incarnation.clone());
            if self.watching.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(watch_peer(
                self.worker.clone(),
                peer.clone(),
                self.wake.clone(),
            ));
            self.watching.insert(key, task);
        }
    }

    fn stop(&mut self) {
        for (_, task) in self.watching.drain() {
            task.abort();
        }
    }
}

/// Wait on `peer`'s lock until it is granted, then wake the recovery loop.
async fn watch_peer(worker: Arc<Worker>, peer: PodRow, wake: Arc<Notify>) {
    let liveness: &dyn Liveness = worker.store().liveness();
    let mut watch = match liveness.watch(&peer).await {
        Ok(Some(w)) => w,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(pod = %peer.pod_id, error = %e, "cannot watch the peer; probes alone find its death");
            return;
        }
    };
    loop {
        // A lock wait answers within a round (its lock_timeout); a link
        // that hangs it longer ends this watcher, and probes decide.
        let waited = super::store::deadline::within(
            None,
            "liveness watch",
            super::store::liveness::WATCH_ROUND + Duration::from_secs(5),
            watch.released(),
        )
        .await;
        match waited {
            Ok(true) => {
                tracing::debug!(pod = %peer.pod_id, incarnation = %peer.incarnation, "peer's liveness lock granted: probing now");
                wake.notify_one();
                // The probe may find the peer alive (its session was ended
                // by the server, and it takes its lock again on a new one):
                // watch on, after a pause that keeps a dead peer's free lock
                // from waking the loop in a spin.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(pod = %peer.pod_id, error = %e, "watch failed; probes alone find its death");
                return;
            }
        }
    }
}

/// How long one renew may hang before its connection is given up on (a
/// half-open link: no FIN, no RST, and the kernel's retransmissions take
/// many minutes to fail). The lease view does not wait for this: it lapses
/// on its own clock one timeout after the last good renew was sent.
fn renew_hard_deadline(timeout: Duration) -> Duration {
    (timeout * 10).max(Duration::from_secs(10))
}

/// Renew our membership every timeout/5 until `stop`; when it is found
/// lost, stop local runs, rejoin as a new incarnation and take back what
/// is still ours. A renew that fails or hangs is not a lost membership:
/// only a registry row gone is (peers declared us dead). Meanwhile our
/// lease view lapses on its own clock, and the pod fences itself (no new
/// step bodies, unready, streams ended) until a renew gets through.
async fn renew_loop(
    worker: Arc<Worker>,
    mut membership: Box<dyn Membership>,
    mut identity: Identity,
    stop: CancellationToken,
) -> Option<Box<dyn Membership>> {
    let lease = worker.engine.config.lease.clone();
    let metrics = worker.engine.metrics.clone();
    // Joining was our first renewal.
    worker.record_renewal(Instant::now(), Renewal::Steady, identity.timeout);
    let mut renew = tokio::time::interval(identity.timeout / 5);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = renew.tick() => {}
        }
        let sent = Instant::now();
        let renewed = {
            let _inline = if faults::on(Bug::StallingClaims) {
                Some(worker.renew_gate.lock().await)
            } else {
                None
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                r = super::store::deadline::within(
                    Some(&metrics),
                    "renew",
                    renew_hard_deadline(identity.timeout),
                    membership.renew(),
                ) => r,
            }
        };
        let now = Instant::now();
        // A renew that landed but took longer than a quarter of the
        // timeout (the self-fence margin) does not count as steady: a store
        // that slow for us (a slow disk, SQLite's write lock queued behind
        // other pods' commits) may be slower still for a peer, whose
        // lapsed lease then says nothing (slow-fsync on SQLite declared a
        // live pod dead when only landing counted).
        let quick = now.saturating_duration_since(sent) <= identity.timeout / 4;
        let how = match renewed {
            Ok(true) if quick => Renewal::Steady,
            Ok(true) => Renewal::Slow,
            // Found gone: answered, and the rejoin below starts afresh.
            Ok(false) => Renewal::Slow,
            Err(_) => Renewal::Failed,
        };
        worker.record_renewal(now, how, identity.timeout);
        match renewed {
            Ok(true) => {
                lease.renewed(sent);
                if let Some(h) = &metrics.gray.store_round_trip {
                    h.observe(now.duration_since(sent).as_secs_f64());
                }
                continue;
            }
            Ok(false) => {}
            // The store did not answer (in time): our row may well still
            // be there. Keep our runs: the lease view fences us meanwhile,
            // and only a row gone means peers took them.
            Err(e) => {
                tracing::warn!(error = %e, lease_left_ms = lease.left(now).map(|d| d.as_millis()), "renew failed; retrying");
                continue;
            }
        }
        // Declared dead (paused, partitioned, or our session was killed):
        // peers are taking our runs. Stop ours, rejoin as a new
        // incarnation, and take back what is still ours.
        tracing::error!(pod_id = %worker.pod_id(), "lost liveness: stopping local runs and rejoining");
        worker.set_live(false);
        worker.stop_all_local();
        identity.incarnation = uuid::Uuid::now_v7().to_string();
        // Our old liveness lock goes first: the new incarnation takes the
        // same lock, which the old one, still held by this very process,
        // would keep from it for ever.
        drop(membership);
        membership = loop {
            let sent = Instant::now();
            let joined = tokio::time::timeout(
                renew_hard_deadline(identity.timeout),
                worker
                    .store()
                    .liveness()
                    .join(&identity, identity.timeout * 2),
            )
            .await;
            match joined {
                Ok(Ok(m)) => {
                    worker.record_renewal(Instant::now(), Renewal::Steady, identity.timeout);
                    lease.renewed(sent);
                    worker.set_live(true);
                    break m;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "rejoin failed; retrying"),
                Err(_) => {
                    metrics.inc_deadline("rejoin");
                    tracing::warn!("rejoin hung past its deadline; retrying");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };
        // Let the stopped drivers leave first, or the sweep would skip the
        // very runs it must take back.
        worker.stopped_drivers_gone().await;
        if let Err(e) = worker.startup_sweep().await {
            tracing::warn!(error = %e, "sweep after rejoin failed");
        }
    }
    Some(membership)
}

#[cfg(test)]
mod tests {
    use super::{Renewal, Renewals};
    use std::time::{Duration, Instant};

    const T: Duration = Duration::from_millis(1000);
    const TICK: Duration = Duration::from_millis(200);

    #[test]
    fn leases_speak_only_after_a_whole_timeout_of_steady_renewals() {
        let t0 = Instant::now();
        let mut r = Renewals::default();
        assert!(!r.leases_speak(t0, T), "nothing renewed yet");
        let mut at = t0;
        r.record(at, Renewal::Steady, T);
        for _ in 0..4 {
            at += TICK;
            r.record(at, Renewal::Steady, T);
        }
        assert!(!r.leases_speak(at, T), "800 ms steady is not a timeout");
        at += TICK;
        r.record(at, Renewal::Steady, T);
        assert!(r.leases_speak(at, T), "a whole timeout steady");
        // Our renewer stuck now (the store hangs, or we were paused): the
        // last renewal grows old, and leases fall silent before it returns.
        assert!(!r.leases_speak(at + T / 2 + TICK, T));
    }

    #[test]
    fn a_late_or_failed_renewal_starts_the_timeout_again() {
        let t0 = Instant::now();
        let mut r = Renewals::default();
        let mut at = t0;
        for _ in 0..10 {
            r.record(at, Renewal::Steady, T);
            at += TICK;
        }
        assert!(r.leases_speak(at - TICK, T));
        // A renew that got through 900 ms after the last one: the store
        // (or this pod) stalled; a peer may not have got through either.
        at += Duration::from_millis(700);
        r.record(at, Renewal::Steady, T);
        assert!(!r.leases_speak(at, T));
        for _ in 0..5 {
            at += TICK;
            r.record(at, Renewal::Steady, T);
        }
        assert!(r.leases_speak(at, T), "steady again for a whole timeout");
        r.record(at + TICK, Renewal::Failed, T);
        assert!(!r.leases_speak(at + TICK, T), "a failed renewal");
        assert!(r.renewed_within(at + TICK, TICK), "the last success stands");
    }

    #[test]
    fn locks_fall_silent_for_a_timeout_after_a_failed_renewal() {
        let t0 = Instant::now();
        let mut r = Renewals::default();
        assert!(r.locks_speak(t0, T), "a pod that never failed to renew");
        r.record(t0, Renewal::Slow, T);
        assert!(r.locks_speak(t0, T), "slow is not ended");
        // The server restarted: our session went, and so did the peer's.
        r.record(t0 + TICK, Renewal::Failed, T);
        assert!(!r.locks_speak(t0 + TICK, T));
        r.record(t0 + 2 * TICK, Renewal::Steady, T);
        assert!(
            !r.locks_speak(t0 + T, T),
            "resumed, but the peer may not have yet"
        );
        assert!(r.locks_speak(t0 + TICK + T, T), "a whole timeout since");
    }
}
