//! `vigil pod`: one engine pod. Several pods share one store.
//!
//! A pod claims pending runs (compare-and-set on owner NULL), resumes the
//! runs its own previous incarnation owned (same stable pod id), drives each
//! with the engine, and serves the HTTP API. On SIGTERM it stops taking work,
//! stops its runs' local machinery *without* touching their ownership (so
//! the recovery path finds them exactly as after a SIGKILL) and exits within
//! a bounded time.

pub mod api;
mod hooks;
pub mod stream;

use crate::engine::clock;
use crate::engine::lanes::Lanes;
use crate::engine::run::RunState;
use crate::engine::store::{self, RunFilter, Store, StoreError};
use crate::engine::switches::Switches;
use crate::engine::workflow::WorkflowRegistry;
use crate::engine::{Engine, EngineConfig, RunOutcome};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, clap::Args)]
pub struct PodArgs {
    /// Store: a SQLite file path, sqlite://PATH, or postgres://USER@HOST:PORT/DB; created
    /// (file, directory, Vigil's tables) if missing, and migrated.
    #[arg(long, env = "VIGIL_STORE", default_value = "data/vigil.db")]
    pub store: String,
    /// Address of the HTTP API.
    #[arg(long, env = "VIGIL_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Stable identity of this pod. Required in production: a random id per
    /// restart would strand this pod's runs.
    #[arg(long, env = "VIGIL_POD_ID")]
    pub pod_id: Option<String>,
    /// Production mode: refuse to start without --pod-id (also VIGIL_ENV=production).
    #[arg(long)]
    pub production: bool,
    /// Directory of workflow definitions.
    #[arg(long, env = "VIGIL_WORKFLOWS", default_value = "fixtures/workflows")]
    pub workflows: PathBuf,
    /// Most runs this pod drives at once.
    #[arg(long, env = "VIGIL_MAX_RUNS", default_value_t = 64)]
    pub max_runs: usize,
    /// How often the dispatcher looks for pending runs (ms).
    #[arg(long, env = "VIGIL_DISPATCH_INTERVAL_MS", default_value_t = 100)]
    pub dispatch_interval_ms: u64,
    /// Bound on graceful shutdown (ms): after it, remaining tasks are dropped.
    #[arg(long, env = "VIGIL_SHUTDOWN_GRACE_MS", default_value_t = 5000)]
    pub shutdown_grace_ms: u64,
    /// Lane config (TOML, `[lanes.NAME]` tables) over the built-in lanes.
    #[arg(long, env = "VIGIL_LANES")]
    pub lanes: Option<PathBuf>,
    /// Liveness timeout (ms): the SQLite lease TTL, PostgreSQL's idle_session_timeout
    /// on the liveness connection. Renewed every fifth of it.
    #[arg(long, env = "VIGIL_LIVENESS_TIMEOUT_MS", default_value_t = 2000)]
    pub liveness_timeout_ms: u64,
    /// How often this pod probes its peers and looks for orphaned runs (ms).
    #[arg(long, env = "VIGIL_PROBE_INTERVAL_MS", default_value_t = 200)]
    pub probe_interval_ms: u64,
    /// How often the stale-run reaper runs (ms).
    #[arg(long, env = "VIGIL_REAPER_INTERVAL_MS", default_value_t = 500)]
    pub reaper_interval_ms: u64,
    /// How far past its deadline a run may be before the reaper times it out (ms).
    #[arg(long, env = "VIGIL_DEADLINE_GRACE_MS", default_value_t = 2000)]
    pub deadline_grace_ms: u64,
    /// Default timeout of `http` steps that set no `timeout_ms` (ms): the
    /// whole request, connect to last byte.
    #[arg(long, env = "VIGIL_HTTP_STEP_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_step_timeout_ms: u64,
    /// What a step that sets no `timeout_ms` gets over its own duration (a
    /// sleep's ms, an emit's interval between chunks), and the whole bound
    /// of the instant kinds (ms).
    #[arg(long, env = "VIGIL_STEP_TIMEOUT_SLACK_MS", default_value_t = 30_000)]
    pub step_timeout_slack_ms: u64,
    /// How often the janitor runs (ms).
    #[arg(long, env = "VIGIL_JANITOR_INTERVAL_MS", default_value_t = 1000)]
    pub janitor_interval_ms: u64,
    /// An orphaned run nobody resumed for this long is marked lost (ms).
    #[arg(long, env = "VIGIL_LOST_AFTER_MS", default_value_t = 300_000)]
    pub lost_after_ms: u64,
    /// Serve fault-injection endpoints under /v1/chaos (tests and chaos runs only).
    #[arg(long, env = "VIGIL_CHAOS_HOOKS")]
    pub chaos_hooks: bool,
    /// Chaos testing only: when this pod loses a run's ownership or its own
    /// liveness, keep the run's machinery going, so the store's epoch fence
    /// is the only thing between a zombie and its successor's data.
    #[arg(long, env = "VIGIL_CHAOS_KEEP_ZOMBIE_RUNS")]
    pub chaos_keep_zombie_runs: bool,
    /// Chaos testing only: the runner's witness (http://HOST:PORT), called by
    /// `http` steps whose url starts with `{{vigil.witness}}`.
    #[arg(long, env = "VIGIL_WITNESS_URL")]
    pub witness_url: Option<String>,
    /// Require `Authorization: Bearer <token>` on every change (submit,
    /// cancel, events, switches, chaos hooks); the token is this file's
    /// contents, trimmed. Reads stay open.
    #[arg(long, env = "VIGIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Exit (abruptly, like a crash) when this process is gone: a cluster
    /// runner that dies, even by SIGKILL, leaves no pods behind.
    #[arg(long, env = "VIGIL_PARENT_PID")]
    pub parent_pid: Option<i32>,
}

impl PodArgs {
    fn liveness_timeout(&self) -> Duration {
        Duration::from_millis(self.liveness_timeout_ms.max(200))
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

/// The state every handler and loop of one pod shares.
#[derive(Debug)]
pub struct Pod {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    /// Only for the `stalling_claims` fault: held by a recovery pass, taken
    /// by the renew, which then waits for the pass as it once did.
    renew_gate: tokio::sync::Mutex<()>,
    /// False from the moment the renew finds our membership gone until we
    /// have rejoined: a pod that is not live itself must not judge its
    /// peers or take their runs (after a store restart every session is
    /// gone at once; the first pod back must not ping-pong runs with a
    /// peer that has not rejoined yet, burning their attempts).
    live: AtomicBool,
    pub pod_id: String,
    pub args: PodArgs,
    /// The bearer token changes need, when `--token-file` is given.
    pub token: Option<String>,
    local: Mutex<HashMap<String, LocalRun>>,
    wake: Notify,
    /// Fires when the pod stops: no new work, runs abandoned in place.
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
    stopping: AtomicBool,
    /// Runs whose machinery a chaos hook stopped while keeping ownership.
    stalled: Mutex<std::collections::HashSet<String>>,
    /// Wall-clock ms of each loop's last tick, for /readyz and the console.
    pub dispatcher_tick_ms: AtomicI64,
    pub watch_tick_ms: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read a bearer token file: its contents, trimmed; empty is an error.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let t = t.trim().to_owned();
    if t.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(t)
}

/// Resolve the pod id: stable identity, required in production.
pub fn resolve_pod_id(given: Option<&str>, production: bool) -> Result<String> {
    match given.map(str::trim) {
        Some(id) if !id.is_empty() => {
            if id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                bail!("--pod-id {id:?}: use at most 128 printable characters without spaces");
            }
            Ok(id.to_owned())
        }
        _ if production => bail!(
            "refusing to start: production mode needs a stable pod id. Set --pod-id or \
             VIGIL_POD_ID (e.g. the StatefulSet pod name); a random id per restart would \
             strand this pod's runs"
        ),
        _ => {
            let id = format!("pod-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
            tracing::warn!(pod_id = %id, "no --pod-id given: generated one (not stable across restarts; required with --production)");
            Ok(id)
        }
    }
}

impl Pod {
    pub fn runs_active(&self) -> usize {
        lock(&self.local).len()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Wake the dispatcher now (a run was just submitted here).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Claim `run_id` (CAS on `expected_owner`) and drive it in the
    /// background. True when this pod won the claim.
    async fn start_run(self: &Arc<Self>, run_id: &str, expected_owner: Option<&str>) -> bool {
        if self.is_stopping()
            || lock(&self.local).contains_key(run_id)
            || lock(&self.stalled).contains(run_id)
        {
            return false;
        }
        let claim = match self
            .store
            .claim_run(run_id, &self.pod_id, expected_owner)
            .await
        {
            Ok(c) => c,
            Err(e) if e.is_rejection() => {
                // Another pod won the race, or the run ended: not ours.
                self.engine.metrics.inc_dispatch("lost_race");
                tracing::debug!(run_id, error = %e, "claim not taken");
                return false;
            }
            Err(e) if e.is_lock_busy() => {
                // Another session holds the run's row (a frozen pod inside a
                // transaction): never wait on it; the next pass tries again.
                self.engine.metrics.inc_dispatch("row_busy");
                tracing::debug!(
                    run_id,
                    "claim deferred: another session holds the run's row"
                );
                return false;
            }
            Err(e) => {
                self.engine.metrics.inc_dispatch("error");
                tracing::warn!(run_id, error = %e, "claim failed");
                return false;
            }
        };
        self.engine
            .metrics
            .inc_dispatch(if claim.from == RunState::Pending {
                "pending"
            } else {
                "resumed"
            });
        let cancel = self.shutdown.child_token();
        lock(&self.local).insert(
            run_id.to_owned(),
            LocalRun {
                epoch: claim.epoch,
                cancel: cancel.clone(),
                claimed_at: Instant::now(),
                reclaiming: false,
            },
        );
        self.engine.metrics.runs_active.inc();
        let me = self.clone();
        let id = run_id.to_owned();
        self.tasks.spawn(async move {
            // A store outage must not strand a run its owner still holds:
            // drive it again, with backoff. Not at the same epoch: the
            // interrupted step attempt may have streamed chunks, and its
            // next attempt streams them again. The pod claims the run back
            // from itself first (CAS on itself as owner), so the epoch bumps
            // and the claim purges the unfinished attempt's chunks exactly
            // as a takeover would; attached clients get a reset.
            let mut backoff = Duration::from_millis(250);
            let mut epoch = claim.epoch;
            let mut reclaim = false;
            loop {
                if reclaim {
                    match me.reclaim(&id, epoch).await {
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
                let out = me.engine.drive(&id, epoch, cancel.clone()).await;
                match &out {
                    Ok(RunOutcome::Abandoned) => tracing::info!(run_id = %id, "run left in place (pod stopping or ownership moved)"),
                    Ok(o) => tracing::info!(run_id = %id, outcome = ?o, "run ended here"),
                    Err(e @ crate::engine::EngineError::Store(se)) if !se.is_rejection() => {
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
                    Err(e) => tracing::warn!(run_id = %id, error = %e, "run driver stopped; the reaper or the deadline bounds the run"),
                }
                break;
            }
            let mut local = lock(&me.local);
            if local.get(&id).is_some_and(|l| l.epoch == epoch) {
                local.remove(&id);
            }
            drop(local);
            me.engine.metrics.runs_active.dec();
        });
        true
    }

    /// Claim a run this pod holds at `epoch` back from itself, for driving
    /// it again after a store error: `Ok(Some(new_epoch))`, or `Ok(None)`
    /// when it is no longer ours (another owner, or it ended).
    async fn reclaim(
        &self,
        run_id: &str,
        epoch: i64,
    ) -> Result<Option<i64>, crate::engine::store::StoreError> {
        // The ownership watch must not take the bumped epoch for a theft.
        if let Some(l) = lock(&self.local).get_mut(run_id) {
            l.reclaiming = true;
        }
        let claimed = self
            .store
            .claim_run(run_id, &self.pod_id, Some(&self.pod_id))
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

    fn stop_all_local(&self) {
        if self.args.chaos_keep_zombie_runs {
            return;
        }
        for l in lock(&self.local).values() {
            l.cancel.cancel();
        }
    }

    /// Probe every peer; claim the runs of the dead (CAS on the dead owner).
    /// Not while this pod's own membership is gone (until it has rejoined).
    async fn probe_and_recover(self: &Arc<Self>) {
        if !self.live.load(Ordering::SeqCst) {
            return;
        }
        let liveness = self.store.liveness();
        let peers = match liveness.pods().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pod registry");
                return;
            }
        };
        for peer in peers.iter().filter(|p| p.pod_id != self.pod_id) {
            match liveness.probe(peer, &self.pod_id).await {
                Ok(Some(death)) => {
                    let latency =
                        (death.detected_at_ms - death.last_heartbeat_at_ms).max(0) as f64 / 1000.0;
                    self.engine.metrics.pod_deaths.inc();
                    self.engine.metrics.detection_latency.observe(latency);
                    tracing::warn!(pod = %death.pod_id, incarnation = %death.incarnation, latency_s = latency, "peer pod is dead");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(pod = %peer.pod_id, error = %e, "probe failed"),
            }
        }
        if self.is_stopping()
            || !self
                .engine
                .switches
                .enabled(crate::engine::switches::RECOVERY_ENABLED)
        {
            return;
        }
        let room = self.args.max_runs.saturating_sub(self.runs_active());
        if room == 0 {
            return;
        }
        match self
            .store
            .orphaned_runs(i64::try_from(room).unwrap_or(64))
            .await
        {
            Ok(orphans) => {
                for (id, owner) in orphans {
                    if self.start_run(&id, owner.as_deref()).await {
                        self.engine.metrics.inc_claim("won");
                        tracing::info!(run_id = %id, from = ?owner, "recovered an orphaned run");
                    } else {
                        self.engine.metrics.inc_claim("lost");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list orphaned runs"),
        }
    }

    /// Keep our membership alive (on a task of its own), probe peers and
    /// recover orphans. Returns the membership so the caller can leave after
    /// the runs have stopped.
    async fn liveness_loop(
        self: Arc<Self>,
        membership: Box<dyn crate::engine::liveness::Membership>,
        identity: crate::engine::liveness::Identity,
        stop: CancellationToken,
    ) -> Box<dyn crate::engine::liveness::Membership> {
        // The renew never waits behind recovery: a claim, a probe or a
        // registry read that blocks (a row another session holds, a slow
        // server) must not let our own liveness session go silent, or peers
        // declare a live pod dead (issue 14, item 4).
        let renewer = tokio::spawn(self.clone().renew_loop(membership, identity, stop.clone()));
        let mut probe =
            tokio::time::interval(Duration::from_millis(self.args.probe_interval_ms.max(10)));
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = probe.tick() => {
                    // The stalling_claims fault: the renew waits for this pass.
                    let _inline = if crate::faults::on(crate::faults::Bug::StallingClaims) {
                        Some(self.renew_gate.lock().await)
                    } else {
                        None
                    };
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = self.probe_and_recover() => {}
                    }
                    self.engine.metrics.tick("liveness");
                }
            }
        }
        match renewer.await {
            Ok(m) => m,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Renew our membership every timeout/5 until `stop`; when it is found
    /// lost, stop local runs, rejoin as a new incarnation and take back what
    /// is still ours.
    async fn renew_loop(
        self: Arc<Self>,
        mut membership: Box<dyn crate::engine::liveness::Membership>,
        mut identity: crate::engine::liveness::Identity,
        stop: CancellationToken,
    ) -> Box<dyn crate::engine::liveness::Membership> {
        let mut renew = tokio::time::interval(identity.timeout / 5);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = renew.tick() => {}
            }
            let renewed = {
                let _inline = if crate::faults::on(crate::faults::Bug::StallingClaims) {
                    Some(self.renew_gate.lock().await)
                } else {
                    None
                };
                membership.renew().await
            };
            if matches!(renewed, Ok(true)) {
                continue;
            }
            // Declared dead (paused, partitioned, or our session was
            // killed): peers are taking our runs. Stop ours, rejoin as
            // a new incarnation, and take back what is still ours.
            tracing::error!(pod_id = %self.pod_id, "lost liveness: stopping local runs and rejoining");
            self.live.store(false, Ordering::SeqCst);
            self.stop_all_local();
            identity.incarnation = uuid::Uuid::now_v7().to_string();
            loop {
                match self
                    .store
                    .liveness()
                    .join(&identity, identity.timeout * 2)
                    .await
                {
                    Ok(m) => {
                        membership = m;
                        self.live.store(true, Ordering::SeqCst);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "rejoin failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return membership,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
            // Let the stopped drivers leave `local` first, or the
            // sweep would skip the very runs it must take back.
            for _ in 0..200 {
                let draining = lock(&self.local).values().any(|l| l.cancel.is_cancelled());
                if !draining {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if let Err(e) = self.startup_sweep().await {
                tracing::warn!(error = %e, "sweep after rejoin failed");
            }
        }
        membership
    }

    async fn reaper_loop(self: Arc<Self>) {
        use crate::engine::switches::REAPER_ENABLED;
        let every = Duration::from_millis(self.args.reaper_interval_ms.max(10));
        let grace = i64::try_from(self.args.deadline_grace_ms).unwrap_or(i64::MAX);
        // "Stale" means something only to an observer that could have seen
        // a heartbeat: after this pod lost the store, wait one full heartbeat
        // timeout of watching before reaping, so owners driving their runs
        // again after the same outage get to say so.
        let longest = self
            .engine
            .lanes
            .names()
            .filter(|(_, l)| l.heartbeat)
            .map(|(_, l)| Duration::from_millis(l.heartbeat_timeout_ms))
            .max()
            .unwrap_or_default();
        let mut watching_since = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            if !self.engine.switches.enabled(REAPER_ENABLED) {
                continue;
            }
            if watching_since.elapsed() < longest {
                // Still earning the right to call a heartbeat missing; a
                // cheap read tells whether the store is there at all.
                if self.store.switches().await.is_err() {
                    watching_since = std::time::Instant::now();
                }
                continue;
            }
            match self.store.reap_stale(&self.pod_id).await {
                Ok(r) if !r.timed_out.is_empty() => tracing::warn!(
                    timed_out = ?r.timed_out, retried = ?r.retried, "reaper timed out stale runs"
                ),
                Ok(_) => {}
                Err(e) => {
                    watching_since = std::time::Instant::now();
                    tracing::warn!(error = %e, "reaper pass failed");
                }
            }
            match self.store.time_out_overdue(grace, &self.pod_id).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(runs = ?ids, "reaper timed out runs past their deadline")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "deadline pass failed"),
            }
            self.engine.metrics.tick("reaper");
        }
    }

    async fn janitor_loop(self: Arc<Self>) {
        use crate::engine::switches::JANITOR_ENABLED;
        let every = Duration::from_millis(self.args.janitor_interval_ms.max(10));
        let lost_after = i64::try_from(self.args.lost_after_ms).unwrap_or(i64::MAX);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            if !self.engine.switches.enabled(JANITOR_ENABLED) {
                continue;
            }
            match self.store.mark_lost(lost_after, &self.pod_id).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(runs = ?ids, "janitor marked runs lost")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "janitor pass failed"),
            }
            self.engine.metrics.tick("janitor");
        }
    }

    /// Resume the runs this pod id owned before it restarted.
    async fn startup_sweep(self: &Arc<Self>) -> Result<(), StoreError> {
        let mine = self
            .store
            .list_runs(&RunFilter {
                state: Some(RunState::Running),
                owner_pod: Some(self.pod_id.clone()),
                ..Default::default()
            })
            .await?;
        for run in mine {
            if lock(&self.local).contains_key(&run.id) {
                continue;
            }
            tracing::info!(run_id = %run.id, "resuming a run owned by this pod's previous incarnation");
            self.start_run(&run.id, Some(&self.pod_id)).await;
        }
        Ok(())
    }

    async fn dispatcher(self: Arc<Self>) {
        let every = Duration::from_millis(self.args.dispatch_interval_ms.max(10));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
            let room = self.args.max_runs.saturating_sub(self.runs_active());
            if room == 0 {
                continue;
            }
            match self
                .store
                .pending_runs(i64::try_from(room).unwrap_or(64))
                .await
            {
                Ok(ids) => {
                    for id in ids {
                        self.start_run(&id, None).await;
                    }
                    self.dispatcher_tick_ms
                        .store(clock::wall_ms(), Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dispatcher cannot read pending runs; retrying")
                }
            }
        }
    }

    /// Stop local machinery for runs this pod no longer owns at its epoch
    /// (cancelled through the API, claimed by another pod): they would be
    /// fenced at their next write anyway; this stops them promptly.
    async fn ownership_watch(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let snapshot_at = Instant::now();
            let owned = match self
                .store
                .list_runs(&RunFilter {
                    state: Some(RunState::Running),
                    owner_pod: Some(self.pod_id.clone()),
                    ..Default::default()
                })
                .await
            {
                Ok(runs) => runs,
                Err(e) => {
                    tracing::warn!(error = %e, "ownership watch cannot read the store");
                    continue;
                }
            };
            let held: HashMap<&str, i64> = owned.iter().map(|r| (r.id.as_str(), r.epoch)).collect();
            if self.args.chaos_keep_zombie_runs {
                continue;
            }
            for (id, l) in lock(&self.local).iter() {
                if !l.reclaiming
                    && l.claimed_at < snapshot_at
                    && held.get(id.as_str()) != Some(&l.epoch)
                {
                    tracing::warn!(run_id = %id, epoch = l.epoch, "no longer ours at this epoch: stopping its machinery");
                    l.cancel.cancel();
                }
            }
            self.watch_tick_ms
                .store(clock::wall_ms(), Ordering::Relaxed);
        }
    }
}

/// Build a pod from its arguments: open the store, load workflows, read the
/// switches. Fails with a message naming what is wrong.
pub async fn build(args: PodArgs, shutdown: CancellationToken) -> Result<Arc<Pod>> {
    let production = args.production
        || std::env::var("VIGIL_ENV").is_ok_and(|v| v.eq_ignore_ascii_case("production"));
    let pod_id = resolve_pod_id(args.pod_id.as_deref(), production)?;
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let workflows = WorkflowRegistry::load_dir(&args.workflows)
        .with_context(|| format!("loading workflows from {}", args.workflows.display()))?;
    let store = store::open(&args.store)
        .await
        .context("opening the store")?;
    let lanes = match &args.lanes {
        Some(f) => Lanes::load(f)?,
        None => Lanes::builtin(),
    };
    lanes.check(&workflows)?;
    let switches = Switches::from_env()?;
    switches
        .refresh(store.as_ref())
        .await
        .context("reading kill switches")?;
    switches.spawn_watcher(store.clone(), shutdown.clone());
    warn_capped_deadlines(store.as_ref(), &workflows).await;
    let engine = Arc::new(
        Engine::new(
            store.clone(),
            Arc::new(workflows),
            switches,
            // The store's clock, not this host's: deadlines are compared
            // with times other pods wrote.
            store.clock().clone(),
            EngineConfig {
                witness_url: args.witness_url.clone(),
                step_timeouts: crate::engine::workflow::StepTimeouts {
                    http: Duration::from_millis(args.http_step_timeout_ms.max(1)),
                    slack: Duration::from_millis(args.step_timeout_slack_ms.max(1)),
                },
                ..EngineConfig::new(pod_id.clone())
            },
        )
        .with_lanes(lanes),
    );
    Ok(Arc::new(Pod {
        engine,
        store,
        renew_gate: tokio::sync::Mutex::new(()),
        live: AtomicBool::new(true),
        pod_id,
        args,
        token,
        local: Mutex::default(),
        wake: Notify::new(),
        shutdown,
        tasks: TaskTracker::new(),
        stopping: AtomicBool::new(false),
        stalled: Mutex::default(),
        dispatcher_tick_ms: AtomicI64::new(0),
        watch_tick_ms: AtomicI64::new(0),
    }))
}

/// Say at startup which workflows ask for a deadline longer than the store's
/// `runs.max_deadline_ms` (their runs get the maximum; each submit says so too).
async fn warn_capped_deadlines(store: &dyn Store, workflows: &WorkflowRegistry) {
    use crate::engine::settings::{self, RUNS_MAX_DEADLINE_MS};
    let max = match settings::get(store, RUNS_MAX_DEADLINE_MS).await {
        Ok(max) => max,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read {RUNS_MAX_DEADLINE_MS}");
            return;
        }
    };
    for name in workflows.names() {
        let Ok(wf) = workflows.get(name) else {
            continue;
        };
        if let Some(d) = wf
            .deadline_ms
            .filter(|d| i64::try_from(*d).unwrap_or(i64::MAX) > max)
        {
            tracing::warn!(
                workflow = %wf.name,
                deadline_ms = d,
                max_ms = max,
                "the workflow's deadline_ms exceeds {RUNS_MAX_DEADLINE_MS}: its runs get the maximum"
            );
        }
    }
}

/// Run a pod until `shutdown` fires, then stop within the grace bound.
pub async fn serve(args: PodArgs, shutdown: CancellationToken) -> Result<()> {
    let listen = args.listen;
    let pod = build(args, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr()?;
    tracing::info!(pod_id = %pod.pod_id, addr = %local_addr, store = pod.store.backend(), "pod up");
    let identity = crate::engine::liveness::Identity {
        pod_id: pod.pod_id.clone(),
        incarnation: uuid::Uuid::now_v7().to_string(),
        addr: Some(format!("http://{local_addr}")),
        timeout: pod.args.liveness_timeout(),
    };
    let membership = pod
        .store
        .liveness()
        .join(&identity, identity.timeout * 3)
        .await
        .context("joining the pod registry")?;
    // One line on stdout that scripts (and the chaos runner) wait for.
    println!("vigil pod {} listening on http://{local_addr}", pod.pod_id);

    pod.startup_sweep().await.context("startup sweep")?;
    let loops = TaskTracker::new();
    loops.spawn(pod.clone().dispatcher());
    loops.spawn(pod.clone().ownership_watch());
    loops.spawn(pod.clone().reaper_loop());
    loops.spawn(pod.clone().janitor_loop());
    loops.close();
    let liveness_stop = CancellationToken::new();
    let liveness = tokio::spawn(pod.clone().liveness_loop(
        membership,
        identity,
        liveness_stop.clone(),
    ));

    if let Some(parent) = pod.args.parent_pid {
        tokio::spawn(async move {
            let pid = nix::unistd::Pid::from_raw(parent);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if nix::sys::signal::kill(pid, None).is_err() {
                    tracing::error!(parent, "parent process is gone: exiting");
                    std::process::exit(70);
                }
            }
        });
    }
    let app = api::router(pod.clone());
    // Small responses and SSE events must not sit behind Nagle's algorithm
    // waiting for a delayed ACK (40 ms a response on Linux loopback).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let served = server.await;

    // Stop taking work; leave every run exactly where a crash would.
    pod.stopping.store(true, Ordering::Relaxed);
    shutdown.cancel();
    pod.tasks.close();
    let grace = Duration::from_millis(pod.args.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        pod.tasks.wait().await;
        loops.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace elapsed with tasks still running; exiting anyway"
        );
    }
    // Only now, with our runs stopped, give up liveness: peers recover our
    // runs by the same path as after a SIGKILL.
    liveness_stop.cancel();
    match liveness.await {
        Ok(m) => {
            if let Err(e) = m.leave().await {
                tracing::warn!(error = %e, "leaving the registry failed; peers will find us dead anyway");
            }
        }
        Err(e) => tracing::warn!(error = %e, "liveness loop ended abnormally"),
    }
    tracing::info!(pod_id = %pod.pod_id, "pod stopped; its runs keep their owner for recovery");
    served.context("HTTP server")?;
    Ok(())
}

/// Cancel `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        token.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_a_missing_pod_id() {
        let err = resolve_pod_id(None, true).unwrap_err().to_string();
        assert!(
            err.contains("--pod-id") && err.contains("VIGIL_POD_ID"),
            "{err}"
        );
        assert!(resolve_pod_id(Some("  "), true).is_err());
        assert_eq!(resolve_pod_id(Some("web-0"), true).unwrap(), "web-0");
        assert!(resolve_pod_id(None, false).unwrap().starts_with("pod-"));
        assert!(resolve_pod_id(Some("a b"), false).is_err());
    }
}
