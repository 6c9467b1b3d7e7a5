//! The console's state and its one mutator, [`App::update`]: no I/O here.
//! Rendering is a pure function of [`App`] (`super::views::draw`); side effects
//! leave through [`App::effects`], which the event loop hands to the effect
//! executor and the collectors.

use super::data::{ChaosPod, DetailData, MetricsUpdate, StoreData, StoreUpdate, View, Watch};
use super::keys::{Action, Key, Keymap, SORT_LETTERS};
use super::metrics::PodMetrics;
use super::theme::Theme;
use crate::cluster::PodState;
use crate::engine::liveness::PodRow;
use crate::engine::run::{Chunk, RunRecord, RunState, StepRecord, TransitionRecord};
use crate::engine::store::{
    ActiveCount, ClaimRecord, ConsoleEvent, EventKind, RunSummary, SwitchAudit, SwitchRow,
};
use crate::engine::switches;
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};
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
}

impl Effect {
    /// Changes something outside the console (refused in read-only mode).
    pub fn is_mutation(&self) -> bool {
        matches!(self, Effect::SetSwitch { .. } | Effect::Chaos { .. })
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
}

/// How long the Activity view keeps samples.
pub const ACTIVITY_WINDOW_MS: i64 = 10 * 60 * 1000;
const HEARTBEAT_HISTORY: usize = 40;

impl Activity {
    pub fn apply(&mut self, u: &MetricsUpdate) {
        // Pods no longer scraped (gone from the registry) leave the sources
        // list; what they counted stays in the totals.
        self.scrapes
            .retain(|pod, _| u.pods.iter().any(|p| &p.pod == pod));
        let mut totals: BTreeMap<String, f64> = self
            .samples
            .iter()
            .filter_map(|(k, v)| v.back().map(|(_, t)| (k.clone(), *t)))
            .collect();
        for p in &u.pods {
            let entry = self.scrapes.entry(p.pod.clone()).or_default();
            entry.url = p.url.clone();
            match &p.result {
                Ok(m) => {
                    entry.ok_at_ms = Some(u.at_ms);
                    entry.error = None;
                    entry.metrics = Some(m.clone());
                    for (series, v) in &m.counters {
                        let key = (p.pod.clone(), series.clone());
                        let delta = match self.prev.insert(key, *v) {
                            Some(prev) if *v >= prev => v - prev,
                            // First sight of the pod (its lifetime count), or a reset.
                            _ => *v,
                        };
                        *totals.entry(series.clone()).or_default() += delta;
                    }
                }
                Err(e) => entry.error = Some(e.clone()),
            }
        }
        for (series, total) in totals {
            let q = self.samples.entry(series).or_default();
            q.push_back((u.at_ms, total));
            while q
                .front()
                .is_some_and(|(at, _)| *at < u.at_ms - ACTIVITY_WINDOW_MS)
            {
                q.pop_front();
            }
        }
    }

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

    // ---------------------------------------------------------------- input

    /// Map a key to an action, given the mode (text input eats keys).
    pub fn map_key(&mut self, ev: KeyEvent) -> Option<Action> {
        if ev.kind == KeyEventKind::Release {
            return None;
        }
        let key = Key::from_event(&ev);
        let typing = matches!(
            self.mode,
            Mode::Filter | Mode::Command(_) | Mode::Dialog(Dialog::Switch { .. })
        );
        if typing {
            if key.ctrl && key.code == KeyCode::Char('c') {
                return Some(Action::Cancel);
            }
            return match key.code {
                KeyCode::Esc => Some(Action::Cancel),
                KeyCode::Enter => Some(Action::Submit),
                KeyCode::Backspace => Some(Action::Backspace),
                KeyCode::Char(c) if !key.ctrl && !key.alt => Some(Action::Input(c)),
                _ => None,
            };
        }
        if let Mode::Dialog(Dialog::Chaos { .. }) = self.mode {
            // Only an explicit y confirms; everything else backs out.
            return Some(match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') if !key.ctrl => Action::Confirm,
                _ => Action::Cancel,
            });
        }
        if self.mode == Mode::Help {
            return Some(Action::Cancel);
        }
        // gg: vim's "top".
        if key.code == KeyCode::Char('g') && !key.ctrl && !key.alt {
            if self.pending_g {
                self.pending_g = false;
                return Some(Action::Top);
            }
            self.pending_g = true;
            return None;
        }
        self.pending_g = false;
        if let Some(a) = self.keys.lookup(key) {
            return Some(a);
        }
        // A fast Esc then a key arrives as alt-key: read it as the key.
        if key.alt
            && let Some(a) = self.keys.lookup(Key { alt: false, ..key })
        {
            return Some(a);
        }
        match key.code {
            KeyCode::Char(c) if SORT_LETTERS.contains(&c) && !key.ctrl && !key.alt => {
                Some(Action::Sort(c))
            }
            _ => None,
        }
    }

    pub fn on_key(&mut self, ev: KeyEvent) {
        if let Some(a) = self.map_key(ev) {
            self.update(a);
        }
    }

    // ---------------------------------------------------------------- update

    pub fn update(&mut self, action: Action) {
        self.dirty = true;
        match action {
            Action::Tick(now) => {
                self.now_ms = now;
                if self
                    .status
                    .as_ref()
                    .is_some_and(|s| s.level == Level::Info && now - s.at_ms > 8000)
                {
                    self.status = None;
                }
            }
            Action::Resize(w, h) => self.size = (w, h),
            Action::Quit => self.quit = true,
            Action::Help => self.mode = Mode::Help,
            Action::Cancel => self.cancel(),
            Action::Back => self.back(),
            Action::Filter => {
                self.mode = Mode::Filter;
            }
            Action::Command => self.mode = Mode::Command(String::new()),
            Action::Input(c) => self.input(c),
            Action::Backspace => self.backspace(),
            Action::Submit => self.submit(),
            Action::Confirm => self.confirm(),
            Action::Up => self.move_by(-1),
            Action::Down => self.move_by(1),
            Action::HalfPageUp => self.move_by(-(self.half_page() as i64)),
            Action::HalfPageDown => self.move_by(self.half_page() as i64),
            Action::Top => self.move_to(0),
            Action::Bottom => self.move_to(usize::MAX),
            Action::Open => self.open(),
            Action::Freeze => {
                self.frozen = !self.frozen;
                self.info(if self.frozen {
                    "frozen: updates paused (f resumes)"
                } else {
                    "live again"
                });
            }
            Action::Refresh => self.effects.push(Effect::RefreshNow),
            Action::ViewRuns => self.show(View::Runs),
            Action::ViewPods => self.show(View::Pods),
            Action::ViewActivity => self.show(View::Activity),
            Action::ViewSwitches => self.show(View::Switches),
            Action::ViewEvents => self.show(View::Events),
            Action::ViewChaos => self.show(View::Chaos),
            Action::Sort(c) => self.sort_by(c),
            Action::ToggleSwitch => self.toggle_selected_switch(),
            Action::ChaosKill => self.chaos_selected(ChaosOp::Kill),
            Action::ChaosTerminate => self.chaos_selected(ChaosOp::Terminate),
            Action::ChaosPause => self.chaos_selected(ChaosOp::Pause),
            Action::ChaosResume => self.chaos_selected(ChaosOp::Resume),
            Action::ChaosStart => self.chaos_selected(ChaosOp::Start),
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

    fn half_page(&self) -> usize {
        (usize::from(self.size.1).saturating_sub(8) / 2).max(1)
    }

    fn cancel(&mut self) {
        match &self.mode {
            Mode::Filter => {
                let v = self.view.index();
                self.filters[v].set(String::new());
                self.mode = Mode::Normal;
            }
            Mode::Dialog(_) => {
                self.mode = Mode::Normal;
                self.info("cancelled: nothing changed");
            }
            _ => self.mode = Mode::Normal,
        }
    }

    fn back(&mut self) {
        if self.mode != Mode::Normal {
            return self.cancel();
        }
        if self.detail.is_some() {
            self.detail = None;
            self.watch_changed();
            return;
        }
        let v = self.view.index();
        if self.filters[v].is_active() {
            self.filters[v].set(String::new());
            return;
        }
        if self.view == View::Runs
            && (self.state_filter.is_some()
                || self.lane_filter.is_some()
                || self.pod_filter.is_some())
        {
            self.state_filter = None;
            self.lane_filter = None;
            self.pod_filter = None;
        }
    }

    fn input(&mut self, c: char) {
        match &mut self.mode {
            Mode::Filter => {
                let v = self.view.index();
                let mut t = self.filters[v].text.clone();
                t.push(c);
                self.filters[v].set(t);
                self.selected[v] = (0, None);
            }
            Mode::Command(s) => s.push(c),
            Mode::Dialog(Dialog::Switch { reason, .. }) if reason.chars().count() < 200 => {
                reason.push(c)
            }
            _ => {}
        }
    }

    fn backspace(&mut self) {
        match &mut self.mode {
            Mode::Filter => {
                let v = self.view.index();
                let mut t = self.filters[v].text.clone();
                t.pop();
                self.filters[v].set(t);
            }
            Mode::Command(s) if s.is_empty() => self.mode = Mode::Normal,
            Mode::Command(s) => {
                s.pop();
            }
            Mode::Dialog(Dialog::Switch { reason, .. }) => {
                reason.pop();
            }
            _ => {}
        }
    }

    fn submit(&mut self) {
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Filter => {
                let v = self.view.index();
                if let Some(e) = self.filters[v].error.clone() {
                    self.error(format!("filter: {e}"));
                }
            }
            Mode::Command(cmd) => self.command(&cmd),
            Mode::Dialog(Dialog::Switch {
                name,
                enabled,
                reason,
            }) => {
                if reason.trim().is_empty() {
                    self.error("a reason is required: it goes into the audit trail");
                    self.mode = Mode::Dialog(Dialog::Switch {
                        name,
                        enabled,
                        reason,
                    });
                    return;
                }
                if !self.allow_mutation("flipping switches") {
                    return;
                }
                self.bump_gen();
                self.info(format!(
                    "setting {name} {} ...",
                    if enabled { "on" } else { "off" }
                ));
                self.effects.push(Effect::SetSwitch {
                    name,
                    enabled,
                    reason: reason.trim().to_owned(),
                });
            }
            other => self.mode = other,
        }
    }

    fn confirm(&mut self) {
        if let Mode::Dialog(Dialog::Chaos { op, pod }) =
            std::mem::replace(&mut self.mode, Mode::Normal)
        {
            if !self.allow_mutation("chaos actions") {
                return;
            }
            self.bump_gen();
            self.info(format!("{} {pod} ...", op.verb()));
            self.effects.push(Effect::Chaos { op, pod });
        }
    }

    /// Read-only is enforced here, for every path to a mutation: keys,
    /// commands and dialogs, whichever view they start from.
    fn allow_mutation(&mut self, what: &str) -> bool {
        if self.read_only {
            self.mode = Mode::Normal;
            self.error(format!(
                "read-only: {what} disabled (--read-only or read_only = true in the config)"
            ));
            return false;
        }
        true
    }

    fn bump_gen(&mut self) {
        self.generation += 1;
        self.effects.push(Effect::Watch(self.watch()));
    }

    /// What the store collector should read now.
    pub fn watch(&self) -> Watch {
        Watch {
            generation: self.generation,
            view: self.view,
            run: self.detail.as_ref().map(|d| (d.run_id.clone(), d.session)),
            switch: (self.view == View::Switches)
                .then(|| self.selected_switch())
                .flatten(),
        }
    }

    fn watch_changed(&mut self) {
        self.bump_gen();
        self.effects.push(Effect::RefreshNow);
    }

    fn show(&mut self, v: View) {
        if v == View::Chaos && !self.has_chaos {
            self.error(
                "no Chaos view: the console signals pods only when it runs the cluster (vigil demo)",
            );
            return;
        }
        self.view = v;
        self.detail = None;
        self.mode = Mode::Normal;
        if self
            .status
            .as_ref()
            .is_some_and(|s| s.level == Level::Error)
        {
            self.status = None;
        }
        self.watch_changed();
    }

    /// Open the detail of a run (Enter on Runs, `:run ID`, or the demo).
    pub fn open_run(&mut self, run_id: &str) {
        self.view = View::Runs;
        self.detail = Some(Detail {
            run_id: run_id.to_owned(),
            session: self.generation + 1,
            ..Detail::default()
        });
        self.watch_changed();
    }

    fn open(&mut self) {
        match self.view {
            View::Runs if self.detail.is_none() => {
                if let Some(id) = self.selected_key(View::Runs) {
                    self.open_run(&id);
                }
            }
            View::Events => {
                // Enter on a run's event opens the run.
                let rows = self.visible_events();
                let sel = self.selected[View::Events.index()].0;
                if let Some(ev) = rows.get(sel)
                    && matches!(ev.kind, EventKind::Transition | EventKind::Claim)
                {
                    let id = ev.subject.clone();
                    self.open_run(&id);
                }
            }
            _ => {}
        }
    }

    fn sort_by(&mut self, c: char) {
        let columns = sort_columns(self.view);
        if self.detail.is_some() || !columns.iter().any(|(k, _)| *k == c) {
            self.error(format!(
                "{c}: not a sort key here{}",
                if columns.is_empty() || self.detail.is_some() {
                    String::new()
                } else {
                    format!(
                        " (keys: {})",
                        columns
                            .iter()
                            .map(|(k, n)| format!("{k} {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
            return;
        }
        let v = self.view.index();
        let (cur, rev) = self.sort[v];
        self.sort[v] = (c, if cur == c { !rev } else { false });
        self.resolve_selection();
    }

    fn toggle_selected_switch(&mut self) {
        if self.view != View::Switches {
            self.error(format!(
                "{}: flips a switch in the Switches view (4), or use :set NAME on|off",
                self.keys.hint(Action::ToggleSwitch)
            ));
            return;
        }
        let Some(name) = self.selected_switch() else {
            return;
        };
        let enabled = !self.switch_value(&name).0;
        self.ask_switch(name, enabled);
    }

    fn ask_switch(&mut self, name: String, enabled: bool) {
        if !self.allow_mutation("flipping switches") {
            return;
        }
        self.mode = Mode::Dialog(Dialog::Switch {
            name,
            enabled,
            reason: String::new(),
        });
    }

    fn chaos_selected(&mut self, op: ChaosOp) {
        if self.view != View::Chaos {
            self.error(format!(
                "{} is a Chaos view key (6){}",
                op.verb(),
                if self.has_chaos {
                    ""
                } else {
                    ", which needs the console to run the cluster (vigil demo)"
                }
            ));
            return;
        }
        let Some(pod) = self.selected_key(View::Chaos) else {
            return;
        };
        self.ask_chaos(op, pod);
    }

    fn ask_chaos(&mut self, op: ChaosOp, pod: String) {
        if !self.has_chaos {
            self.error("chaos actions need the console to run the cluster (vigil demo)");
            return;
        }
        if !self.allow_mutation("chaos actions") {
            return;
        }
        let Some(p) = self.chaos.iter().find(|p| p.id == pod) else {
            self.error(format!("no pod {pod:?} in this cluster"));
            return;
        };
        let ok = match op {
            ChaosOp::Kill | ChaosOp::Terminate => p.state != PodState::Exited,
            ChaosOp::Pause => p.state == PodState::Running,
            ChaosOp::Resume => p.state == PodState::Paused,
            ChaosOp::Start => p.state == PodState::Exited,
        };
        if !ok {
            self.error(format!(
                "{pod} is {}: cannot {}",
                pod_state_str(p.state),
                op.verb()
            ));
            return;
        }
        self.mode = Mode::Dialog(Dialog::Chaos { op, pod });
    }

    fn command(&mut self, cmd: &str) {
        let mut words = cmd.split_whitespace();
        let Some(head) = words.next() else { return };
        let args: Vec<&str> = words.collect();
        let arg = args.first().copied();
        match head {
            "runs" | "run" if arg.is_none() => self.show(View::Runs),
            "r" => self.show(View::Runs),
            "pods" | "po" | "p" => self.show(View::Pods),
            "activity" | "act" | "a" => self.show(View::Activity),
            "switches" | "sw" | "s" => self.show(View::Switches),
            "events" | "ev" | "e" => self.show(View::Events),
            "chaos" | "ch" => self.show(View::Chaos),
            "q" | "quit" | "q!" => self.quit = true,
            "help" | "h" => self.mode = Mode::Help,
            "freeze" => self.update(Action::Freeze),
            "run" => {
                let want = arg.unwrap_or_default();
                let found: Vec<String> = self
                    .runs
                    .iter()
                    .filter(|r| r.id == want || r.id.ends_with(want) || r.id.starts_with(want))
                    .map(|r| r.id.clone())
                    .collect();
                match found.as_slice() {
                    [one] => self.open_run(&one.clone()),
                    [] => self.open_run(want),
                    many => self.error(format!(
                        ":run {want}: {} runs match; give more of the id",
                        many.len()
                    )),
                }
            }
            "state" => match arg.map(str::parse::<RunState>) {
                None => self.state_filter = None,
                Some(Ok(s)) => {
                    self.state_filter = Some(s);
                    self.show(View::Runs);
                }
                Some(Err(e)) => self.error(e.to_string()),
            },
            "lane" => {
                self.lane_filter = arg.map(str::to_owned);
                self.show(View::Runs);
            }
            "pod" | "owner" => {
                self.pod_filter = arg.map(str::to_owned);
                self.show(View::Runs);
            }
            "clear" => {
                self.state_filter = None;
                self.lane_filter = None;
                self.pod_filter = None;
                for f in &mut self.filters {
                    f.set(String::new());
                }
            }
            "sort" => {
                let want = arg.unwrap_or_default().to_lowercase();
                match sort_columns(self.view)
                    .iter()
                    .find(|(_, n)| n.starts_with(&want) && !want.is_empty())
                {
                    Some((k, _)) => self.sort_by(*k),
                    None => self.error(format!(":sort {want}: no such column here")),
                }
            }
            "set" => match (arg, args.get(1).and_then(|v| switches::parse_bool(v))) {
                (Some(name), Some(enabled)) => match switches::spec(name) {
                    Ok(s) => self.ask_switch(s.name.to_owned(), enabled),
                    Err(e) => self.error(e.to_string()),
                },
                _ => self.error(":set NAME on|off (then give a reason)"),
            },
            "kill" | "term" | "terminate" | "pause" | "resume" | "start" => {
                let op = match head {
                    "kill" => ChaosOp::Kill,
                    "term" | "terminate" => ChaosOp::Terminate,
                    "pause" => ChaosOp::Pause,
                    "resume" => ChaosOp::Resume,
                    _ => ChaosOp::Start,
                };
                match arg {
                    Some(pod) => self.ask_chaos(op, pod.to_owned()),
                    None => self.error(format!(":{head} POD")),
                }
            }
            other => self.error(format!(
                "unknown command :{other} (:help lists the commands)"
            )),
        }
    }

    // -------------------------------------------------------------- selection

    fn move_by(&mut self, delta: i64) {
        if self.detail.is_some() {
            return;
        }
        let v = self.view.index();
        let len = self.row_keys(self.view).len();
        if len == 0 {
            return;
        }
        let cur = self.selected[v].0.min(len - 1) as i64;
        let next = (cur + delta).clamp(0, len as i64 - 1) as usize;
        self.select(next);
    }

    fn move_to(&mut self, index: usize) {
        if self.detail.is_some() {
            return;
        }
        let len = self.row_keys(self.view).len();
        if len > 0 {
            self.select(index.min(len - 1));
        }
    }

    fn select(&mut self, index: usize) {
        let v = self.view.index();
        let key = self.row_keys(self.view).into_iter().nth(index);
        let switch_changed = self.view == View::Switches && self.selected[v].1 != key;
        self.selected[v] = (index, key);
        if switch_changed {
            self.watch_changed();
        }
    }

    /// Keep each view's selection on the same row after data changed.
    fn resolve_selection(&mut self) {
        for view in View::ALL {
            let v = view.index();
            let keys = self.row_keys(view);
            let (idx, key) = self.selected[v].clone();
            let idx = match key.and_then(|k| keys.iter().position(|x| *x == k)) {
                Some(i) => i,
                None => idx.min(keys.len().saturating_sub(1)),
            };
            self.selected[v] = (idx, keys.get(idx).cloned());
        }
    }

    pub fn selected_key(&self, view: View) -> Option<String> {
        let (idx, _) = &self.selected[view.index()];
        self.row_keys(view).into_iter().nth(*idx)
    }

    fn selected_switch(&self) -> Option<String> {
        self.selected_key(View::Switches)
    }

    /// The keys of a view's visible rows, in display order.
    pub fn row_keys(&self, view: View) -> Vec<String> {
        match view {
            View::Runs => self.visible_runs().iter().map(|r| r.id.clone()).collect(),
            View::Pods => self
                .visible_pods()
                .iter()
                .map(|p| p.pod_id.clone())
                .collect(),
            View::Activity => self.activity_series(),
            View::Switches => self.visible_switches(),
            View::Events => self.visible_events().iter().map(|e| event_key(e)).collect(),
            View::Chaos => self.visible_chaos().iter().map(|p| p.id.clone()).collect(),
        }
    }

    // ----------------------------------------------------------- derived rows

    pub fn visible_runs(&self) -> Vec<&RunSummary> {
        let f = &self.filters[View::Runs.index()];
        let mut rows: Vec<&RunSummary> = self
            .runs
            .iter()
            .filter(|r| self.state_filter.is_none_or(|s| r.state == s))
            .filter(|r| self.lane_filter.as_ref().is_none_or(|l| &r.lane == l))
            .filter(|r| {
                self.pod_filter
                    .as_ref()
                    .is_none_or(|p| r.owner_pod.as_ref() == Some(p))
            })
            .filter(|r| !f.is_active() || f.matches(&run_text(r)))
            .collect();
        let (col, rev) = self.sort[View::Runs.index()];
        let step = |r: &RunSummary| r.current_step.as_ref().map(|s| s.0.clone());
        match col {
            'I' => rows.sort_by(|a, b| a.id.cmp(&b.id)),
            'W' => rows.sort_by(|a, b| a.workflow.cmp(&b.workflow).then(b.id.cmp(&a.id))),
            'L' => rows.sort_by(|a, b| a.lane.cmp(&b.lane).then(b.id.cmp(&a.id))),
            'S' => rows.sort_by(|a, b| a.state.cmp(&b.state).then(b.id.cmp(&a.id))),
            'O' => rows.sort_by(|a, b| a.owner_pod.cmp(&b.owner_pod).then(b.id.cmp(&a.id))),
            'N' => rows.sort_by_key(|r| step(r)),
            'T' => rows.sort_by_key(|r| std::cmp::Reverse(r.current_step.as_ref().map(|s| s.2))),
            'E' => rows.sort_by_key(|r| std::cmp::Reverse(r.last_event.as_ref().map(|e| e.0))),
            // Age: youngest first.
            _ => rows.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id))),
        }
        if rev {
            rows.reverse();
        }
        rows
    }

    pub fn visible_pods(&self) -> Vec<&PodRow> {
        let f = &self.filters[View::Pods.index()];
        let mut rows: Vec<&PodRow> = self
            .pods
            .iter()
            .filter(|p| !f.is_active() || f.matches(&format!("{} {:?}", p.pod_id, p.addr)))
            .collect();
        let (col, rev) = self.sort[View::Pods.index()];
        match col {
            'H' => rows.sort_by_key(|p| std::cmp::Reverse(p.heartbeat_at_ms)),
            'R' => rows.sort_by_key(|p| std::cmp::Reverse(self.owned_runs(&p.pod_id))),
            _ => rows.sort_by(|a, b| a.pod_id.cmp(&b.pod_id)),
        }
        if rev {
            rows.reverse();
        }
        rows
    }

    pub fn visible_events(&self) -> Vec<&ConsoleEvent> {
        let f = &self.filters[View::Events.index()];
        self.events
            .iter()
            .filter(|e| !f.is_active() || f.matches(&event_text(e)))
            .collect()
    }

    pub fn visible_switches(&self) -> Vec<String> {
        let f = &self.filters[View::Switches.index()];
        switches::KNOWN
            .iter()
            .filter(|s| !f.is_active() || f.matches(s.name))
            .map(|s| s.name.to_owned())
            .collect()
    }

    pub fn visible_chaos(&self) -> Vec<&ChaosPod> {
        let f = &self.filters[View::Chaos.index()];
        self.chaos
            .iter()
            .filter(|p| !f.is_active() || f.matches(&p.id))
            .collect()
    }

    /// Series names the Activity view lists, in display order.
    pub fn activity_series(&self) -> Vec<String> {
        let f = &self.filters[View::Activity.index()];
        let mut names: Vec<String> = self
            .activity
            .samples
            .keys()
            .filter(|k| !k.starts_with("detection latency"))
            .filter(|k| !f.is_active() || f.matches(k))
            .cloned()
            .collect();
        names.sort_by_key(|n| super::metrics::rank(n));
        names
    }

    /// Running runs owned by `pod` (from the active counts).
    pub fn owned_runs(&self, pod: &str) -> i64 {
        self.counts
            .iter()
            .filter(|c| c.state == RunState::Running && c.owner_pod.as_deref() == Some(pod))
            .map(|c| c.count)
            .sum()
    }

    pub fn count_state(&self, state: RunState) -> i64 {
        self.counts
            .iter()
            .filter(|c| c.state == state)
            .map(|c| c.count)
            .sum()
    }

    /// Value of a switch and whether it comes from the store (else the default).
    pub fn switch_value(&self, name: &str) -> (bool, Option<&SwitchRow>) {
        match self.switches.iter().find(|s| s.name == name) {
            Some(r) => (r.enabled, Some(r)),
            None => (
                switches::KNOWN
                    .iter()
                    .find(|s| s.name == name)
                    .is_none_or(|s| s.default),
                None,
            ),
        }
    }

    /// Deaths in the event feed, newest first.
    pub fn deaths(&self) -> Vec<&ConsoleEvent> {
        self.events
            .iter()
            .filter(|e| e.kind == EventKind::Death)
            .collect()
    }

    /// Claims of runs taken from `pod` at or after `since_ms`.
    pub fn claims_from(&self, pod: &str, since_ms: i64) -> Vec<&ConsoleEvent> {
        self.events
            .iter()
            .filter(|e| {
                e.kind == EventKind::Claim && e.from.as_deref() == Some(pod) && e.at_ms >= since_ms
            })
            .collect()
    }

    // ------------------------------------------------------------------ data

    pub fn apply_store(&mut self, u: StoreUpdate) {
        self.dirty = true;
        self.health.query_log.push_back((u.at_ms, u.queries));
        while self
            .health
            .query_log
            .front()
            .is_some_and(|(at, _)| *at < u.at_ms - 10_000)
        {
            self.health.query_log.pop_front();
        }
        self.health.last_took_ms = u.took_ms;
        let data = match u.result {
            Err(e) => {
                self.health.error = Some(e);
                return;
            }
            Ok(d) => d,
        };
        self.health.error = None;
        self.health.ok_at_ms = Some(u.at_ms);
        self.health.backend = data.backend;
        let StoreData {
            pods,
            counts,
            events,
            runs,
            switches,
            audit,
            locks,
            detail,
            ..
        } = data;
        // Append-only data is never stale: keep it whatever the generation.
        self.push_events(events);
        if let Some(d) = &detail {
            self.push_chunks(d);
        }
        if self.frozen || u.generation != self.generation {
            return;
        }
        for p in &pods {
            let q = self.heartbeats.entry(p.pod_id.clone()).or_default();
            q.push_back((u.at_ms - p.heartbeat_at_ms).max(0));
            while q.len() > HEARTBEAT_HISTORY {
                q.pop_front();
            }
        }
        self.heartbeats
            .retain(|id, _| pods.iter().any(|p| &p.pod_id == id));
        self.pods = pods;
        self.counts = counts;
        if let Some(r) = runs {
            self.runs = r;
        }
        if let Some(s) = switches {
            self.switches = s;
        }
        if audit.is_some() {
            self.audit = audit;
        }
        if locks.is_some() {
            self.locks = locks;
        }
        if let (Some(d), Some(open)) = (detail, self.detail.as_mut())
            && d.run_id == open.run_id
            && d.session == open.session
        {
            open.run = d.run;
            open.steps = d.steps;
            open.transitions = d.transitions;
            open.claims = d.claims;
            open.loaded = true;
        }
        self.resolve_selection();
    }

    fn push_events(&mut self, mut events: Vec<ConsoleEvent>) {
        if events.is_empty() {
            return;
        }
        events.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(b.id.cmp(&a.id)));
        for e in events.into_iter().rev() {
            if self
                .events
                .iter()
                .take(64)
                .any(|x| x.kind == e.kind && x.id == e.id)
            {
                continue;
            }
            self.events.push_front(e);
        }
        // Keep newest first even when rounds interleave.
        self.events
            .make_contiguous()
            .sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(b.id.cmp(&a.id)));
        self.events.truncate(self.events_limit);
    }

    fn push_chunks(&mut self, d: &DetailData) {
        let Some(open) = self.detail.as_mut() else {
            return;
        };
        if d.run_id != open.run_id || d.session != open.session {
            return;
        }
        if let Some((epoch, keep)) = &d.reset {
            apply_reset(&mut open.stream, *epoch, keep);
        }
        for c in &d.chunks {
            push_chunk(&mut open.stream, c);
        }
    }

    pub fn apply_metrics(&mut self, u: MetricsUpdate) {
        if self.frozen {
            return;
        }
        self.dirty = true;
        self.activity.apply(&u);
    }

    pub fn apply_chaos(&mut self, pods: Vec<ChaosPod>) {
        self.dirty = true;
        self.has_chaos = true;
        self.chaos = pods;
        self.resolve_selection();
    }

    /// An effect finished: say how, and read the store again.
    pub fn effect_done(&mut self, ok: bool, message: String) {
        self.dirty = true;
        if ok {
            self.info(message);
        } else {
            self.error(message);
        }
        self.watch_changed();
    }

    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }
}

/// The run went on at `epoch`: drop the older epochs' chunks that are not
/// in `keep` (what unfinished attempts streamed) and leave a marker.
fn apply_reset(
    stream: &mut Vec<StreamLine>,
    epoch: i64,
    keep: &[crate::engine::store::StreamPartRow],
) {
    let before = stream.len();
    stream.retain(|l| match l {
        StreamLine::Chunk {
            epoch: e,
            step,
            attempt,
            ..
        } => {
            *e >= epoch
                || keep.iter().any(|p| {
                    p.epoch == *e
                        && step.as_deref() == Some(p.node_id.as_str())
                        && *attempt == Some(p.attempt)
                })
        }
        StreamLine::Reset { .. } => true,
    });
    stream.push(StreamLine::Reset {
        epoch,
        discarded: before - stream.len(),
    });
}

fn push_chunk(stream: &mut Vec<StreamLine>, c: &Chunk) {
    if stream.iter().any(
        |l| matches!(l, StreamLine::Chunk { epoch, seq, .. } if *epoch == c.epoch && *seq == c.seq),
    ) {
        return;
    }
    stream.push(StreamLine::Chunk {
        epoch: c.epoch,
        seq: c.seq,
        step: c.node_id.clone(),
        attempt: c.attempt,
        data: c.data.clone(),
    });
    // Keep the tail.
    if stream.len() > 2000 {
        stream.drain(..stream.len() - 2000);
    }
}

/// The sortable columns of a view: (key, name).
pub fn sort_columns(view: View) -> &'static [(char, &'static str)] {
    match view {
        View::Runs => &[
            ('I', "id"),
            ('W', "workflow"),
            ('L', "lane"),
            ('S', "state"),
            ('O', "owner"),
            ('N', "step"),
            ('T', "attempts"),
            ('A', "age"),
            ('E', "event"),
        ],
        View::Pods => &[('I', "id"), ('H', "heartbeat"), ('R', "runs")],
        View::Chaos => &[('I', "id")],
        _ => &[],
    }
}

pub fn pod_state_str(s: PodState) -> &'static str {
    match s {
        PodState::Running => "running",
        PodState::Paused => "paused",
        PodState::Exited => "exited",
        PodState::Partitioned => "partitioned",
    }
}

pub fn run_text(r: &RunSummary) -> String {
    format!(
        "{} {} {} {} {} {} {}",
        r.id,
        r.workflow,
        r.lane,
        r.state,
        r.owner_pod.as_deref().unwrap_or("-"),
        r.current_step.as_ref().map_or("", |s| s.0.as_str()),
        r.last_event.as_ref().map_or("", |e| e.1.as_str())
    )
}

pub fn event_key(e: &ConsoleEvent) -> String {
    format!("{:?}:{}", e.kind, e.id)
}

/// The kind an event shows as: reaper and janitor transitions stand out.
pub fn event_label(e: &ConsoleEvent) -> &'static str {
    match e.kind {
        EventKind::Transition if e.reason.starts_with("reaper") => "reap",
        EventKind::Transition if e.reason.starts_with("janitor") => "janitor",
        EventKind::Transition => "transition",
        EventKind::Claim => "claim",
        EventKind::Death => "death",
        EventKind::Switch => "switch",
    }
}

pub fn event_text(e: &ConsoleEvent) -> String {
    format!(
        "{} {} {}",
        event_label(e),
        e.subject,
        super::views::event_detail(e)
    )
}
