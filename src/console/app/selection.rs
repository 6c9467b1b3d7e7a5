//! Where the user is: the view shown, the open run, the selected row of
//! each view (kept on the same row across refreshes), and the rows each
//! view shows, filtered and sorted, with what is derived from them.

use super::{App, Detail, Level, Mode, OwnView, Scrape};
use crate::cluster::PodState;
use crate::console::data::{ChaosPod, View};
use crate::engine::run::RunState;
use crate::engine::store::liveness::PodRow;
use crate::engine::store::{ConsoleEvent, EventKind, RunSummary, SwitchRow};
use crate::engine::switches;

impl App {
    // ------------------------------------------------------------ navigation

    pub(super) fn show(&mut self, v: View) {
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

    pub(super) fn open(&mut self) {
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

    pub(super) fn sort_by(&mut self, c: char) {
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

    // -------------------------------------------------------------- selection

    pub(super) fn move_by(&mut self, delta: i64) {
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

    pub(super) fn move_to(&mut self, index: usize) {
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
    pub(super) fn resolve_selection(&mut self) {
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

    pub(super) fn selected_switch(&self) -> Option<String> {
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
        names.sort_by_key(|n| crate::console::metrics::rank(n));
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

    /// The last scrape of `p`'s /metrics: keyed by pod id, or by URL for
    /// the pods given with --pods.
    pub fn pod_scrape(&self, p: &PodRow) -> Option<&Scrape> {
        self.activity.scrapes.get(&p.pod_id).or_else(|| {
            let addr = p.addr.as_deref()?.trim_end_matches('/');
            self.activity
                .scrapes
                .values()
                .find(|s| s.url.trim_end_matches('/') == addr)
        })
    }

    /// `p`'s own view of itself, when its /metrics answered last time.
    pub fn own_view(&self, p: &PodRow) -> Option<OwnView> {
        let s = self.pod_scrape(p).filter(|s| s.error.is_none())?;
        let m = s.metrics.as_ref()?;
        Some(OwnView {
            ready: m.ready.map(|r| r >= 1.0),
            lease_left: m.lease_left,
            round_trips: s.round_trips,
            data_pool: m.pools.get("data").copied(),
        })
    }

    /// The registered pods that say they are not ready.
    pub fn unready_pods(&self) -> Vec<&str> {
        self.pods
            .iter()
            .filter(|p| self.own_view(p).is_some_and(|v| v.ready == Some(false)))
            .map(|p| p.pod_id.as_str())
            .collect()
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
        crate::console::views::event_detail(e)
    )
}
