//! The engine's row shapes: one `#[derive(sqlx::FromRow)]` struct per query
//! shape, decoded by column name on both backends, and the conversions into
//! the engine's records. A column that needs parsing (JSON text, a run state,
//! a step status, a late-completion policy) is parsed here, and a bad value
//! is a [`StoreError::Corrupt`] naming the table, the row and the value.
//!
//! Types that decode on both backends: integers are `i64` (SQLite INTEGER,
//! PostgreSQL BIGINT), JSON is text, and booleans are `bool` (SQLite stores
//! them as INTEGER 0/1, which sqlx decodes as `bool`).

use super::liveness::{Death, PodRow};
use super::{ClaimRecord, EffectRecord, StoreError, StoreResult, StreamPartRow};
use crate::engine::run::{
    Chunk, LateCompletion, RunRecord, RunState, StepRecord, StepStatus, TransitionRecord,
};

/// Columns of `runs` as [`RunRow`] reads them.
macro_rules! run_cols {
    () => {
        "id, workflow, lane, input, state, owner_pod, epoch, late_completion, run_state, \
         idempotency_key, error, deadline_at, created_at, updated_at, heartbeat_timeout_ms, \
         heartbeat_at, retries_left, family, retry_of"
    };
}
pub(crate) use run_cols;

/// A run by id.
pub(crate) const RUN_BY_ID: &str = concat!("SELECT ", run_cols!(), " FROM runs WHERE id = $1");

/// The run an idempotency key created.
pub(crate) const RUN_BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    run_cols!(),
    " FROM runs WHERE idempotency_key = $1"
);

pub(crate) fn status_from_str(table: &'static str, key: &str, s: &str) -> StoreResult<StepStatus> {
    StepStatus::parse(s).ok_or_else(|| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        problem: format!("unknown step status {s:?}"),
    })
}

pub(crate) fn state_from_str(table: &'static str, key: &str, s: &str) -> StoreResult<RunState> {
    s.parse().map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        problem: format!("{e}"),
    })
}

pub(crate) fn json_from_str(
    table: &'static str,
    key: &str,
    column: &str,
    s: &str,
) -> StoreResult<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        problem: format!("column {column} is not valid JSON: {e}"),
    })
}

/// A late-completion policy as `runs.late_completion` stores it.
pub(crate) fn late_str(p: LateCompletion) -> &'static str {
    match p {
        LateCompletion::Reject => "reject",
        LateCompletion::Accept => "accept",
    }
}

fn late_from_str(table: &'static str, key: &str, s: &str) -> StoreResult<LateCompletion> {
    match s {
        "reject" => Ok(LateCompletion::Reject),
        "accept" => Ok(LateCompletion::Accept),
        other => Err(StoreError::Corrupt {
            table,
            key: key.to_owned(),
            problem: format!("unknown late_completion policy {other:?}"),
        }),
    }
}

/// A `runs` row: `SELECT` [`run_cols!`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RunRow {
    id: String,
    workflow: String,
    lane: String,
    input: String,
    state: String,
    owner_pod: Option<String>,
    epoch: i64,
    late_completion: String,
    run_state: String,
    idempotency_key: Option<String>,
    error: Option<String>,
    deadline_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    heartbeat_timeout_ms: Option<i64>,
    heartbeat_at: Option<i64>,
    retries_left: i64,
    family: Option<String>,
    retry_of: Option<String>,
}

impl TryFrom<RunRow> for RunRecord {
    type Error = StoreError;

    fn try_from(r: RunRow) -> StoreResult<RunRecord> {
        let late_completion = late_from_str("runs", &r.id, &r.late_completion)?;
        let input = json_from_str("runs", &r.id, "input", &r.input)?;
        let state = state_from_str("runs", &r.id, &r.state)?;
        let run_state = json_from_str("runs", &r.id, "run_state", &r.run_state)?;
        Ok(RunRecord {
            id: r.id,
            workflow: r.workflow,
            lane: r.lane,
            input,
            state,
            owner_pod: r.owner_pod,
            epoch: r.epoch,
            late_completion,
            run_state,
            idempotency_key: r.idempotency_key,
            error: r.error,
            deadline_at_ms: r.deadline_at,
            created_at_ms: r.created_at,
            updated_at_ms: r.updated_at,
            heartbeat_timeout_ms: r.heartbeat_timeout_ms,
            heartbeat_at_ms: r.heartbeat_at,
            retries_left: r.retries_left,
            family: r.family,
            retry_of: r.retry_of,
        })
    }
}

/// A `run_transitions` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TransitionRow {
    run_id: String,
    from_state: String,
    to_state: String,
    epoch: i64,
    pod: Option<String>,
    reason: String,
    late: bool,
    at: i64,
}

impl TryFrom<TransitionRow> for TransitionRecord {
    type Error = StoreError;

    fn try_from(r: TransitionRow) -> StoreResult<TransitionRecord> {
        Ok(TransitionRecord {
            from: state_from_str("run_transitions", &r.run_id, &r.from_state)?,
            to: state_from_str("run_transitions", &r.run_id, &r.to_state)?,
            epoch: r.epoch,
            pod: r.pod,
            reason: r.reason,
            late: r.late,
            at_ms: r.at,
            run_id: r.run_id,
        })
    }
}

/// A `steps` row, without `output_raw` (which never leaves the engine).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StepRow {
    run_id: String,
    node_id: String,
    status: String,
    attempts: i64,
    output: Option<String>,
    error: Option<String>,
    updated_at: i64,
}

impl TryFrom<StepRow> for StepRecord {
    type Error = StoreError;

    fn try_from(r: StepRow) -> StoreResult<StepRecord> {
        let key = format!("{}/{}", r.run_id, r.node_id);
        Ok(StepRecord {
            status: status_from_str("steps", &key, &r.status)?,
            output: r
                .output
                .map(|o| json_from_str("steps", &key, "output", &o))
                .transpose()?,
            run_id: r.run_id,
            node_id: r.node_id,
            attempts: r.attempts,
            error: r.error,
            updated_at_ms: r.updated_at,
        })
    }
}

/// A `chunks` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ChunkRow {
    run_id: String,
    epoch: i64,
    seq: i64,
    node_id: Option<String>,
    attempt: Option<i64>,
    data: String,
    at: i64,
}

impl From<ChunkRow> for Chunk {
    fn from(r: ChunkRow) -> Chunk {
        Chunk {
            run_id: r.run_id,
            epoch: r.epoch,
            seq: r.seq,
            node_id: r.node_id,
            attempt: r.attempt,
            data: r.data,
            at_ms: r.at,
        }
    }
}

/// A run and a page of its chunks after a cursor, in one statement (a
/// stream's read: one round trip, one snapshot). One row per chunk, the
/// chunk's columns NULL on the one row of a run with none after it.
pub(crate) const RUN_AND_CHUNKS: &str = concat!(
    "SELECT ",
    run_cols!(),
    ", c_epoch, c_seq, c_node_id, c_attempt, c_data, c_at FROM runs LEFT JOIN \
     (SELECT epoch AS c_epoch, seq AS c_seq, node_id AS c_node_id, attempt AS c_attempt, \
     data AS c_data, at AS c_at FROM chunks WHERE run_id = $1 \
     AND (epoch > $2 OR (epoch = $2 AND seq > $3)) ORDER BY epoch, seq LIMIT $4) c ON 1 = 1 \
     WHERE id = $1 ORDER BY c_epoch, c_seq"
);

/// A row of [`RUN_AND_CHUNKS`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RunChunkRow {
    #[sqlx(flatten)]
    pub(crate) run: RunRow,
    c_epoch: Option<i64>,
    c_seq: Option<i64>,
    c_node_id: Option<String>,
    c_attempt: Option<i64>,
    c_data: Option<String>,
    c_at: Option<i64>,
}

impl RunChunkRow {
    /// The row's chunk, if it has one.
    pub(crate) fn chunk(&self) -> Option<Chunk> {
        Some(Chunk {
            run_id: self.run.id.clone(),
            epoch: self.c_epoch?,
            seq: self.c_seq?,
            node_id: self.c_node_id.clone(),
            attempt: self.c_attempt,
            data: self.c_data.clone()?,
            at_ms: self.c_at?,
        })
    }
}

/// One `(epoch, node_id, attempt)` of the chunks a client keeps.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PartRow {
    epoch: i64,
    node_id: String,
    attempt: i64,
}

impl From<PartRow> for StreamPartRow {
    fn from(r: PartRow) -> StreamPartRow {
        StreamPartRow {
            epoch: r.epoch,
            node_id: r.node_id,
            attempt: r.attempt,
        }
    }
}

/// An `effects` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EffectRow {
    run_id: String,
    node_id: String,
    attempt: i64,
    epoch: i64,
    pod: String,
    at: i64,
}

impl From<EffectRow> for EffectRecord {
    fn from(r: EffectRow) -> EffectRecord {
        EffectRecord {
            run_id: r.run_id,
            node_id: r.node_id,
            attempt: r.attempt,
            epoch: r.epoch,
            pod: r.pod,
            at_ms: r.at,
        }
    }
}

/// A `run_claims` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ClaimRow {
    run_id: String,
    from_pod: Option<String>,
    to_pod: String,
    epoch: i64,
    at: i64,
}

impl From<ClaimRow> for ClaimRecord {
    fn from(r: ClaimRow) -> ClaimRecord {
        ClaimRecord {
            run_id: r.run_id,
            from_pod: r.from_pod,
            to_pod: r.to_pod,
            epoch: r.epoch,
            at_ms: r.at,
        }
    }
}

/// A `pods` (registry) row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RegistryRow {
    pod_id: String,
    incarnation: String,
    addr: Option<String>,
    started_at: i64,
    heartbeat_at: i64,
    lease_until: i64,
}

impl From<RegistryRow> for PodRow {
    fn from(r: RegistryRow) -> PodRow {
        PodRow {
            pod_id: r.pod_id,
            incarnation: r.incarnation,
            addr: r.addr,
            started_at_ms: r.started_at,
            heartbeat_at_ms: r.heartbeat_at,
            lease_until_ms: r.lease_until,
        }
    }
}

/// A `pod_deaths` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeathRow {
    pod_id: String,
    incarnation: String,
    detected_by: String,
    detected_at: i64,
    last_heartbeat_at: i64,
}

impl From<DeathRow> for Death {
    fn from(r: DeathRow) -> Death {
        Death {
            pod_id: r.pod_id,
            incarnation: r.incarnation,
            detected_by: r.detected_by,
            detected_at_ms: r.detected_at,
            last_heartbeat_at_ms: r.last_heartbeat_at,
        }
    }
}

/// What the fence reads of a run (each dialect's `FENCE_SELECT`).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FenceRow {
    pub state: String,
    pub epoch: i64,
}

/// What a claim or a transition reads of the run it locks (each dialect's
/// `STATE_SELECT_FOR_UPDATE` and `CLAIM_SELECT_FOR_UPDATE`).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LockedRunRow {
    pub state: String,
    pub epoch: i64,
    pub owner_pod: Option<String>,
    pub late_completion: String,
}

/// A step's progress, read before its next attempt.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AttemptsRow {
    pub status: String,
    pub attempts: i64,
}

/// Both copies of a run's actor state.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RunStateRow {
    run_state: String,
    run_state_raw: Option<String>,
}

impl RunStateRow {
    /// `(shown, raw)`; a NULL raw copy (written before the column existed,
    /// when the one copy was all there was) is the shown one.
    pub fn into_copies(self, run_id: &str) -> StoreResult<(serde_json::Value, serde_json::Value)> {
        let shown = json_from_str("runs", run_id, "run_state", &self.run_state)?;
        let raw = match self.run_state_raw {
            Some(r) => json_from_str("runs", run_id, "run_state_raw", &r)?,
            None => shown.clone(),
        };
        Ok((shown, raw))
    }
}

/// A step's raw output, by node (each dialect's `OUTPUTS_RAW_SELECT`).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OutputRawRow {
    pub node_id: String,
    /// NULL: written before the column existed.
    pub output_raw: Option<String>,
}

/// A run a bulk state change (reaper, janitor) moved: `RETURNING id, epoch`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MovedRow {
    pub id: String,
    pub epoch: i64,
}

/// A run the SQLite reaper timed out: what it needs to queue its retry.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReapedRow {
    pub id: String,
    pub epoch: i64,
    pub workflow: String,
    pub lane: String,
    pub input: String,
    pub late_completion: String,
    pub deadline_at: Option<i64>,
    pub created_at: i64,
    pub heartbeat_timeout_ms: Option<i64>,
    pub retries_left: i64,
    pub family: Option<String>,
}

/// Columns of [`ReapedRow`].
pub(crate) const REAPED_COLS: &str = "id, epoch, workflow, lane, input, late_completion, \
     deadline_at, created_at, heartbeat_timeout_ms, retries_left, family";

/// One line of the PostgreSQL reaper's answer: a run timed out, or a retry
/// queued (`kind` = `timed_out` or `retried`).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReapOutcomeRow {
    pub kind: String,
    pub id: String,
    pub lane: String,
    pub retry_of: Option<String>,
}

/// Who holds a pod id's lease (SQLite liveness).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LeaseRow {
    pub incarnation: String,
    pub lease_until: i64,
    pub heartbeat_at: i64,
}
