//! Runs, steps and the one run-state transition table.
//!
//! Every state change in Vigil goes through [`Store::transition`], which turns
//! [`allowed_sources`] into the WHERE clause of a single UPDATE, so a
//! concurrent writer cannot sneak a change past the table (the seed-002 bug was
//! an `update_all` that skipped validation).
//!
//! [`Store::transition`]: crate::engine::store::Store::transition

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The lifecycle of a run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Lost,
}

impl RunState {
    pub const ALL: [RunState; 7] = [
        RunState::Pending,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
        RunState::TimedOut,
        RunState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::TimedOut => "timed_out",
            RunState::Lost => "lost",
        }
    }

    /// Terminal means terminal: nothing leaves these states except the one
    /// policy-gated edge `lost -> succeeded` (see [`late_completion_edge`]).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded
                | RunState::Failed
                | RunState::Cancelled
                | RunState::TimedOut
                | RunState::Lost
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown run state {0:?} (expected one of pending, running, succeeded, failed, cancelled, timed_out, lost)"
)]
pub struct UnknownRunState(pub String);

impl FromStr for RunState {
    type Err = UnknownRunState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownRunState(s.to_owned()))
    }
}

/// The transition table: `(from, to)` pairs that are always allowed.
pub const TRANSITIONS: &[(RunState, RunState)] = &[
    (RunState::Pending, RunState::Running),
    (RunState::Pending, RunState::Cancelled),
    (RunState::Pending, RunState::Failed),
    (RunState::Pending, RunState::TimedOut),
    (RunState::Pending, RunState::Lost),
    (RunState::Running, RunState::Succeeded),
    (RunState::Running, RunState::Failed),
    (RunState::Running, RunState::Cancelled),
    (RunState::Running, RunState::TimedOut),
    (RunState::Running, RunState::Lost),
];

/// The one edge out of a terminal state, allowed only when the run's policy
/// says `late_completion = "accept"`; the transition log marks it `late`.
pub const fn late_completion_edge() -> (RunState, RunState) {
    (RunState::Lost, RunState::Succeeded)
}

/// Source states from which `to` may be entered unconditionally.
pub fn allowed_sources(to: RunState) -> Vec<RunState> {
    TRANSITIONS
        .iter()
        .filter(|(_, t)| *t == to)
        .map(|(f, _)| *f)
        .collect()
}

/// Whether `from -> to` is allowed for a run with the given policy.
pub fn is_allowed(from: RunState, to: RunState, policy: LateCompletion) -> bool {
    TRANSITIONS.contains(&(from, to))
        || (policy == LateCompletion::Accept && (from, to) == late_completion_edge())
}

/// What to do with a completion that arrives after a run was marked `lost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LateCompletion {
    /// Terminal means terminal: the late event gets an "already terminal" answer.
    #[default]
    Reject,
    /// `lost -> succeeded` is allowed and recorded as a late completion.
    Accept,
}

/// Status of one step of a run, as checkpointed in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(StepStatus::Running),
            "succeeded" => Some(StepStatus::Succeeded),
            "failed" => Some(StepStatus::Failed),
            _ => None,
        }
    }
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    pub id: String,
    pub workflow: String,
    pub lane: String,
    pub input: serde_json::Value,
    pub state: RunState,
    pub owner_pod: Option<String>,
    /// Bumped by every claim; every owner write is fenced on it.
    pub epoch: i64,
    pub late_completion: LateCompletion,
    /// Actor state mutated by `mutate` steps; committed only with a step
    /// success. The shown copy: a mutate step's secret paths (declared, or
    /// taken from a secret by a template) read `[REDACTED]`; the raw copy
    /// never leaves the engine.
    pub run_state: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub error: Option<String>,
    pub deadline_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// None: the run's lane does not heartbeat and the reaper never touches it.
    pub heartbeat_timeout_ms: Option<i64>,
    pub heartbeat_at_ms: Option<i64>,
    /// Reaper retries left; a retry run gets one less.
    pub retries_left: i64,
    /// The first run of this retry chain (the run itself for a first run).
    pub family: Option<String>,
    /// The run this one retries, if it is a retry.
    pub retry_of: Option<String>,
}

/// A step row as stored. `output_raw` never leaves the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub run_id: String,
    pub node_id: String,
    pub status: StepStatus,
    pub attempts: i64,
    /// Redacted copy, for UI and logs.
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

/// One row of the transition log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransitionRecord {
    pub run_id: String,
    pub from: RunState,
    pub to: RunState,
    pub epoch: i64,
    pub pod: Option<String>,
    pub reason: String,
    /// True only for a policy-allowed `lost -> succeeded`.
    pub late: bool,
    pub at_ms: i64,
}

/// A chunk of a run's output stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Chunk {
    pub run_id: String,
    pub epoch: i64,
    pub seq: i64,
    /// The step whose attempt wrote the chunk; None for chunks written
    /// before migration 0004 or posted through the events API.
    #[serde(default)]
    pub node_id: Option<String>,
    /// That step's attempt number (`steps.attempts` when it began).
    #[serde(default)]
    pub attempt: Option<i64>,
    pub data: String,
    pub at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_no_unconditional_exits() {
        for (from, to) in TRANSITIONS {
            assert!(
                !from.is_terminal(),
                "{from} -> {to} leaves a terminal state"
            );
        }
    }

    #[test]
    fn late_completion_is_policy_gated() {
        assert!(!is_allowed(
            RunState::Lost,
            RunState::Succeeded,
            LateCompletion::Reject
        ));
        assert!(is_allowed(
            RunState::Lost,
            RunState::Succeeded,
            LateCompletion::Accept
        ));
        assert!(!is_allowed(
            RunState::Lost,
            RunState::Failed,
            LateCompletion::Accept
        ));
    }

    #[test]
    fn states_round_trip_through_strings() {
        for st in RunState::ALL {
            assert_eq!(st.as_str().parse::<RunState>().ok(), Some(st));
        }
        assert!("done".parse::<RunState>().is_err());
    }
}
