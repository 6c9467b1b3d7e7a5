//! The durable store: one [`Store`] trait, two sqlx implementations.
//!
//! SQLite is the embedded default (a file in a data dir, WAL,
//! `synchronous=FULL`); PostgreSQL is for production. Both run the same SQL
//! wherever the dialects agree; the few places they differ are spelled out in
//! each backend's `dialect` module. The behavioural suite in `tests/engine.rs`
//! runs against both.
//!
//! This module holds the [`Store`] trait, its error and its argument and
//! record types, and opening a store from a URL or path. Beside it:
//! `sql` (the implementation both backends expand), `statements` (the SQL
//! text and the decisions of its writes, as ordinary code), `rows` (the row
//! shapes and their decoding), `kv` (the audited key-value tables behind
//! switches and settings), [`ops`] (the ops console's queries, off the engine's
//! trait), and the backends, `sqlite` and [`postgres`] (with `pg_clock`,
//! the PostgreSQL server's clock).

use crate::engine::run::{
    Chunk, LateCompletion, RunRecord, RunState, StepRecord, TransitionRecord,
};
use async_trait::async_trait;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

pub mod deadline;
pub(crate) mod group;
mod kv;
pub mod liveness;
pub mod ops;
mod pg_clock;
mod pg_liveness;
pub mod postgres;
mod rows;
mod sql;
mod sql_tx;
pub mod sqlite;
mod statements;
pub(crate) mod turns;

pub use ops::{ActiveCount, ConsoleEvent, EventCursor, EventKind, OpsStore, RunSummary};
pub use postgres::{PgStore, redact_url};
pub use sqlite::SqliteStore;

/// Everything that can go wrong talking to the store. Rejections that are
/// part of the protocol (already terminal, fenced) are typed so callers can
/// answer them cleanly instead of retrying.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run {run_id} not found")]
    RunNotFound { run_id: String },
    #[error("run {run_id} is already terminal ({state}); {to} rejected")]
    AlreadyTerminal {
        run_id: String,
        state: RunState,
        to: RunState,
    },
    #[error("run {run_id}: transition {from} -> {to} is not allowed")]
    IllegalTransition {
        run_id: String,
        from: RunState,
        to: RunState,
    },
    #[error(
        "run {run_id}: write fenced, held epoch {held} but the run is at epoch {current} ({state})"
    )]
    Fenced {
        run_id: String,
        held: i64,
        current: i64,
        state: RunState,
    },
    #[error(
        "run {run_id}: claim lost, expected owner {} but found {}",
        expected.as_deref().unwrap_or("none"),
        found.as_deref().unwrap_or("none")
    )]
    ClaimLost {
        run_id: String,
        expected: Option<String>,
        found: Option<String>,
    },
    #[error("run {run_id}: its owner {owner} is registered as live; only it may take the run back")]
    OwnerAlive { run_id: String, owner: String },
    #[error("corrupt row in {table} ({key}): {problem}")]
    Corrupt {
        table: &'static str,
        key: String,
        problem: String,
    },
    #[error("bad store URL {url:?}: {problem}")]
    BadUrl { url: String, problem: String },
    /// The store gave no answer within this call's client-side deadline (a
    /// half-open or frozen link); the call may or may not have landed.
    #[error("the store gave no answer to {op} within {} (no reply: a hung or half-open link)", crate::human::duration(*after))]
    Deadline {
        op: &'static str,
        after: std::time::Duration,
    },
    #[error("store unreachable at {target}: {}", crate::errors::db_text(source))]
    Unreachable {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the store at {target} has schema version {found}, newer than this vigil knows ({known}): \
         it was written by a newer Vigil; upgrade this binary (nothing was changed)"
    )]
    NewerSchema {
        target: String,
        found: i64,
        known: i64,
    },
    /// A verb that reads or flips found no Vigil store at its target (and
    /// created nothing): a mistyped path, an empty database, another file.
    #[error("{what} ({done}; {fix})")]
    NoStore {
        /// Where and why: "no Vigil store at data/vigil.dbb".
        what: String,
        /// "nothing was created" or "nothing was changed".
        done: &'static str,
        /// What the operator can do about it.
        fix: String,
    },
    #[error("migrating the store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store query failed: {}", crate::errors::db_text(.0))]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// Another session holds the row (PostgreSQL `lock_not_available`: a
    /// `NOWAIT` claim, or a wait past the session's `lock_timeout`). Not a
    /// rejection and not an outage: the same write can succeed later.
    pub fn is_lock_busy(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => e.code().as_deref() == Some("55P03"),
            _ => false,
        }
    }

    /// The store could not take the call now, and the same call can succeed
    /// later: no answer in time, no connection, an I/O error, a full disk,
    /// a server shutting down or restarting, a lock or serialization
    /// conflict. Not a rejection, not a bad row, not a bug in a statement:
    /// those fail the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Deadline { .. } | StoreError::Unreachable { .. } => true,
            StoreError::Db(e) => db_error_is_transient(e),
            _ => false,
        }
    }

    /// A protocol rejection: retrying the same write cannot succeed.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            StoreError::AlreadyTerminal { .. }
                | StoreError::IllegalTransition { .. }
                | StoreError::Fenced { .. }
                | StoreError::ClaimLost { .. }
                | StoreError::OwnerAlive { .. }
                | StoreError::RunNotFound { .. }
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// See [`StoreError::is_transient`].
fn db_error_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            let code = d.code();
            let code = code.as_deref().unwrap_or_default();
            // PostgreSQL: connection exceptions (08), insufficient resources
            // (53: a full disk, out of memory, too many connections),
            // operator intervention (57: shutdown, crash, cannot connect
            // now; not 57014, a cancelled statement), system I/O (58),
            // serialization and deadlock (40001, 40P01) and a busy lock
            // (55P03). SQLite: busy, locked, I/O error, full, cannot open,
            // with their extended codes (the low byte).
            // PostgreSQL's SQLSTATEs are five characters; SQLite's codes
            // (extended ones included) have at most four digits.
            if code.len() == 5 {
                code.starts_with("08")
                    || code.starts_with("53")
                    || (code.starts_with("57") && code != "57014")
                    || code.starts_with("58")
                    || matches!(code, "40001" | "40P01" | "55P03")
            } else {
                code.parse::<i64>()
                    .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14))
            }
        }
        _ => false,
    }
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workflow: String,
    pub lane: String,
    pub input: serde_json::Value,
    pub late_completion: LateCompletion,
    pub idempotency_key: Option<String>,
    pub deadline_at_ms: Option<i64>,
    /// From the lane config: None when the lane does not heartbeat.
    pub heartbeat_timeout_ms: Option<i64>,
    pub retries_left: i64,
}

/// Who asks for a transition, and with what authority.
#[derive(Debug, Clone, Default)]
pub struct TransitionCtx {
    /// When set, the write is fenced: rejected unless the run is still at this epoch.
    pub expected_epoch: Option<i64>,
    pub pod: Option<String>,
    pub reason: String,
    pub error: Option<String>,
}

/// The result of a successful claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub epoch: i64,
    pub from: RunState,
}

/// What happened when an owner asked to start a step attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginAttempt {
    /// The attempt counter is durable at `attempt` (1-based) before the body runs.
    Started { attempt: i64 },
    /// The step already succeeded: never execute it again.
    AlreadySucceeded,
    /// `attempts` already reached the budget: no further execution.
    Exhausted { attempts: i64 },
}

/// A committed step success.
#[derive(Debug, Clone)]
pub struct StepSuccess<'a> {
    pub run_id: &'a str,
    pub node_id: &'a str,
    pub epoch: i64,
    pub output: &'a serde_json::Value,
    pub output_raw: &'a serde_json::Value,
    /// The run's actor state after the step, committed in the same
    /// transaction: the shown copy (secret paths redacted) ...
    pub run_state: &'a serde_json::Value,
    /// ... and the raw one, which never leaves the engine.
    pub run_state_raw: &'a serde_json::Value,
    /// Start the next step's attempt in the same transaction (one commit
    /// instead of two between sequential steps).
    pub then_begin: Option<NextAttempt<'a>>,
    /// The run's last step: the run succeeds in the same transaction
    /// (`running -> succeeded`, logged as by this pod), so a run of N steps
    /// ends at its Nth commit.
    pub then_succeed: Option<&'a str>,
}

/// A run its submitting pod claimed in the transaction that created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// The epoch of that claim.
    pub epoch: i64,
    /// What starting the first step's attempt gave, when asked to.
    pub first: Option<BeginAttempt>,
}

/// A [`StepSuccess`] owned (serialized), as the group commit queues it.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    pub run_id: String,
    pub node_id: String,
    pub epoch: i64,
    pub output: String,
    pub output_raw: String,
    pub run_state: String,
    pub run_state_raw: String,
    /// `(node_id, max_attempts, pod)` of the next step's attempt.
    pub then_begin: Option<(String, i64, String)>,
    /// The pod the run succeeds as.
    pub then_succeed: Option<String>,
}

impl From<StepSuccess<'_>> for Checkpoint {
    fn from(s: StepSuccess<'_>) -> Self {
        let json = |v: &serde_json::Value, empty: &str| {
            serde_json::to_string(v).unwrap_or_else(|_| empty.into())
        };
        Checkpoint {
            run_id: s.run_id.to_owned(),
            node_id: s.node_id.to_owned(),
            epoch: s.epoch,
            output: json(s.output, "null"),
            output_raw: json(s.output_raw, "null"),
            run_state: json(s.run_state, "{}"),
            run_state_raw: json(s.run_state_raw, "{}"),
            then_begin: s
                .then_begin
                .map(|n| (n.node_id.to_owned(), n.max_attempts, n.pod.to_owned())),
            then_succeed: s.then_succeed.map(str::to_owned),
        }
    }
}

/// The attempt a checkpoint starts for the step after it.
#[derive(Debug, Clone, Copy)]
pub struct NextAttempt<'a> {
    pub node_id: &'a str,
    pub max_attempts: i64,
    pub pod: &'a str,
}

/// A kill switch as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SwitchRow {
    pub name: String,
    pub enabled: bool,
    pub updated_at_ms: i64,
    pub updated_by: String,
    pub reason: String,
}

/// One audit row: every switch change, who, when, old, new and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SwitchAudit {
    pub name: String,
    pub old: Option<bool>,
    pub new: bool,
    pub who: String,
    pub reason: String,
    pub at_ms: i64,
}

/// One row of `settings` (see `crate::engine::settings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingRow {
    pub name: String,
    pub value: i64,
    pub updated_at_ms: i64,
    pub updated_by: String,
    pub reason: String,
}

/// One audit row: every setting change, who, when, old, new and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingAudit {
    pub name: String,
    pub old: Option<i64>,
    pub new: i64,
    pub who: String,
    pub reason: String,
    pub at_ms: i64,
}

/// Filters for [`Store::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub lane: Option<String>,
    pub owner_pod: Option<String>,
    pub limit: Option<i64>,
}

/// An executed step side effect: the record an external system would keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EffectRecord {
    pub run_id: String,
    pub node_id: String,
    pub attempt: i64,
    pub epoch: i64,
    pub pod: String,
    /// When it was recorded (set by the store; ignored on insert).
    pub at_ms: i64,
}

/// What one reaper pass did: runs timed out and retries queued, with lanes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReapReport {
    /// `(run_id, lane)` of every run timed out.
    pub timed_out: Vec<(String, String)>,
    /// `(new_run_id, lane, retry_of)` of every retry queued.
    pub retried: Vec<(String, String, String)>,
}

/// One row of the claim log: who took a run from whom, at which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClaimRecord {
    pub run_id: String,
    pub from_pod: Option<String>,
    pub to_pod: String,
    pub epoch: i64,
    pub at_ms: i64,
}

/// One `(epoch, node_id, attempt)` of a run's stream: the chunks one step
/// attempt wrote at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StreamPartRow {
    pub epoch: i64,
    pub node_id: String,
    pub attempt: i64,
}

/// Counters a test can read to prove how many queries a path issued.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Batched `output_raw` lookups (one SQL statement each).
    pub output_raw_queries: std::sync::atomic::AtomicU64,
}

/// One connection pool's use at a glance: `busy` of at most `max`
/// connections are out (a pool whose busy equals its max makes callers
/// wait), `idle` are open and free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUse {
    /// `data` or `control`.
    pub pool: &'static str,
    pub max: u32,
    pub busy: u32,
    pub idle: u32,
}

impl PoolUse {
    /// The use of a sqlx pool.
    pub fn of<DB: sqlx::Database>(pool: &'static str, p: &sqlx::Pool<DB>) -> PoolUse {
        let size = p.size();
        let idle = u32::try_from(p.num_idle()).unwrap_or(u32::MAX).min(size);
        PoolUse {
            pool,
            max: p.options().get_max_connections(),
            busy: size - idle,
            idle,
        }
    }
}

/// The store behind the engine. Every owner write carries the epoch it holds
/// and is rejected with [`StoreError::Fenced`] once the epoch has moved on.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    fn stats(&self) -> &StoreStats;
    /// How full this store's connection pools are right now (for
    /// `vigil_store_pool_connections`).
    fn pools(&self) -> Vec<PoolUse>;
    /// The metrics registry this store counts transitions and fences in.
    fn metrics(&self) -> &Arc<crate::engine::metrics::Metrics>;
    /// The clock every time this store writes or compares is read from; the
    /// engine on top of it reads the same one (deadlines).
    fn clock(&self) -> &Arc<dyn crate::engine::clock::Clock>;

    /// Create a run; with an idempotency key already used, return the run it
    /// created first. The flag says whether this call created the run.
    async fn create_run(&self, run: NewRun) -> StoreResult<(RunRecord, bool)>;
    /// [`Store::create_run`], and in the same transaction the claim by
    /// `pod` (logged as any claim: a `run_claims` row and `pending ->
    /// running`) and, with `first`, that step's first attempt: a run
    /// submitted to a pod with room costs one commit before its first
    /// step's body. None in place of [`Adopted`]: the idempotency key had
    /// already created the run (returned as it is; nothing claimed).
    async fn create_claimed_run(
        &self,
        run: NewRun,
        pod: &str,
        first: Option<NextAttempt<'_>>,
    ) -> StoreResult<(RunRecord, Option<Adopted>)>;
    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>>;
    /// The ids of runs whose id starts with `prefix`, in id order, at most
    /// `limit` (a scan: for operators' short ids, not for hot paths).
    async fn run_ids_with_prefix(&self, prefix: &str, limit: i64) -> StoreResult<Vec<String>>;
    async fn list_runs(&self, filter: &RunFilter) -> StoreResult<Vec<RunRecord>>;

    /// Take ownership of a run with a compare-and-set on the previous owner
    /// (`IS NOT DISTINCT FROM`). A pending run becomes running; a running
    /// run changes hands. Either way the epoch is bumped, and in the same
    /// transaction the stream chunks of older epochs are purged except those
    /// of each step's succeeded attempt (the step never runs again, so its
    /// output stays): nobody attaching after the claim can see what an
    /// unfinished attempt streamed, and nobody loses a finished step's output.
    async fn claim_run(
        &self,
        run_id: &str,
        pod: &str,
        expected_owner: Option<&str>,
    ) -> StoreResult<Claim>;

    /// The one way to change a run's state: a single guarded UPDATE plus a
    /// transition-log row, in one transaction.
    async fn transition(
        &self,
        run_id: &str,
        to: RunState,
        ctx: &TransitionCtx,
    ) -> StoreResult<TransitionRecord>;

    async fn transitions(&self, run_id: &str) -> StoreResult<Vec<TransitionRecord>>;

    async fn steps(&self, run_id: &str) -> StoreResult<Vec<StepRecord>>;

    /// The run's actor state as (shown, raw): `run_state` (secret paths
    /// redacted; the copy on [`RunRecord`]) and `run_state_raw` (what
    /// execution builds on; the shown copy for rows written before it
    /// existed). None: no such run.
    async fn run_state_copies(
        &self,
        run_id: &str,
    ) -> StoreResult<Option<(serde_json::Value, serde_json::Value)>>;

    /// Make the next attempt durable before it runs, and record the
    /// execution it starts (an `effects` row for `pod`) in the same
    /// transaction: one commit per step start, and an execution is never
    /// recorded without its attempt, nor an attempt without its execution.
    async fn begin_attempt(
        &self,
        run_id: &str,
        node_id: &str,
        epoch: i64,
        max_attempts: i64,
        pod: &str,
    ) -> StoreResult<BeginAttempt>;

    /// Commit output (both copies), status and run state in one transaction.
    /// With `then_begin`, also what starting the next step's attempt gave;
    /// with `then_succeed`, the run's success too. Concurrent checkpoints
    /// share transactions (group commit): each returns once its own commit
    /// is durable.
    async fn commit_step_success(&self, s: StepSuccess<'_>) -> StoreResult<Option<BeginAttempt>>;

    /// Give back attempt `attempt` of a step whose body never began (the
    /// run was cancelled between the attempt's commit and the body), fenced
    /// like every owner write: the step's attempt count goes back down (its
    /// row goes if this was its first attempt) and the attempt's `effects`
    /// row is deleted, so both count only bodies that began. A no-op unless
    /// `attempt` is the step's latest, still running attempt and was started
    /// at `epoch`.
    async fn return_attempt(
        &self,
        run_id: &str,
        node_id: &str,
        epoch: i64,
        attempt: i64,
    ) -> StoreResult<()>;

    /// Record a failed attempt: no output, no run-state change.
    async fn record_step_failure(
        &self,
        run_id: &str,
        node_id: &str,
        epoch: i64,
        error: &str,
        final_failure: bool,
    ) -> StoreResult<()>;

    /// One batched query for the raw outputs of `node_ids`. A node that is
    /// not succeeded, or whose `output_raw` is NULL (written before the raw
    /// column existed), is absent from the map: a miss, never a null hit.
    async fn step_outputs_raw(
        &self,
        run_id: &str,
        node_ids: &[String],
    ) -> StoreResult<HashMap<String, serde_json::Value>>;

    /// Append a chunk written by attempt `attempt` of step `node_id` (both
    /// None for chunks that belong to no step attempt: a claim purges them).
    /// Fenced by `epoch`.
    async fn append_chunk(
        &self,
        run_id: &str,
        epoch: i64,
        seq: i64,
        part: Option<(&str, i64)>,
        data: &str,
    ) -> StoreResult<()>;
    async fn chunks(&self, run_id: &str) -> StoreResult<Vec<Chunk>>;
    /// The run and its chunks strictly after the cursor `(epoch, seq)` (at
    /// most `limit`, in stream order), read in one statement: a stream's
    /// tail learns both in one round trip, from one snapshot, so when the
    /// run is terminal in this read every chunk it will ever have is in the
    /// page or before the cursor (the fence rejects later writes). `None`:
    /// no such run.
    async fn run_and_chunks(
        &self,
        run_id: &str,
        epoch: i64,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Option<(RunRecord, Vec<Chunk>)>>;
    /// Chunks strictly after the cursor `(epoch, seq)`, in stream order.
    async fn chunks_after(
        &self,
        run_id: &str,
        epoch: i64,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<Chunk>>;

    /// The parts of older epochs a client must keep when the stream goes on
    /// at `epoch`: the distinct `(epoch, node_id, attempt)` of the chunks
    /// with an epoch below `epoch` and a step attempt, in stream order. After
    /// a claim's purge these are exactly the chunks of succeeded attempts.
    async fn kept_parts(&self, run_id: &str, epoch: i64) -> StoreResult<Vec<StreamPartRow>>;

    /// Ids of pending runs, oldest first: the dispatch queue.
    async fn pending_runs(&self, limit: i64) -> StoreResult<Vec<String>>;

    /// The executions of a run's steps (the side effect an external system
    /// sees), one row each, written by `begin_attempt`.
    async fn effects(&self, run_id: &str) -> StoreResult<Vec<EffectRecord>>;

    /// This store's liveness mechanism (advisory locks or leases).
    fn liveness(&self) -> &dyn liveness::Liveness;

    /// The owner's progress signal for runs on heartbeating lanes (fenced).
    async fn heartbeat_run(&self, run_id: &str, epoch: i64) -> StoreResult<()>;

    /// Running runs whose owner is not in the pod registry: `(run_id, owner)`.
    async fn orphaned_runs(&self, limit: i64) -> StoreResult<Vec<(String, Option<String>)>>;

    /// Time out every running run whose lane heartbeats, whose heartbeat
    /// is older than its lane's timeout and whose owner is a registered pod
    /// (a dead owner's runs are recovery's to resume and the janitor's to
    /// mark lost, not the reaper's to race them for), and queue a retry for those with
    /// retries left and no active sibling: atomically, in one statement on
    /// PostgreSQL (a CTE) and one transaction on SQLite.
    async fn reap_stale(&self, by: &str) -> StoreResult<ReapReport>;

    /// Time out running runs more than `grace_ms` past their deadline (their
    /// owner should have; the bound for lanes that do not heartbeat).
    async fn time_out_overdue(&self, grace_ms: i64, by: &str) -> StoreResult<Vec<String>>;

    /// Mark `lost` the running runs whose owner is gone and that nobody
    /// resumed within `lost_after_ms` of becoming orphans (the owner's latest
    /// `pod_deaths.detected_at`, or the run's last write if later), in one
    /// transaction.
    async fn mark_lost(&self, lost_after_ms: i64, by: &str) -> StoreResult<Vec<String>>;

    /// The claim log of a run, oldest first.
    async fn claims(&self, run_id: &str) -> StoreResult<Vec<ClaimRecord>>;

    async fn switches(&self) -> StoreResult<Vec<SwitchRow>>;
    /// Set a switch and write its audit row in one transaction.
    async fn set_switch(
        &self,
        name: &str,
        enabled: bool,
        who: &str,
        reason: &str,
    ) -> StoreResult<SwitchAudit>;
    async fn switch_audit(&self, name: &str) -> StoreResult<Vec<SwitchAudit>>;
    /// Every setting that has a row (see `crate::engine::settings`).
    async fn settings(&self) -> StoreResult<Vec<SettingRow>>;
    /// Set a setting and write its audit row in one transaction.
    async fn set_setting(
        &self,
        name: &str,
        value: i64,
        who: &str,
        reason: &str,
    ) -> StoreResult<SettingAudit>;
    async fn setting_audit(&self, name: &str) -> StoreResult<Vec<SettingAudit>>;
}

/// Whether opening a store may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the store if it is missing (a SQLite file and its directory,
    /// Vigil's tables in an empty PostgreSQL database): `vigil pod`, `vigil
    /// demo`, `vigil bench`, the chaos runner, and verbs given `--create`.
    Create,
    /// Only an existing Vigil store: a missing SQLite file, a file or
    /// database without Vigil's tables is refused with
    /// [`StoreError::NoStore`] and nothing is created or changed. A Vigil
    /// store at an older schema version is still migrated.
    Existing,
}

/// What a refusal of [`OpenMode::Existing`] tells the operator to do (the
/// console, which has no --create, says its own).
pub(crate) const CREATE_HINT: &str = "vigil pod creates one, or pass --create";

/// What a run id an operator typed names: the short form of a run id is
/// any prefix of it, as git's and docker's are.
#[derive(Debug, Clone, PartialEq)]
pub enum IdMatch {
    /// Exactly one run, as read (callers need not read it again).
    One(Box<RunRecord>),
    /// No run.
    None,
    /// Several runs (the first few, in id order; `more` if there are more).
    Many { candidates: Vec<String>, more: bool },
}

impl IdMatch {
    /// Why `given` names no one run, for an operator: `run id "01a" is a
    /// prefix of several runs: 01a2…-aaaa, 01a2…-bbbb (and more); give
    /// more of it`.
    pub fn ambiguous(given: &str, candidates: &[String], more: bool) -> String {
        format!(
            "run id {given:?} is a prefix of several runs: {}{}; give more of it",
            candidates.join(", "),
            if more { " (and more)" } else { "" }
        )
    }
}

/// Resolve `given` (a full run id or a prefix of one) in `store`: an exact
/// id is one indexed read; only a miss is looked up as a prefix (a scan,
/// then the read of the one run it found).
pub async fn resolve_run_id(store: &dyn Store, given: &str) -> StoreResult<IdMatch> {
    const SHOWN: usize = 10;
    if let Some(run) = store.get_run(given).await? {
        return Ok(IdMatch::One(Box::new(run)));
    }
    let prefix = given.to_ascii_lowercase();
    // Run ids are UUIDs: anything else is no prefix of one (and no LIKE
    // pattern reaches the store).
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Ok(IdMatch::None);
    }
    let mut ids = store
        .run_ids_with_prefix(&prefix, i64::try_from(SHOWN).unwrap_or(10) + 1)
        .await?;
    Ok(match ids.len() {
        0 => IdMatch::None,
        1 => match store.get_run(&ids.remove(0)).await? {
            Some(run) => IdMatch::One(Box::new(run)),
            None => IdMatch::None,
        },
        n => {
            ids.truncate(SHOWN);
            IdMatch::Many {
                candidates: ids,
                more: n > SHOWN,
            }
        }
    })
}

/// Open a store from a URL or path: `postgres://...` / `postgresql://...`,
/// `sqlite://path`, or a plain path to a SQLite file: created if missing
/// ([`OpenMode::Create`]). Migrations are applied before the store is returned.
pub async fn open(target: &str) -> StoreResult<Arc<dyn Store>> {
    open_mode(target, OpenMode::Create).await
}

/// [`open`] that refuses, creating nothing, when there is no Vigil store at
/// `target`: for verbs that only read or flip.
pub async fn open_existing(target: &str) -> StoreResult<Arc<dyn Store>> {
    open_mode(target, OpenMode::Existing).await
}

/// [`open`] or [`open_existing`], by `mode`, on the store's own clock: the
/// server's for PostgreSQL, the host's for SQLite (one host, one clock).
pub async fn open_mode(target: &str, mode: OpenMode) -> StoreResult<Arc<dyn Store>> {
    Ok(open_ops(target, mode).await?)
}

/// [`open_mode`] for the ops console, which also reads the store's
/// overviews ([`OpsStore`]).
pub(crate) async fn open_ops(target: &str, mode: OpenMode) -> StoreResult<Arc<dyn OpsStore>> {
    open_clocked(
        target,
        mode,
        None,
        Arc::new(crate::engine::metrics::Metrics::new()),
        postgres::DATA_POOL,
    )
    .await
}

/// [`open`] for a pod: a PostgreSQL store's data pool holds `data_pool`
/// connections (`--store-pool-size`; SQLite has no pool to size).
pub async fn open_pod(target: &str, data_pool: u32) -> StoreResult<Arc<dyn Store>> {
    Ok(open_clocked(
        target,
        OpenMode::Create,
        None,
        Arc::new(crate::engine::metrics::Metrics::new()),
        data_pool,
    )
    .await?)
}

/// [`open`] with an injected clock and metrics registry.
pub async fn open_with(
    target: &str,
    clock: Arc<dyn crate::engine::clock::Clock>,
    metrics: Arc<crate::engine::metrics::Metrics>,
) -> StoreResult<Arc<dyn Store>> {
    Ok(open_clocked(
        target,
        OpenMode::Create,
        Some(clock),
        metrics,
        postgres::DATA_POOL,
    )
    .await?)
}

/// The database file of a SQLite store location (a path or `sqlite://`
/// URL); `None` for any other.
pub fn sqlite_path(target: &str) -> Option<&std::path::Path> {
    if let Some(path) = target.strip_prefix("sqlite://") {
        Some(std::path::Path::new(path))
    } else if target.contains("://") || target.is_empty() {
        None
    } else {
        Some(std::path::Path::new(target))
    }
}

/// [`open_mode`] with an injected clock and metrics registry.
pub async fn open_with_mode(
    target: &str,
    mode: OpenMode,
    clock: Arc<dyn crate::engine::clock::Clock>,
    metrics: Arc<crate::engine::metrics::Metrics>,
) -> StoreResult<Arc<dyn Store>> {
    Ok(open_clocked(target, mode, Some(clock), metrics, postgres::DATA_POOL).await?)
}

async fn open_clocked(
    target: &str,
    mode: OpenMode,
    clock: Option<Arc<dyn crate::engine::clock::Clock>>,
    metrics: Arc<crate::engine::metrics::Metrics>,
    data_pool: u32,
) -> StoreResult<Arc<dyn OpsStore>> {
    if target.starts_with("postgres://") || target.starts_with("postgresql://") {
        Ok(Arc::new(
            PgStore::connect_mode(target, mode, clock, metrics, data_pool).await?,
        ))
    } else if let Some(path) = target.strip_prefix("sqlite://") {
        let path = std::path::Path::new(path);
        let clock = clock.unwrap_or_else(crate::engine::clock::system);
        Ok(Arc::new(
            SqliteStore::open_mode(path, mode, clock, metrics).await?,
        ))
    } else if target.contains("://") {
        Err(StoreError::BadUrl {
            url: target.to_owned(),
            problem: "unsupported scheme; use postgres://, postgresql://, sqlite:// or a file path"
                .into(),
        })
    } else if target.is_empty() {
        Err(StoreError::BadUrl {
            url: target.to_owned(),
            problem: "empty store location".into(),
        })
    } else {
        let path = std::path::Path::new(target);
        let clock = clock.unwrap_or_else(crate::engine::clock::system);
        Ok(Arc::new(
            SqliteStore::open_mode(path, mode, clock, metrics).await?,
        ))
    }
}

/// Turn "a migration we do not have was applied" into [`StoreError::NewerSchema`].
pub(crate) fn migrate_error(
    target: &str,
    migrator: &sqlx::migrate::Migrator,
    e: sqlx::migrate::MigrateError,
) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::VersionMissing(found) => StoreError::NewerSchema {
            target: target.to_owned(),
            found,
            known: migrator.iter().map(|m| m.version).max().unwrap_or(0),
        },
        other => StoreError::Migrate(other),
    }
}
