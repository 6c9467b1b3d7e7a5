//! The runs one pod drives: claims (compare-and-set on the expected owner),
//! a background driver per claimed run that survives store errors by
//! claiming the run back from itself, the ownership watch that stops the
//! machinery of runs no longer ours, and the startup sweep that resumes
//! what this pod id owned before a restart.
//!
//! The loops that feed it (dispatch, recovery) and the store-wide passes
//! (reaper, janitor) sit beside it in `engine/`; `pod/` only wires them to
//! a process and an HTTP API.

use crate::engine::run::RunState;
use crate::engine::store::{RunFilter, Store, StoreError};
use crate::engine::{Engine, EngineError, Fresh, RunOutcome};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a worker takes work.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Most runs driven at once.
    pub max_runs: usize,
    /// Chaos testing only: keep a run's machinery going after its
    /// ownership (or this pod's liveness) is lost, so the store's epoch
    /// fence is the only thing between a zombie and its successor's data.
    pub keep_zombie_runs: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_runs: 64,
            keep_zombie_runs: false,
        }
    }
}

/// Room kept for one run until it is adopted (or the submission fails).
#[derive(Debug)]
pub struct Reservation(Arc<Worker>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A run this pod is driving now.
#[derive(Debug)]
struct LocalRun {
    epoch: i64,
    cancel: CancellationToken,
    claimed_at: Instant,
    /// Claiming the run back from itself (its epoch is about to move).
    reclaiming: bool,
}

/// One pod's runs, and what every loop of the pod shares.
#[derive(Debug)]
pub struct Worker {
    pub engine: Arc<Engine>,
    pub config: WorkerConfig,
    local: Mutex<HashMap<String, LocalRun>>,
    /// Runs whose machinery a chaos hook stopped while keeping ownership.
    stalled: Mutex<HashSet<String>>,
    /// False from the moment the renew finds our membership gone until we
    /// have rejoined: a pod that is not live itself must not judge its
    /// peers or take their runs (after a store restart every session is
    /// gone at once; the first pod back must not ping-pong runs with a
    /// peer that has not rejoined yet, burning their attempts).
    live: AtomicBool,
    stopping: AtomicBool,
    /// Room promised to submissions being created already claimed.
    reserved: AtomicUsize,
    /// Wakes the dispatcher (a run was just submitted here).
    pub(crate) wake: Notify,
    /// Fires when the pod stops: no new work, runs abandoned in place.
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Only for the `stalling_claims` fault: held by a recovery pass, taken
    /// by the renew, which then waits for the pass as it once did.
    pub(crate) renew_gate: tokio::sync::Mutex<()>,
    /// How steadily our own membership has been renewed, and over which
    /// liveness timeout: kept by the renew loop, read by recovery passes.
    renewals: Mutex<(crate::engine::recovery::Renewals, Duration)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Worker {
    pub fn new(engine: Arc<Engine>, config: WorkerConfig, shutdown: CancellationToken) -> Self {
        Worker {
            engine,
            config,
            local: Mutex::default(),
            stalled: Mutex::default(),
            live: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            reserved: AtomicUsize::new(0),
            wake: Notify::new(),
            shutdown,
            tasks: TaskTracker::new(),
            renew_gate: tokio::sync::Mutex::new(()),
            renewals: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.engine.store
    }

    pub fn pod_id(&self) -> &str {
        &self.engine.config.pod_id
    }

    pub fn runs_active(&self) -> usize {
        lock(&self.local).len()
    }

    /// How many more runs this worker may take now.
    pub fn room(&self) -> usize {
        self.config
            .max_runs
            .saturating_sub(self.runs_active() + self.reserved.load(Ordering::SeqCst))
    }

    /// Room for one run submitted here, to be created already claimed by
    /// this pod ([`Worker::adopt`]); None when the pod is full, stopping or
    /// not live (the run is then created pending, for the dispatchers).
    pub fn reserve(self: &Arc<Self>) -> Option<Reservation> {
        if self.is_stopping() || !self.is_live() {
            return None;
        }
        let taken = self.reserved.fetch_add(1, Ordering::SeqCst) + 1;
        let r = Reservation(self.clone());
        (self.runs_active() + taken <= self.config.max_runs).then_some(r)
    }

    /// Drive a run this pod created already claimed (see
    /// [`Engine::submit_claimed`]), in the room `slot` kept for it.
    pub fn adopt(self: &Arc<Self>, fresh: Fresh, slot: Reservation) {
        self.engine.metrics.inc_dispatch("submitted");
        let (id, epoch) = (fresh.run.id.clone(), fresh.epoch);
        self.spawn_driver(&id, epoch, Some(fresh));
        drop(slot);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Whether this pod holds its membership (see [`Worker::set_live`]).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Set by the renew loop; tests use it to show what a pod that lost
    /// its membership may not do.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
    }

    /// The renew loop's account of one renew of our membership.
    pub fn record_renewal(
        &self,
        at: Instant,
        how: crate::engine::recovery::Renewal,
        timeout: Duration,
    ) {
        let mut r = lock(&self.renewals);
        r.0.record(at, how, timeout);
        r.1 = timeout;
    }

    /// What a peer's lapsed lease and released lock say now (see
    /// [`crate::engine::recovery::Renewals::standing`]); leases never
    /// before the renew loop has said anything.
    pub fn standing(&self) -> crate::engine::store::liveness::Standing {
        let r = lock(&self.renewals);
        let mut s = r.0.standing(Instant::now(), r.1);
        if crate::faults::on(crate::faults::Bug::UnsteadyLeases) {
            s.leases_speak = true;
        }
        s
    }

    /// Wake the dispatcher now (a run was just submitted here).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Whether this worker is driving `run_id` now.
    pub fn drives(&self, run_id: &str) -> bool {
        lock(&self.local).contains_key(run_id)
    }

    /// Stop taking work and fire `shutdown`: every run's machinery stops
    /// where it is, ownership untouched (as a crash would leave it).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        self.tasks.close();
    }

    /// Wait until every run driver has ended (after [`Worker::stop`]).
    pub async fn drained(&self) {
        self.tasks.wait().await;
    }

    /// Claim `run_id` (CAS on `expected_owner`) and drive it in the
    /// background. True when this pod won the claim.
    pub async fn start_run(self: &Arc<Self>, run_id: &str, expected_owner: Option<&str>) -> bool {
        if self.is_stopping() || self.drives(run_id) || lock(&self.stalled).contains(run_id) {
            return false;
        }
        let metrics = &self.engine.metrics;
        let claim = match self
            .store()
            .claim_run(run_id, self.pod_id(), expected_owner)
            .await
        {
            Ok(c) => c,
            Err(e) if e.is_rejection() => {
                // Another pod won the race, or the run ended: not ours.
                metrics.inc_dispatch("lost_race");
                tracing::debug!(run_id, error = %e, "claim not taken");
                return false;
            }
            Err(e) if e.is_lock_busy() => {
                // Another session holds the run's row (a frozen pod inside a
                // transaction): never wait on it; the next pass tries again.
                metrics.inc_dispatch("row_busy");
                tracing::debug!(
                    run_id,
                    "claim deferred: another session holds the run's row"
                );
                return false;
            }
            Err(e) => {
                metrics.inc_dispatch("error");
                tracing::warn!(run_id, error = %e, "claim failed");
                return false;
            }
        };
        metrics.inc_dispatch(if claim.from == RunState::Pending {
            "pending"
        } else {
            "resumed"
        });
        self.spawn_driver(run_id, claim.epoch, None);
        true
    }

    /// Drive `run_id`, claimed by this pod at `epoch`, in the background.
    fn spawn_driver(self: &Arc<Self>, run_id: &str, epoch: i64, fresh: Option<Fresh>) {
        let cancel = self.shutdown.child_token();
        lock(&self.local).insert(
            run_id.to_owned(),
            LocalRun {
                epoch,
                cancel: cancel.clone(),
                claimed_at: Instant::now(),
                reclaiming: false,
            },
        );
        self.engine.metrics.runs_active.inc();
        let me = self.clone();
        let id = run_id.to_owned();
        self.tasks.spawn(async move {
            let epoch = me.drive(&id, epoch, cancel, fresh).await;
            let mut local = lock(&me.local);
            if local.get(&id).is_some_and(|l| l.epoch == epoch) {
                local.remove(&id);
            }
            drop(local);
            me.engine.metrics.runs_active.dec();
        });
    }

    /// Drive a claimed run until it ends or is no longer ours; returns the
    /// epoch it was last driven at.
    ///
    /// A store outage must not strand a run its owner still holds: drive it
    /// again, with backoff. Not at the same epoch: the interrupted step
    /// attempt may have streamed chunks, and its next attempt streams them
    /// again. The pod claims the run back from itself first (CAS on itself
    /// as owner), so the epoch bumps and the claim purges the unfinished
    /// attempt's chunks exactly as a takeover would; attached clients get a
    /// reset.
    async fn drive(
        &self,
        id: &str,
        mut epoch: i64,
        cancel: CancellationToken,
        mut fresh: Option<Fresh>,
    ) -> i64 {
        let mut backoff = Duration::from_millis(250);
        let mut reclaim = false;
        loop {
            if reclaim {
                match self.reclaim(id, epoch).await {
                    Ok(Some(e)) => epoch = e,
                    // Not ours any more, or ended: nothing to drive.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(run_id = %id, error = %e, ?backoff, "re-claiming the run failed; trying again");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {
                                backoff = (backoff * 2).min(Duration::from_secs(1));
                                continue;
                            }
                        }
                    }
                }
            }
            let out = self
                .engine
                .drive_from(id, epoch, cancel.clone(), fresh.take())
                .await;
            match &out {
                Ok(RunOutcome::Abandoned) => {
                    tracing::info!(run_id = %id, "run left in place (pod stopping or ownership moved)")
                }
                Ok(o) => tracing::info!(run_id = %id, outcome = ?o, "run ended here"),
                Err(EngineError::SelfFenced) => {
                    // Our lease ran too short to act on: wait until it
                    // holds again (a renew got through), then drive the run
                    // on at the same epoch. No body began (the attempt went
                    // back), so nothing streamed needs a purge; if another
                    // pod took the run meanwhile, the first write is fenced.
                    tracing::warn!(run_id = %id, "self-fenced: waiting for our lease before driving the run again");
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = self.engine.config.lease.held() => continue,
                    }
                }
                Err(e @ EngineError::Store(se)) if !se.is_rejection() => {
                    tracing::warn!(run_id = %id, error = %e, ?backoff, "run driver stopped on a store error; driving it again");
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                            reclaim = true;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(run_id = %id, error = %e, "run driver stopped; the reaper or the deadline bounds the run")
                }
            }
            break;
        }
        epoch
    }

    /// Claim a run this pod holds at `epoch` back from itself, for driving
    /// it again after a store error: `Ok(Some(new_epoch))`, or `Ok(None)`
    /// when it is no longer ours (another owner, or it ended).
    async fn reclaim(&self, run_id: &str, epoch: i64) -> Result<Option<i64>, StoreError> {
        // The ownership watch must not take the bumped epoch for a theft.
        if let Some(l) = lock(&self.local).get_mut(run_id) {
            l.reclaiming = true;
        }
        let claimed = self
            .store()
            .claim_run(run_id, self.pod_id(), Some(self.pod_id()))
            .await;
        let mut local = lock(&self.local);
        let entry = local.get_mut(run_id).filter(|l| l.epoch == epoch);
        match claimed {
            Ok(c) => {
                tracing::info!(
                    run_id,
                    from = epoch,
                    to = c.epoch,
                    "re-claimed the run from itself to drive it again"
                );
                if let Some(l) = entry {
                    l.epoch = c.epoch;
                    l.claimed_at = Instant::now();
                    l.reclaiming = false;
                }
                Ok(Some(c.epoch))
            }
            Err(e) => {
                if let Some(l) = entry {
                    l.reclaiming = false;
                }
                if e.is_rejection() {
                    tracing::warn!(run_id, error = %e, "not re-claimed: the run is no longer ours");
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Chaos hook: stop a run's machinery here while keeping its ownership,
    /// as if its driver had died on a live pod. Only the reaper (heartbeating
    /// lanes) or the deadline can end it now.
    pub fn stall(&self, run_id: &str) -> bool {
        let local = lock(&self.local);
        let Some(l) = local.get(run_id) else {
            return false;
        };
        lock(&self.stalled).insert(run_id.to_owned());
        l.cancel.cancel();
        true
    }

    /// Stop the machinery of every local run (this pod lost its liveness).
    pub(crate) fn stop_all_local(&self) {
        if self.config.keep_zombie_runs {
            return;
        }
        for l in lock(&self.local).values() {
            l.cancel.cancel();
        }
    }

    /// Wait (at most 5 s) until the drivers [`Worker::stop_all_local`]
    /// stopped have left, so a sweep does not skip the runs it must take
    /// back.
    pub(crate) async fn stopped_drivers_gone(&self) {
        for _ in 0..200 {
            let draining = lock(&self.local).values().any(|l| l.cancel.is_cancelled());
            if !draining {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The runs this pod id owns in the store, running.
    async fn owned(&self) -> Result<Vec<crate::engine::run::RunRecord>, StoreError> {
        self.store()
            .list_runs(&RunFilter {
                state: Some(RunState::Running),
                owner_pod: Some(self.pod_id().to_owned()),
                ..Default::default()
            })
            .await
    }

    /// Resume the runs this pod id owned before it restarted (or before it
    /// lost and regained its membership).
    pub async fn startup_sweep(self: &Arc<Self>) -> Result<(), StoreError> {
        for run in self.owned().await? {
            if self.drives(&run.id) {
                continue;
            }
            tracing::info!(run_id = %run.id, "resuming a run owned by this pod's previous incarnation");
            let me = self.pod_id().to_owned();
            self.start_run(&run.id, Some(&me)).await;
        }
        Ok(())
    }

    /// One pass of the ownership watch: stop local machinery for runs this
    /// pod no longer owns at its epoch (cancelled through the API, claimed
    /// by another pod). They would be fenced at their next write anyway;
    /// this stops them promptly. Returns how many it stopped.
    pub async fn watch_ownership(&self) -> Result<usize, StoreError> {
        let snapshot_at = Instant::now();
        let owned = self.owned().await?;
        let held: HashMap<&str, i64> = owned.iter().map(|r| (r.id.as_str(), r.epoch)).collect();
        self.engine.metrics.tick("ownership");
        if self.config.keep_zombie_runs {
            return Ok(0);
        }
        let mut stopped = 0;
        for (id, l) in lock(&self.local).iter() {
            if !l.reclaiming
                && l.claimed_at < snapshot_at
                && held.get(id.as_str()) != Some(&l.epoch)
                && !l.cancel.is_cancelled()
            {
                tracing::warn!(run_id = %id, epoch = l.epoch, "no longer ours at this epoch: stopping its machinery");
                l.cancel.cancel();
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// The ownership watch, every `every` until `shutdown`.
    pub async fn ownership_watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.watch_ownership().await {
                tracing::warn!(error = %e, "ownership watch cannot read the store");
            }
        }
    }
}
