//! What the collectors send the app: store snapshots, pod scrapes and the
//! chaos cluster's processes. Collection runs in its own tasks, never in the
//! draw loop; a slow or lost store shows as stale data with its age.

use super::metrics::PodMetrics;
use crate::cluster::PodState;
use crate::engine::run::{Chunk, RunRecord, StepRecord, TransitionRecord};
use crate::engine::store::liveness::PodRow;
use crate::engine::store::{
    ActiveCount, ClaimRecord, ConsoleEvent, RunSummary, SwitchAudit, SwitchRow,
};

/// The views, in number-key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Runs,
    Pods,
    Activity,
    Switches,
    Events,
    Chaos,
}

impl View {
    pub const ALL: [View; 6] = [
        View::Runs,
        View::Pods,
        View::Activity,
        View::Switches,
        View::Events,
        View::Chaos,
    ];

    pub fn index(self) -> usize {
        match self {
            View::Runs => 0,
            View::Pods => 1,
            View::Activity => 2,
            View::Switches => 3,
            View::Events => 4,
            View::Chaos => 5,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            View::Runs => "Runs",
            View::Pods => "Pods",
            View::Activity => "Activity",
            View::Switches => "Switches",
            View::Events => "Events",
            View::Chaos => "Chaos",
        }
    }
}

/// What the store collector should read besides the always-on queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The app's generation when it asked: results carry it back.
    pub generation: u64,
    pub view: View,
    /// The run whose detail is open, and the session that opened it.
    pub run: Option<(String, u64)>,
    /// The switch whose audit trail is shown.
    pub switch: Option<String>,
}

/// One store refresh round.
#[derive(Debug, Clone)]
pub struct StoreUpdate {
    /// The [`Watch::generation`] the round started under.
    pub generation: u64,
    pub at_ms: i64,
    /// Statements issued by the collector since it started.
    pub queries: u64,
    pub took_ms: i64,
    pub result: Result<StoreData, String>,
}

#[derive(Debug, Clone, Default)]
pub struct StoreData {
    pub backend: &'static str,
    pub pods: Vec<PodRow>,
    pub counts: Vec<ActiveCount>,
    /// New events since the last round (append-only: applied whatever the generation).
    pub events: Vec<ConsoleEvent>,
    pub runs: Option<Vec<RunSummary>>,
    pub switches: Option<Vec<SwitchRow>>,
    pub audit: Option<(String, Vec<SwitchAudit>)>,
    /// PostgreSQL advisory-lock keys held now (read with the Pods view).
    pub locks: Option<Vec<i64>>,
    pub detail: Option<DetailData>,
}

#[derive(Debug, Clone)]
pub struct DetailData {
    pub run_id: String,
    pub session: u64,
    pub run: Option<RunRecord>,
    pub steps: Vec<StepRecord>,
    pub transitions: Vec<TransitionRecord>,
    pub claims: Vec<ClaimRecord>,
    /// The run was claimed at a new epoch since the chunks already sent:
    /// `(epoch, keep)`, applied before `chunks` (see [`crate::client::keeps`]).
    pub reset: Option<(i64, Vec<crate::engine::store::StreamPartRow>)>,
    /// Chunks after the collector's cursor (append-only within a session).
    pub chunks: Vec<Chunk>,
}

/// One scrape of every known pod's /metrics.
#[derive(Debug, Clone)]
pub struct MetricsUpdate {
    pub at_ms: i64,
    pub pods: Vec<PodScrape>,
}

#[derive(Debug, Clone)]
pub struct PodScrape {
    /// Pod id (from the registry) or the URL given with --pods.
    pub pod: String,
    pub url: String,
    pub result: Result<PodMetrics, String>,
}

/// A process of the cluster the console runs (the demo's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosPod {
    pub id: String,
    pub pid: Option<i32>,
    pub state: PodState,
    pub url: String,
}
