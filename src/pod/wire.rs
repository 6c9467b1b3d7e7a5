//! The pod API's wire types: what clients send and receive, one place for
//! the server (`api`), the client (`crate::client`), the CLI and the
//! OpenAPI document. Conversions from engine records are `From` impls here.

use crate::engine::run::{RunRecord, RunState, StepRecord, StepStatus, TransitionRecord};
use crate::engine::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The error body of every 4xx and 5xx answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// A stable machine-readable code, e.g. `already_terminal`.
    pub error: String,
    /// What is wrong, for a person.
    pub message: String,
    /// The run's state, where the error is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Name of a workflow this pod knows (GET /v1/workflows).
    pub workflow: String,
    /// The run's input: a JSON object (absent or null: no inputs).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub input: serde_json::Value,
    /// A repeated key returns the run it created first, never a second run.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    pub run: RunRecord,
    /// False when the idempotency key had already created this run.
    pub created: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub node_id: String,
    pub status: StepStatus,
    pub attempts: i64,
    /// The redacted output; the raw copy never leaves the engine.
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    pub run: RunRecord,
    pub steps: Vec<StepView>,
    pub transitions: Vec<TransitionRecord>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunRecord>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs in this state.
    pub state: Option<RunState>,
    pub lane: Option<String>,
    /// Only runs owned by this pod.
    pub owner: Option<String>,
    /// At most this many (1..=1000, default 100), newest first.
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// An event from an external worker about a run it holds at `epoch`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunEvent {
    /// The run finished successfully.
    Complete { epoch: i64 },
    /// The run failed.
    Fail { epoch: i64, error: String },
    /// One more chunk of the run's stream.
    Chunk { epoch: i64, seq: i64, data: String },
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventAccepted {
    pub accepted: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SwitchView {
    pub name: String,
    pub enabled: bool,
    pub default: bool,
    /// `store` when a row sets it, `default` otherwise.
    pub source: String,
    pub disables: String,
    pub metric: String,
    pub updated_by: Option<String>,
    pub reason: Option<String>,
    pub updated_at_ms: Option<i64>,
}

impl SwitchView {
    /// A known switch as its store row sets it, or at `unset` (the value
    /// it has where no row sets it) without one.
    pub fn of(
        spec: &crate::engine::switches::SwitchSpec,
        row: Option<&crate::engine::store::SwitchRow>,
        unset: bool,
    ) -> Self {
        SwitchView {
            name: spec.name.into(),
            enabled: row.map_or(unset, |r| r.enabled),
            default: spec.default,
            source: if row.is_some() { "store" } else { "default" }.into(),
            disables: spec.disables.into(),
            metric: spec.metric.into(),
            updated_by: row.map(|r| r.updated_by.clone()),
            reason: row.map(|r| r.reason.clone()),
            updated_at_ms: row.map(|r| r.updated_at_ms),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SwitchList {
    pub switches: Vec<SwitchView>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSwitchRequest {
    pub enabled: bool,
    /// Why: recorded in the audit trail. Required.
    pub reason: String,
    /// Who: recorded in the audit trail. Without it the trail says
    /// `api via POD from ADDRESS` (the pod that took the change, the
    /// caller's IP address).
    #[serde(default)]
    pub who: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowView {
    pub name: String,
    pub description: String,
    pub lane: String,
    pub steps: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub pod_id: String,
    pub store: String,
    pub runs_active: usize,
}

/// One Server-Sent Event of a run stream, as a client parses it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SseEvent {
    pub event: SseKind,
    /// JSON: a ChunkEvent, ResetEvent or EndEvent, by `event`.
    pub data: String,
    /// `EPOCH:SEQ`, on chunk events: resume after it with Last-Event-ID.
    pub id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SseKind {
    Chunk,
    Reset,
    End,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttachQuery {
    /// Resume after this event id (`EPOCH:SEQ`); the `Last-Event-ID` header wins.
    pub after: Option<String>,
}

impl From<StepRecord> for StepView {
    fn from(s: StepRecord) -> Self {
        StepView {
            node_id: s.node_id,
            status: s.status,
            attempts: s.attempts,
            output: s.output,
            error: s.error,
            updated_at_ms: s.updated_at_ms,
        }
    }
}

impl RunDetail {
    /// `run` with its steps (redacted outputs) and transitions, from `store`.
    pub async fn of(store: &dyn Store, run: RunRecord) -> Result<RunDetail, StoreError> {
        let steps = store
            .steps(&run.id)
            .await?
            .into_iter()
            .map(StepView::from)
            .collect();
        let transitions = store.transitions(&run.id).await?;
        Ok(RunDetail {
            run,
            steps,
            transitions,
        })
    }
}
