//! The console's state and its one mutator, [`App::update`]: no I/O here.
//! Rendering is a pure function of [`App`] (`super::views::draw`); side effects
//! leave through [`App::effects`], which the event loop hands to the effect
//! executor and the collectors.
//!
//! This module holds the types: [`App`] itself, its modes, dialogs and
//! effects, the open run, the activity counters and the `/` filter. What
//! changes them is split by where the change comes from:
//! - `input`: keys, the modes they are read in, the dialogs they confirm;
//! - `command`: the `:` command line;
//! - `selection`: which view and row is selected, the rows each view shows
//!   (filtered and sorted) and what is derived from them;
//! - `apply`: store rounds, scrapes, cluster state and finished effects
//!   coming back, and the watch that tells the collectors what to read.

mod apply;
mod command;
mod input;
mod selection;

pub use selection::{event_label, pod_state_str, sort_columns};

use super::data::{ChaosPod, View, Watch};
use super::gray::RoundTrips;
use super::keys::Keymap;
use super::metrics::PodMetrics;
use super::theme::Theme;
use crate::engine::run::{RunRecord, RunState, StepRecord, TransitionRecord};
use crate::engine::store::liveness::PodRow;
use crate::engine::store::{
    ActiveCount, ClaimRecord, ConsoleEvent, RunSummary, SwitchAudit, SwitchRow,
};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A side effect `update` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Tell the store collector what to read.
    Watch(Watch),
    /// Read the store now instead of at the next tick.
    RefreshNow,
    /// Set a switch in the store, with its audit row.
    SetSwitch {
        name: String,
        enabled: bool,
        reason: String,
    },
    /// Signal a pod of the cluster the console runs.
    Chaos { op: ChaosOp, pod: String },
    /// Cancel a run in the store (its owner stops it within a second).
    CancelRun { run_id: String },
    /// Put text on the terminal's clipboard (OSC 52).
    Copy { text: String },
}

impl Effect {
    /// Changes something outside the console (refused in read-only mode).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Effect::SetSwitch { .. } | Effect::Chaos { .. } | Effect::CancelRun { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosOp {
    /// SIGKILL: a hard crash.
    Kill,
    /// SIGTERM: graceful stop (ownership stays for recovery).
    Terminate,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Resume,
    /// Start an exited pod again, with the same id.
    Start,
}

impl ChaosOp {
    pub fn verb(self) -> &'static str {
        match self {
            ChaosOp::Kill => "kill (SIGKILL)",
            ChaosOp::Terminate => "terminate (SIGTERM)",
            ChaosOp::Pause => "pause (SIGSTOP)",
            ChaosOp::Resume => "resume (SIGCONT)",
            ChaosOp::Start => "start",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialog {
    /// Flip a switch: asks for the reason that goes into the audit row.
    Switch {
        name: String,
        enabled: bool,
        reason: String,
    },
    Chaos {
        op: ChaosOp,
        pod: String,
    },
    /// Cancel a run: asks before it writes.
    CancelRun {
        run_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a `/` filter for the current view.
    Filter,
    /// Typing a `:` command.
    Command(String),
    Dialog(Dialog),
    Help,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub level: Level,
    pub at_ms: i64,
}

/// How fresh the store data is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Wall ms of the last successful round.
    pub ok_at_ms: Option<i64>,
    /// The last round's error, while the store stays unreachable.
    pub error: Option<String>,
    pub backend: &'static str,
    /// (wall ms, cumulative queries) per round, for the q/s figure.
    pub query_log: VecDeque<(i64, u64)>,
    pub last_took_ms: i64,
}

impl StoreHealth {
    /// Queries per second over the rounds kept (about the last 10 s).
    pub fn qps(&self) -> Option<f64> {
        let (a, qa) = *self.query_log.front()?;
        let (b, qb) = *self.query_log.back()?;
        (b > a).then(|| (qb.saturating_sub(qa)) as f64 * 1000.0 / (b - a) as f64)
    }
}

/// A `/` filter: case-insensitive regex, `!` inverts, a bad regex matches
/// as plain text.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub text: String,
    re: Option<regex::Regex>,
    invert: bool,
    pub error: Option<String>,
}

impl Filter {
    pub fn set(&mut self, text: String) {
        let (invert, pat) = match text.strip_prefix('!') {
            Some(p) => (true, p.to_owned()),
            None => (false, text.clone()),
        };
        self.invert = invert;
        self.error = None;
        self.re = if pat.is_empty() {
            None
        } else {
            match regex::RegexBuilder::new(&pat)
                .case_insensitive(true)
                .build()
            {
                Ok(r) => Some(r),
                Err(e) => {
                    self.error = Some(format!("not a regex ({e}); matching as text"));
                    regex::RegexBuilder::new(&regex::escape(&pat))
                        .case_insensitive(true)
                        .build()
                        .ok()
                }
            }
        };
        self.text = text;
    }

    pub fn is_active(&self) -> bool {
        self.re.is_some()
    }

    pub fn matches(&self, hay: &str) -> bool {
        match &self.re {
            None => true,
            Some(r) => r.is_match(hay) != self.invert,
        }
    }
}

/// One line of a run's live stream as the detail shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamLine {
    Chunk {
        epoch: i64,
        seq: i64,
        /// The step attempt that wrote it (a reset keeps finished ones).
        step: Option<String>,
        attempt: Option<i64>,
        data: String,
    },
    /// The run was claimed at a new epoch: the older epochs' chunks of
    /// unfinished attempts (`discarded` of them) were dropped from above.
    Reset { epoch: i64, discarded: usize },
}

/// The open run.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    pub run_id: String,
    pub session: u64,
    pub run: Option<RunRecord>,
    pub steps: Vec<StepRecord>,
    pub transitions: Vec<TransitionRecord>,
    pub claims: Vec<ClaimRecord>,
    pub stream: Vec<StreamLine>,
    pub loaded: bool,
}

/// Counter totals over time, summed over pods, for rates and sparklines.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    /// Last value seen per (pod, series): a drop is a counter reset.
    prev: HashMap<(String, String), f64>,
    /// Series -> (wall ms, running total) samples.
    pub samples: BTreeMap<String, VecDeque<(i64, f64)>>,
    /// Per pod: when its last scrape succeeded, its error, its metrics.
    pub scrapes: BTreeMap<String, Scrape>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub url: String,
    pub ok_at_ms: Option<i64>,
    pub error: Option<String>,
    pub metrics: Option<PodMetrics>,
    /// Store round trips at the last good scrape: since the one before
    /// when there were any, else since the pod started.
    pub round_trips: Option<RoundTrips>,
}

/// A pod's own view of itself, from a scrape that answered: its readiness,
/// its lease margin by its own clock and its store round trips (each None
/// when the pod does not export it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OwnView {
    pub ready: Option<bool>,
    /// Seconds (`+Inf`: no lease).
    pub lease_left: Option<f64>,
    pub round_trips: Option<RoundTrips>,
    /// The data pool's connections (checkpoints, chunks, reads).
    pub data_pool: Option<crate::console::metrics::PoolGauge>,
}

/// How long the Activity view keeps samples.
pub const ACTIVITY_WINDOW_MS: i64 = 10 * 60 * 1000;

impl Activity {
    /// The running total of `series` at `at_ms` (0 before its first sample).
    pub fn total_at(&self, series: &str, at_ms: i64) -> f64 {
        self.samples
            .get(series)
            .and_then(|q| q.iter().rev().find(|(at, _)| *at <= at_ms))
            .map_or(0.0, |(_, t)| *t)
    }

    pub fn total(&self, series: &str) -> f64 {
        self.samples
            .get(series)
            .and_then(|q| q.back())
            .map_or(0.0, |(_, t)| *t)
    }
}
#[derive(Debug, Clone)]
pub struct App {
    pub now_ms: i64,
    pub size: (u16, u16),
    pub view: View,
    pub mode: Mode,
    pub detail: Option<Detail>,
    pub read_only: bool,
    pub frozen: bool,
    /// The console runs the cluster (the demo): the Chaos view is live.
    pub has_chaos: bool,
    pub store_label: String,
    pub pods_given: bool,
    pub keys: Keymap,
    pub theme: Theme,
    pub events_limit: usize,
    /// Bumped by every change of what is watched and every mutation; store
    /// rounds that started under an older one are dropped, so a query in
    /// flight cannot resurrect a row that changed since.
    pub generation: u64,
    pub health: StoreHealth,
    pub runs: Vec<RunSummary>,
    /// Characters of a run id shown: enough to tell the listed runs apart.
    pub id_len: usize,
    pub counts: Vec<ActiveCount>,
    pub pods: Vec<PodRow>,
    pub locks: Option<Vec<i64>>,
    pub heartbeats: BTreeMap<String, VecDeque<i64>>,
    pub events: VecDeque<ConsoleEvent>,
    pub switches: Vec<SwitchRow>,
    pub audit: Option<(String, Vec<SwitchAudit>)>,
    pub activity: Activity,
    pub chaos: Vec<ChaosPod>,
    pub filters: [Filter; 6],
    pub state_filter: Option<RunState>,
    pub lane_filter: Option<String>,
    pub pod_filter: Option<String>,
    /// Per view: sort column letter and whether reversed.
    pub sort: [(char, bool); 6],
    /// Per view: selected row index and its key (kept across refreshes).
    pub selected: [(usize, Option<String>); 6],
    pub pending_g: bool,
    pub status: Option<Status>,
    pub effects: Vec<Effect>,
    pub quit: bool,
    pub dirty: bool,
}

impl App {
    pub fn new(store_label: impl Into<String>, keys: Keymap, theme: Theme) -> App {
        App {
            now_ms: 0,
            size: (120, 40),
            view: View::Runs,
            mode: Mode::Normal,
            detail: None,
            read_only: false,
            frozen: false,
            has_chaos: false,
            store_label: store_label.into(),
            pods_given: false,
            keys,
            theme,
            events_limit: 2000,
            generation: 0,
            health: StoreHealth::default(),
            runs: Vec::new(),
            id_len: 8,
            counts: Vec::new(),
            pods: Vec::new(),
            locks: None,
            heartbeats: BTreeMap::new(),
            events: VecDeque::new(),
            switches: Vec::new(),
            audit: None,
            activity: Activity::default(),
            chaos: Vec::new(),
            filters: Default::default(),
            state_filter: None,
            lane_filter: None,
            pod_filter: None,
            sort: [
                ('A', false),
                ('I', false),
                ('-', false),
                ('-', false),
                ('-', false),
                ('I', false),
            ],
            selected: Default::default(),
            pending_g: false,
            status: None,
            effects: Vec::new(),
            quit: false,
            dirty: true,
        }
    }

    fn info(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            level: Level::Info,
            at_ms: self.now_ms,
        });
    }

    fn error(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            level: Level::Error,
            at_ms: self.now_ms,
        });
    }
}
