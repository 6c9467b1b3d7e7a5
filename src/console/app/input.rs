//! Keys: mapping a key to an [`Action`] in the current mode, and
//! [`App::update`], which applies one; text input for the filter, command
//! line and switch dialog; and the confirmations that start mutations.

use super::{App, ChaosOp, Dialog, Effect, Level, Mode, pod_state_str};
use crate::cluster::PodState;
use crate::console::data::View;
use crate::console::keys::{Action, Key, SORT_LETTERS};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};

impl App {
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
                KeyCode::Tab if matches!(self.mode, Mode::Command(_)) => Some(Action::Complete),
                KeyCode::Backspace => Some(Action::Backspace),
                KeyCode::Char(c) if !key.ctrl && !key.alt => Some(Action::Input(c)),
                _ => None,
            };
        }
        if let Mode::Dialog(Dialog::Chaos { .. } | Dialog::CancelRun { .. }) = self.mode {
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
            Action::Complete => self.complete(),
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
            Action::CancelRun => self.cancel_selected_run(),
            Action::CopyId => self.copy_selected_id(),
        }
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
            Mode::Command(cmd) => {
                // A message from an earlier command does not outlive the
                // next one: this command sets its own, or none.
                self.status = None;
                self.command(&cmd);
            }
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
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Dialog(Dialog::Chaos { op, pod }) => {
                if !self.allow_mutation("chaos actions") {
                    return;
                }
                self.bump_gen();
                self.info(format!("{} {pod} ...", op.verb()));
                self.effects.push(Effect::Chaos { op, pod });
            }
            Mode::Dialog(Dialog::CancelRun { run_id }) => {
                if !self.allow_mutation("cancelling runs") {
                    return;
                }
                self.bump_gen();
                self.info(format!("cancelling run {run_id} ..."));
                self.effects.push(Effect::CancelRun { run_id });
            }
            other => self.mode = other,
        }
    }

    /// The run the keys act on: the open detail's, else the Runs view's
    /// selected row.
    fn target_run(&mut self, what: &str) -> Option<String> {
        if let Some(d) = &self.detail {
            // The full id once the store named it (`:run` takes a prefix).
            return Some(
                d.run
                    .as_ref()
                    .map_or_else(|| d.run_id.clone(), |r| r.id.clone()),
            );
        }
        if self.view != View::Runs {
            self.error(format!(
                "{what} acts on a run: select one in the Runs view (1)"
            ));
            return None;
        }
        let id = self.selected_key(View::Runs);
        if id.is_none() {
            self.error(format!("{what}: no run selected"));
        }
        id
    }

    /// First step of a cancel: refused in read-only and for a run that
    /// already ended; otherwise a dialog asks.
    fn cancel_selected_run(&mut self) {
        if !self.allow_mutation("cancelling runs") {
            return;
        }
        let Some(run_id) = self.target_run("cancel") else {
            return;
        };
        let state = self
            .runs
            .iter()
            .find(|r| r.id == run_id)
            .map(|r| r.state)
            .or_else(|| {
                self.detail
                    .as_ref()
                    .and_then(|d| d.run.as_ref().map(|r| r.state))
            });
        if let Some(s) = state.filter(|s| s.is_terminal()) {
            self.error(format!("run {run_id} is already {s}: nothing to cancel"));
            return;
        }
        self.mode = Mode::Dialog(Dialog::CancelRun { run_id });
    }

    fn copy_selected_id(&mut self) {
        let Some(run_id) = self.target_run("copy") else {
            return;
        };
        self.info(format!(
            "copied {run_id} (OSC 52: the terminal's clipboard, where it allows)"
        ));
        self.effects.push(Effect::Copy { text: run_id });
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

    pub(super) fn ask_switch(&mut self, name: String, enabled: bool) {
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

    pub(super) fn ask_chaos(&mut self, op: ChaosOp, pod: String) {
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
}
