//! The step loop. For each run this process owns (at an epoch), steps run in
//! topological order; each attempt is made durable before its body runs;
//! output is committed only after success, in one transaction with the step
//! status and the run's actor state; failures are classified (transient:
//! retried with capped backoff; permanent: failed at once); a run deadline
//! cancels the step and everything working for the run, and only after that
//! machinery has stopped is the run marked `timed_out`.

use crate::engine::authority::Authority;
use crate::engine::clock::Clock;
use crate::engine::metrics::{FallbackSource, Metrics};
use crate::engine::run::{RunRecord, RunState, StepStatus};
use crate::engine::store::{
    Adopted, BeginAttempt, NewRun, NextAttempt, StepSuccess, Store, StoreError, TransitionCtx,
};
use crate::engine::switches::{AUTHORITY_DB_FALLBACK, Switches};
use crate::engine::workflow::{
    ErrorClass, StepDef, StepKind, StepTimeouts, WITNESS_URL, Workflow, WorkflowError,
    WorkflowRegistry, redact,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod body;
mod persist;
mod step;

use body::{StateCopies, http_client};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// The pod's own lease is too close to its end (or past it) to start a
    /// step body: peers may be about to take the run (see `engine::lease`).
    #[error("self-fenced: this pod's lease may run out before the step body could act")]
    SelfFenced,
}

/// Tunables of the step loop.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Stable identity of this process; stamped on claims, effects and logs.
    pub pod_id: String,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Pause before retrying an authority lookup whose store query failed.
    pub lookup_retry: Duration,
    /// The chaos runner's witness, for `http` steps whose url starts with
    /// `{{vigil.witness}}` (none outside chaos runs).
    pub witness_url: Option<String>,
    /// Timeouts of steps that set no `timeout_ms` (see [`StepDef::timeout`]).
    pub step_timeouts: StepTimeouts,
    /// Tests only: called with (run id, step id) right after a step's
    /// checkpoint commits, before the step loop goes on (where a stop can
    /// fall between a checkpoint and the next step's body).
    pub after_checkpoint: Option<StepHook>,
    /// Tests only: called with (run id, step id) right after an attempt of
    /// the step is durably started, before its body.
    pub after_attempt_start: Option<StepHook>,
    /// This pod's own view of its liveness lease: no step body starts
    /// without enough of it left (unbounded outside a pod).
    pub lease: Arc<crate::engine::lease::Lease>,
}

/// See [`EngineConfig::after_checkpoint`] and [`EngineConfig::after_attempt_start`].
#[derive(Clone)]
pub struct StepHook(pub Arc<StepFn>);

/// Called with (run id, step id).
pub type StepFn = dyn Fn(&str, &str) + Send + Sync;

impl std::fmt::Debug for StepHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepHook")
    }
}

impl EngineConfig {
    pub fn new(pod_id: impl Into<String>) -> Self {
        EngineConfig {
            pod_id: pod_id.into(),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            lookup_retry: Duration::from_millis(200),
            witness_url: None,
            step_timeouts: StepTimeouts::default(),
            after_checkpoint: None,
            after_attempt_start: None,
            lease: Arc::new(crate::engine::lease::Lease::unbounded()),
        }
    }
}

/// How a call to [`Engine::drive`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The run reached this terminal state (set by us or by a racing writer).
    Finished(RunState),
    /// Cancelled from outside (the pod is stopping): ownership stays in the
    /// store so the recovery path finds the run exactly as after a crash.
    Abandoned,
    /// Another owner claimed the run; this process stopped writing.
    Fenced,
}

/// The engine of one process: store, workflows, authority, switches.
#[derive(Debug)]
pub struct Engine {
    pub store: Arc<dyn Store>,
    pub workflows: Arc<WorkflowRegistry>,
    pub authority: Arc<Authority>,
    pub switches: Switches,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub config: EngineConfig,
    pub lanes: crate::engine::lanes::Lanes,
    http: reqwest::Client,
    /// "This run has a new chunk or a new state", for streams attached in
    /// this process (a wake-up only: readers still read the store).
    changes: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Only used by the `attempts_in_memory` fault injection (seed 004).
    attempts_in_memory: std::sync::Mutex<HashMap<(String, String), i64>>,
    /// Runs' writes waiting for the store to take them (see `persist.rs`):
    /// while any is, this pod cannot write and is not ready.
    writes_waiting: std::sync::atomic::AtomicUsize,
}

/// A run just created already claimed by this pod (see
/// [`Engine::submit_claimed`]): what its first drive needs, known without
/// reading the store (no steps, no chunks, the initial actor state).
#[derive(Debug, Clone)]
pub struct Fresh {
    pub run: RunRecord,
    /// The epoch of the claim made with the run.
    pub epoch: i64,
    /// The first step's attempt, started in the creating transaction.
    pub first: Option<(String, BeginAttempt)>,
}

/// Say so when the store capped the workflow's deadline.
fn warn_if_capped(wf: &Workflow, run: &RunRecord) {
    if let (Some(asked), Some(at)) = (wf.deadline_ms, run.deadline_at_ms) {
        let given = at.saturating_sub(run.created_at_ms);
        if i64::try_from(asked).unwrap_or(i64::MAX) > given {
            tracing::warn!(
                run_id = %run.id,
                workflow = %wf.name,
                deadline_ms = asked,
                capped_to_ms = given,
                "the workflow's deadline_ms exceeds {}: capped",
                crate::engine::settings::RUNS_MAX_DEADLINE_MS
            );
        }
    }
}

enum StepEnd {
    Succeeded,
    /// The run's last step, whose checkpoint also made the run succeed.
    RunSucceeded,
    Failed(String),
    Cancelled,
}

enum LoopEnd {
    Done,
    /// The last checkpoint committed the run's success.
    Succeeded,
    Failed {
        step: String,
        error: String,
    },
    Cancelled,
}

enum BodyErr {
    Fail { class: ErrorClass, msg: String },
    Cancelled,
    Store(StoreError),
}

impl From<StoreError> for BodyErr {
    fn from(e: StoreError) -> Self {
        BodyErr::Store(e)
    }
}

struct BodyOk {
    output: Value,
    run_state: Option<Value>,
}

/// When a run's machinery last moved: an attempt began or ended, a chunk
/// was written, a backoff ran out. The run heartbeat says "alive" only while
/// this is recent, so a run stuck anywhere stops heartbeating.
struct Progress {
    since: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            since: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.since
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }
}

/// What a running step needs to know about its run.
struct RunCtx<'a> {
    run_id: &'a str,
    epoch: i64,
    cancel: &'a CancellationToken,
    progress: &'a Progress,
    next_seq: std::sync::atomic::AtomicI64,
    /// An attempt the previous step's checkpoint already started (same
    /// transaction), for the step it names.
    prestarted: std::sync::Mutex<Option<(String, BeginAttempt)>>,
    /// The run's deadline (store-clock ms): a write waiting for the store
    /// gives up past it.
    deadline_at_ms: Option<i64>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        workflows: Arc<WorkflowRegistry>,
        switches: Switches,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Self {
        let metrics = store.metrics().clone();
        let authority = Arc::new(Authority::new(
            store.clone(),
            switches.clone(),
            metrics.clone(),
        ));
        let http = http_client(&config.step_timeouts);
        Engine {
            store,
            workflows,
            authority,
            switches,
            metrics,
            clock,
            config,
            lanes: crate::engine::lanes::Lanes::builtin(),
            http,
            changes: tokio::sync::broadcast::channel(4096).0,
            attempts_in_memory: std::sync::Mutex::default(),
            writes_waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Whether a run's write is waiting for the store right now (a full
    /// disk, an outage): the pod cannot write, so it is not ready.
    pub fn writes_waiting(&self) -> usize {
        self.writes_waiting
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wake the streams attached to `run_id` in this process.
    pub fn touched(&self, run_id: &str) {
        let _ = self.changes.send(run_id.into());
    }

    /// Wake-ups for changed runs (see [`Engine::touched`]); a lagging
    /// receiver must treat the lag as a wake-up for every run.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }

    /// Replace the lane config (the default is [`Lanes::builtin`]).
    ///
    /// [`Lanes::builtin`]: crate::engine::lanes::Lanes::builtin
    pub fn with_lanes(mut self, lanes: crate::engine::lanes::Lanes) -> Self {
        self.metrics
            .start_lanes(lanes.names().map(|(name, _)| name));
        self.lanes = lanes;
        self
    }

    /// Create a run of `workflow`. A repeated idempotency key returns the
    /// run it created first.
    pub async fn submit(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<RunRecord, EngineError> {
        Ok(self.submit_keyed(workflow, input, idempotency_key).await?.0)
    }

    /// [`Engine::submit`], also saying whether this call created the run.
    pub async fn submit_keyed(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<(RunRecord, bool), EngineError> {
        let (wf, new) = self.new_run(workflow, input, idempotency_key)?;
        let (run, created) = self.store.create_run(new).await?;
        if created {
            warn_if_capped(&wf, &run);
        }
        Ok((run, created))
    }

    /// [`Engine::submit_keyed`] for a pod with room: the run is created
    /// already claimed by this pod, with its first step's attempt started,
    /// in one commit (see [`Store::create_claimed_run`]). With
    /// [`Adopted`], the caller drives the run ([`Engine::drive_from`] with
    /// the returned first attempt); without, the idempotency key had
    /// already created it.
    ///
    /// [`Store::create_claimed_run`]: crate::engine::store::Store::create_claimed_run
    pub async fn submit_claimed(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<(RunRecord, Option<Fresh>), EngineError> {
        let (wf, new) = self.new_run(workflow, input, idempotency_key)?;
        // The first step, when nothing can stop it before its body: it
        // waits for no step, and the seed-004 fault keeps budgets in memory.
        let first = wf
            .steps
            .first()
            .filter(|s| s.after.is_empty())
            .filter(|_| !crate::faults::on(crate::faults::Bug::AttemptsInMemory));
        let (run, adopted) = self
            .store
            .create_claimed_run(
                new,
                &self.config.pod_id,
                first.map(|s| NextAttempt {
                    node_id: &s.id,
                    max_attempts: s.max_attempts(),
                    pod: &self.config.pod_id,
                }),
            )
            .await?;
        let Some(adopted) = adopted else {
            return Ok((run, None));
        };
        warn_if_capped(&wf, &run);
        tracing::info!(run_id = %run.id, epoch = adopted.epoch, pod = %self.config.pod_id, "claimed run at submission");
        let Adopted {
            epoch,
            first: began,
        } = adopted;
        let first = first.zip(began).map(|(s, began)| (s.id.clone(), began));
        Ok((run.clone(), Some(Fresh { run, epoch, first })))
    }

    /// The run `workflow` asks for, and the workflow.
    fn new_run(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<(Workflow, NewRun), EngineError> {
        let wf = self.workflows.get(workflow)?;
        let (heartbeat_timeout_ms, retries_left) = self.lanes.run_policy(&wf.lane);
        // The store gives every run a deadline: this one, capped at
        // runs.max_deadline_ms from now, or that maximum when the workflow
        // sets none.
        let deadline_at_ms = wf.deadline_ms.map(|d| {
            self.clock
                .now_ms()
                .saturating_add(i64::try_from(d).unwrap_or(i64::MAX))
        });
        let new = NewRun {
            workflow: wf.name.clone(),
            lane: wf.lane.clone(),
            input,
            late_completion: wf.late_completion,
            idempotency_key,
            deadline_at_ms,
            heartbeat_timeout_ms,
            retries_left,
        };
        Ok((wf.clone(), new))
    }

    /// Claim the run (compare-and-set on `expected_owner`) and drive it.
    pub async fn run(
        &self,
        run_id: &str,
        expected_owner: Option<&str>,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, EngineError> {
        let claim = self
            .store
            .claim_run(run_id, &self.config.pod_id, expected_owner)
            .await?;
        tracing::info!(run_id, epoch = claim.epoch, pod = %self.config.pod_id, "claimed run");
        self.drive(run_id, claim.epoch, cancel).await
    }

    /// Drive a run this process holds at `epoch` to its end, or until
    /// `cancel` fires, or until another owner fences us out. Called right
    /// after the claim that gave `epoch` (which set the run's heartbeat).
    pub async fn drive(
        &self,
        run_id: &str,
        epoch: i64,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, EngineError> {
        self.drive_from(run_id, epoch, cancel, None).await
    }

    /// [`Engine::drive`], of a run just created already claimed when
    /// `fresh` says so.
    pub async fn drive_from(
        &self,
        run_id: &str,
        epoch: i64,
        cancel: CancellationToken,
        fresh: Option<Fresh>,
    ) -> Result<RunOutcome, EngineError> {
        let outcome = self.drive_inner(run_id, epoch, cancel, fresh).await;
        if !matches!(outcome, Ok(RunOutcome::Abandoned)) {
            self.authority.forget_run(run_id);
        }
        match outcome {
            Err(EngineError::Store(StoreError::Fenced { .. })) => {
                tracing::warn!(
                    run_id,
                    epoch,
                    "fenced: another owner holds this run now; stopped"
                );
                Ok(RunOutcome::Fenced)
            }
            Err(EngineError::Store(StoreError::AlreadyTerminal { state, .. })) => {
                Ok(RunOutcome::Finished(state))
            }
            other => other,
        }
    }

    async fn drive_inner(
        &self,
        run_id: &str,
        epoch: i64,
        cancel: CancellationToken,
        mut fresh: Option<Fresh>,
    ) -> Result<RunOutcome, EngineError> {
        let run = match &fresh {
            Some(f) => f.run.clone(),
            None => self
                .store
                .get_run(run_id)
                .await?
                .ok_or_else(|| StoreError::RunNotFound {
                    run_id: run_id.to_owned(),
                })?,
        };
        let wf = match self.workflows.get(&run.workflow) {
            Ok(wf) => wf.clone(),
            Err(e) => {
                return self
                    .finish(
                        run_id,
                        epoch,
                        RunState::Failed,
                        "unknown workflow",
                        Some(e.to_string()),
                    )
                    .await;
            }
        };
        let run_cancel = cancel.child_token();
        let until_deadline = run
            .deadline_at_ms
            .map(|d| Duration::from_millis(u64::try_from(d - self.clock.now_ms()).unwrap_or(0)));
        let mut spurious_rechecks = 0;
        let progress = Progress::new();
        // Between two marks of progress a healthy run waits at most for one
        // step's timeout (past it the step fails, which is progress) or one
        // backoff (capped, +20% jitter), plus store latency: the run's
        // heartbeat timeout is that allowance.
        let stall_after = |beat_timeout: Duration| {
            wf.steps
                .iter()
                .map(|s| s.timeout(&self.config.step_timeouts))
                .max()
                .unwrap_or_default()
                .saturating_add(self.config.backoff_cap.mul_f64(1.2))
                .saturating_add(beat_timeout)
        };
        loop {
            progress.mark();
            let work = self.steps_loop(&run, &wf, epoch, &run_cancel, &progress, fresh.take());
            tokio::pin!(work);
            let deadline = async {
                match until_deadline {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            // Runs on heartbeating lanes say they are alive while their
            // machinery makes progress; a fenced heartbeat means another
            // owner took over.
            let heartbeat = async {
                let Some(t) = run.heartbeat_timeout_ms else {
                    return std::future::pending().await;
                };
                let every = Duration::from_millis(u64::try_from(t / 4).unwrap_or(250).max(10));
                let stall_after = stall_after(Duration::from_millis(u64::try_from(t).unwrap_or(0)));
                let mut stalled = false;
                // Every drive follows the claim that gave this epoch, and a
                // claim sets the heartbeat in its own commit: no beat at
                // once, unless that stamp is already old. It is the time
                // the statement was written, and a claim held up by a
                // half-open or frozen link can commit seconds later (a
                // soak round's run was reaped 1 s after it began, stamped
                // 5 s before).
                let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
                let mut next = match run.heartbeat_at_ms {
                    Some(at) if self.clock.now_ms().saturating_sub(at) >= every_ms => {
                        Duration::ZERO
                    }
                    _ => every,
                };
                loop {
                    tokio::time::sleep(std::mem::replace(&mut next, every)).await;
                    let idle = progress.idle();
                    if idle > stall_after {
                        // Stuck somewhere no step timeout reaches: stop
                        // saying "alive", so the reaper can end the run.
                        if !std::mem::replace(&mut stalled, true) {
                            tracing::warn!(run_id, idle_ms = %idle.as_millis(), "run made no progress: heartbeat withheld");
                        }
                        continue;
                    }
                    stalled = false;
                    match self.store.heartbeat_run(run_id, epoch).await {
                        Ok(()) => {}
                        Err(e @ StoreError::Fenced { .. }) => return e,
                        Err(e) => tracing::warn!(run_id, error = %e, "run heartbeat failed"),
                    }
                }
            };
            let mut deadline_hit = false;
            let end = tokio::select! {
                end = &mut work => end?,
                _ = deadline => {
                    // Stop every piece of machinery working for the run and
                    // wait for it, so nothing writes after the transition.
                    deadline_hit = true;
                    run_cancel.cancel();
                    let _ = work.await;
                    LoopEnd::Cancelled
                }
                fenced = heartbeat => {
                    run_cancel.cancel();
                    let _ = work.await;
                    return Err(fenced.into());
                }
            };
            return match end {
                LoopEnd::Succeeded => Ok(self.finished(run_id, RunState::Succeeded)),
                LoopEnd::Done => {
                    self.finish(
                        run_id,
                        epoch,
                        RunState::Succeeded,
                        "all steps succeeded",
                        None,
                    )
                    .await
                }
                LoopEnd::Cancelled if deadline_hit => {
                    self.finish(
                        run_id,
                        epoch,
                        RunState::TimedOut,
                        "run deadline passed",
                        Some("run deadline passed".into()),
                    )
                    .await
                }
                LoopEnd::Cancelled => Ok(RunOutcome::Abandoned),
                LoopEnd::Failed { step, error } => {
                    // Post-drain pass: a failure the store proves was a
                    // success is demoted, and the run goes on.
                    if spurious_rechecks == 0 && self.proves_success(run_id, &step).await {
                        spurious_rechecks += 1;
                        self.metrics.inc_spurious("post_drain");
                        tracing::warn!(
                            run_id,
                            step,
                            "spurious failure demoted to success (post-drain)"
                        );
                        continue;
                    }
                    self.finish(
                        run_id,
                        epoch,
                        RunState::Failed,
                        "step failed",
                        Some(format!("step {step}: {error}")),
                    )
                    .await
                }
            };
        }
    }

    async fn finish(
        &self,
        run_id: &str,
        epoch: i64,
        to: RunState,
        reason: &str,
        error: Option<String>,
    ) -> Result<RunOutcome, EngineError> {
        let ctx = TransitionCtx {
            expected_epoch: Some(epoch),
            pod: Some(self.config.pod_id.clone()),
            reason: reason.to_owned(),
            error,
        };
        self.store.transition(run_id, to, &ctx).await?;
        Ok(self.finished(run_id, to))
    }

    /// After the run's terminal transition committed (by [`Engine::finish`]
    /// or with the last step's checkpoint).
    fn finished(&self, run_id: &str, to: RunState) -> RunOutcome {
        self.touched(run_id);
        if to == RunState::Succeeded && crate::faults::on(crate::faults::Bug::DoubleTerminal) {
            self.double_terminal(run_id);
        }
        tracing::info!(run_id, state = %to, "run finished");
        RunOutcome::Finished(to)
    }

    /// The double_terminal fault: ~500 ms after the success, this pod writes
    /// a second terminal transition `succeeded -> failed`, past the guard.
    fn double_terminal(&self, run_id: &str) {
        let store = self.store.clone();
        let pod = self.config.pod_id.clone();
        let run_id = run_id.to_owned();
        tokio::spawn(crate::faults::carry(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let ctx = TransitionCtx {
                expected_epoch: None,
                pod: Some(pod),
                reason: crate::faults::DOUBLE_TERMINAL_REASON.to_owned(),
                error: Some(crate::faults::DOUBLE_TERMINAL_REASON.to_owned()),
            };
            match store
                .transition(&run_id, RunState::Failed, &ctx)
                .await
                .map(|_| ())
            {
                Ok(()) => {
                    tracing::error!(run_id, "fault injection: succeeded run rewritten to failed")
                }
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "fault injection: double_terminal write failed")
                }
            }
        }));
    }

    async fn steps_loop(
        &self,
        run: &RunRecord,
        wf: &Workflow,
        epoch: i64,
        cancel: &CancellationToken,
        progress: &Progress,
        fresh: Option<Fresh>,
    ) -> Result<LoopEnd, EngineError> {
        // A fresh run has no step done, no chunk and its initial state.
        let (done, emitted, copies, prestarted) = match fresh {
            Some(f) => (
                HashMap::new(),
                0,
                Some((run.run_state.clone(), run.run_state.clone())),
                f.first,
            ),
            None => {
                let done: HashMap<String, StepStatus> = self
                    .store
                    .steps(&run.id)
                    .await?
                    .into_iter()
                    .map(|s| (s.node_id, s.status))
                    .collect();
                let emitted = self
                    .store
                    .chunks(&run.id)
                    .await?
                    .iter()
                    .filter(|c| c.epoch == epoch)
                    .count();
                // Both copies fresh from the store: the raw one (what a
                // mutate builds on) never leaves the engine.
                let copies = self.store.run_state_copies(&run.id).await?;
                (done, emitted, copies, None)
            }
        };
        let ctx = RunCtx {
            run_id: &run.id,
            epoch,
            cancel,
            progress,
            next_seq: std::sync::atomic::AtomicI64::new(i64::try_from(emitted).unwrap_or(0)),
            prestarted: std::sync::Mutex::new(prestarted),
            deadline_at_ms: run.deadline_at_ms,
        };
        let (shown, raw) = copies.unwrap_or_else(|| (run.run_state.clone(), run.run_state.clone()));
        let mut run_state = StateCopies { raw, shown };
        let todo: Vec<&StepDef> = wf
            .steps
            .iter()
            .filter(|st| done.get(&st.id) != Some(&StepStatus::Succeeded))
            .collect();
        for (i, step) in todo.iter().enumerate() {
            if cancel.is_cancelled() {
                // The previous checkpoint may have started this step's
                // attempt: its body will not begin, so the attempt goes back.
                let prestarted = ctx
                    .prestarted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some((node, BeginAttempt::Started { attempt })) = prestarted {
                    self.give_back(&ctx, &node, attempt).await?;
                }
                return Ok(LoopEnd::Cancelled);
            }
            let next = todo.get(i + 1).copied();
            match self.run_step(&ctx, step, next, &mut run_state).await? {
                StepEnd::Succeeded => {}
                StepEnd::RunSucceeded => return Ok(LoopEnd::Succeeded),
                StepEnd::Cancelled => return Ok(LoopEnd::Cancelled),
                StepEnd::Failed(error) => {
                    return Ok(LoopEnd::Failed {
                        step: step.id.clone(),
                        error,
                    });
                }
            }
        }
        Ok(LoopEnd::Done)
    }

    /// The raw outputs of a step's predecessors, or why the step cannot run.
    async fn resolve_inputs(
        &self,
        ctx: &RunCtx<'_>,
        step: &StepDef,
    ) -> Result<Result<Map<String, Value>, StepEnd>, EngineError> {
        if step.after.is_empty() {
            return Ok(Ok(Map::new()));
        }
        loop {
            let lookup = self
                .authority
                .outputs(ctx.run_id, &step.after, FallbackSource::Predecessors)
                .await;
            if lookup.errored {
                // The outputs may well exist; the store hiccuped. Wait, do not
                // guess, and do not spend an attempt of the step.
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(Err(StepEnd::Cancelled)),
                    _ = tokio::time::sleep(self.config.lookup_retry) => continue,
                }
            }
            if !lookup.missing.is_empty() && lookup.disabled {
                // With authority.db_fallback off a miss stays a miss, and a
                // step never runs on inputs it does not have (a fan-in that
                // "succeeds" on nulls is the seed-000 bug): it fails
                // permanently, before any attempt, naming what is missing.
                return Ok(Err(StepEnd::Failed(format!(
                    "predecessor outputs unavailable: {} {} not in this process and \
                     {AUTHORITY_DB_FALLBACK} is off (turn it on to read them from the store)",
                    lookup.missing.join(", "),
                    if lookup.missing.len() == 1 {
                        "is"
                    } else {
                        "are"
                    },
                ))));
            }
            if !lookup.missing.is_empty() {
                return Ok(Err(StepEnd::Failed(format!(
                    "predecessor output unavailable: {} has no raw output in the store",
                    lookup.missing.join(", ")
                ))));
            }
            let mut inputs = Map::new();
            for p in &step.after {
                if let Some(v) = lookup.found.get(p) {
                    inputs.insert(p.clone(), v.clone());
                }
            }
            return Ok(Ok(inputs));
        }
    }

    async fn proves_success(&self, run_id: &str, node_id: &str) -> bool {
        let lookup = self
            .authority
            .outputs(run_id, &[node_id.to_owned()], FallbackSource::SpuriousCheck)
            .await;
        lookup.found.contains_key(node_id)
    }

    /// The step ran out of attempts. Before calling it failed, ask the
    /// authority whether the step in fact succeeded (the catch path).
    async fn exhausted(
        &self,
        ctx: &RunCtx<'_>,
        step: &StepDef,
        error: String,
    ) -> Result<StepEnd, EngineError> {
        if self.proves_success(ctx.run_id, &step.id).await {
            self.metrics.inc_spurious("in_catch");
            tracing::warn!(run_id = ctx.run_id, step = %step.id, "spurious max-retries failure demoted to success");
            return Ok(StepEnd::Succeeded);
        }
        self.store
            .record_step_failure(ctx.run_id, &step.id, ctx.epoch, &error, true)
            .await?;
        Ok(StepEnd::Failed(error))
    }
}
