//! Keys and the flat [`Action`] enum they map to.
//!
//! Every bindable action has a name (the `[keys]` table of the config).
//! Destructive actions (flipping a switch, signalling a pod) may never sit on
//! a navigation-like key: a k9s user nearly deleted production pods with
//! Ctrl-d, which everywhere else scrolls. Each of them opens a confirm
//! dialog anyway, so it always takes two deliberate steps.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Everything the console can be asked to do. `update` handles each one
/// without I/O; side effects leave as [`super::app::Effect`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    Command,
    Filter,
    Back,
    Up,
    Down,
    Top,
    Bottom,
    HalfPageUp,
    HalfPageDown,
    Open,
    Freeze,
    Refresh,
    ViewRuns,
    ViewPods,
    ViewActivity,
    ViewSwitches,
    ViewEvents,
    ViewChaos,
    ToggleSwitch,
    ChaosKill,
    ChaosTerminate,
    ChaosPause,
    ChaosResume,
    ChaosStart,
    /// Cancel the selected run (Runs view; asks first).
    CancelRun,
    /// Copy the selected run's id to the terminal's clipboard (OSC 52).
    CopyId,
    /// Sort the current table by the column with this key (again: reverse).
    Sort(char),
    /// Text typed into the filter, command line or a dialog.
    Input(char),
    /// Tab on the command line: complete the word being typed.
    Complete,
    Backspace,
    Submit,
    Cancel,
    /// `y` in a confirm dialog.
    Confirm,
    /// The clock moved (wall ms).
    Tick(i64),
    Resize(u16, u16),
}

const NAMED: &[(&str, Action)] = &[
    ("quit", Action::Quit),
    ("help", Action::Help),
    ("command", Action::Command),
    ("filter", Action::Filter),
    ("back", Action::Back),
    ("up", Action::Up),
    ("down", Action::Down),
    ("top", Action::Top),
    ("bottom", Action::Bottom),
    ("half_page_up", Action::HalfPageUp),
    ("half_page_down", Action::HalfPageDown),
    ("open", Action::Open),
    ("freeze", Action::Freeze),
    ("refresh", Action::Refresh),
    ("view_runs", Action::ViewRuns),
    ("view_pods", Action::ViewPods),
    ("view_activity", Action::ViewActivity),
    ("view_switches", Action::ViewSwitches),
    ("view_events", Action::ViewEvents),
    ("view_chaos", Action::ViewChaos),
    ("toggle_switch", Action::ToggleSwitch),
    ("chaos_kill", Action::ChaosKill),
    ("chaos_terminate", Action::ChaosTerminate),
    ("chaos_pause", Action::ChaosPause),
    ("chaos_resume", Action::ChaosResume),
    ("chaos_start", Action::ChaosStart),
    ("cancel_run", Action::CancelRun),
    ("copy_id", Action::CopyId),
];

impl Action {
    pub fn from_name(name: &str) -> Option<Action> {
        NAMED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    pub fn names() -> Vec<&'static str> {
        NAMED.iter().map(|(n, _)| *n).collect()
    }

    /// Changes something outside the console: refused in read-only mode,
    /// always confirmed, never on a navigation key.
    pub fn is_destructive(self) -> bool {
        matches!(
            self,
            Action::ToggleSwitch
                | Action::ChaosKill
                | Action::ChaosTerminate
                | Action::ChaosPause
                | Action::ChaosResume
                | Action::ChaosStart
                | Action::CancelRun
        )
    }

    fn is_navigation(self) -> bool {
        matches!(
            self,
            Action::Up
                | Action::Down
                | Action::Top
                | Action::Bottom
                | Action::HalfPageUp
                | Action::HalfPageDown
                | Action::Open
                | Action::Back
        )
    }
}

/// Keys that move or open things in this or other well-known TUIs (vim,
/// less, k9s, lazydocker): never a destructive action, whatever the config.
const NAVIGATION_LIKE: &[&str] = &[
    "j", "k", "h", "l", "g", "G", "up", "down", "left", "right", "pageup", "pagedown", "home",
    "end", "enter", "esc", "tab", "backtab", "space", "ctrl-d", "ctrl-u", "ctrl-f", "ctrl-b",
    "ctrl-e", "ctrl-y", "ctrl-n", "ctrl-p", "ctrl-c",
];

/// Uppercase letters that sort table columns (fixed, listed in the help).
pub const SORT_LETTERS: &[char] = &['I', 'W', 'L', 'S', 'O', 'N', 'T', 'A', 'E', 'H', 'R'];

/// One key, as written in the config (`q`, `G`, `ctrl-d`, `enter`, `f5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub code: KeyCode,
    pub ctrl: bool,
    pub alt: bool,
}

impl Key {
    pub fn parse(spec: &str) -> Result<Key, String> {
        let mut ctrl = false;
        let mut alt = false;
        let mut rest = spec;
        loop {
            if let Some(r) = rest.strip_prefix("ctrl-") {
                ctrl = true;
                rest = r;
            } else if let Some(r) = rest.strip_prefix("alt-") {
                alt = true;
                rest = r;
            } else {
                break;
            }
        }
        let code = match rest {
            "enter" => KeyCode::Enter,
            "esc" => KeyCode::Esc,
            "tab" => KeyCode::Tab,
            "backtab" => KeyCode::BackTab,
            "space" => KeyCode::Char(' '),
            "backspace" => KeyCode::Backspace,
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "home" => KeyCode::Home,
            "end" => KeyCode::End,
            "pageup" => KeyCode::PageUp,
            "pagedown" => KeyCode::PageDown,
            "delete" => KeyCode::Delete,
            f if f.len() > 1 && f.starts_with('f') && f[1..].parse::<u8>().is_ok() => {
                let n: u8 = f[1..].parse().unwrap_or(0);
                if !(1..=12).contains(&n) {
                    return Err(format!("{spec:?}: function keys are f1..f12"));
                }
                KeyCode::F(n)
            }
            s => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if !c.is_control() => KeyCode::Char(c),
                    _ => {
                        return Err(format!(
                            "{spec:?} is not a key: use one character, ctrl-X, alt-X, enter, esc, \
                             tab, space, up, down, left, right, home, end, pageup, pagedown, f1..f12"
                        ));
                    }
                }
            }
        };
        Ok(Key { code, ctrl, alt })
    }

    pub fn from_event(ev: &KeyEvent) -> Key {
        Key {
            code: ev.code,
            ctrl: ev.modifiers.contains(KeyModifiers::CONTROL),
            alt: ev.modifiers.contains(KeyModifiers::ALT),
        }
    }

    pub fn spec(&self) -> String {
        let base = match self.code {
            KeyCode::Enter => "enter".to_owned(),
            KeyCode::Esc => "esc".to_owned(),
            KeyCode::Tab => "tab".to_owned(),
            KeyCode::BackTab => "backtab".to_owned(),
            KeyCode::Char(' ') => "space".to_owned(),
            KeyCode::Backspace => "backspace".to_owned(),
            KeyCode::Up => "up".to_owned(),
            KeyCode::Down => "down".to_owned(),
            KeyCode::Left => "left".to_owned(),
            KeyCode::Right => "right".to_owned(),
            KeyCode::Home => "home".to_owned(),
            KeyCode::End => "end".to_owned(),
            KeyCode::PageUp => "pageup".to_owned(),
            KeyCode::PageDown => "pagedown".to_owned(),
            KeyCode::Delete => "delete".to_owned(),
            KeyCode::F(n) => format!("f{n}"),
            KeyCode::Char(c) => c.to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        format!(
            "{}{}{base}",
            if self.ctrl { "ctrl-" } else { "" },
            if self.alt { "alt-" } else { "" }
        )
    }
}

/// Key -> action, for the bindable actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keymap {
    bindings: Vec<(Key, Action)>,
}

impl Default for Keymap {
    fn default() -> Self {
        let defaults: &[(&str, Action)] = &[
            ("q", Action::Quit),
            ("ctrl-c", Action::Quit),
            ("?", Action::Help),
            (":", Action::Command),
            ("/", Action::Filter),
            ("esc", Action::Back),
            ("k", Action::Up),
            ("up", Action::Up),
            ("j", Action::Down),
            ("down", Action::Down),
            ("home", Action::Top),
            ("G", Action::Bottom),
            ("end", Action::Bottom),
            ("ctrl-u", Action::HalfPageUp),
            ("pageup", Action::HalfPageUp),
            ("ctrl-d", Action::HalfPageDown),
            ("pagedown", Action::HalfPageDown),
            ("enter", Action::Open),
            ("f", Action::Freeze),
            ("ctrl-r", Action::Refresh),
            ("1", Action::ViewRuns),
            ("2", Action::ViewPods),
            ("3", Action::ViewActivity),
            ("4", Action::ViewSwitches),
            ("5", Action::ViewEvents),
            ("6", Action::ViewChaos),
            ("t", Action::ToggleSwitch),
            ("x", Action::ChaosKill),
            ("s", Action::ChaosTerminate),
            ("p", Action::ChaosPause),
            ("c", Action::ChaosResume),
            ("r", Action::ChaosStart),
            ("ctrl-k", Action::CancelRun),
            ("y", Action::CopyId),
        ];
        Keymap {
            bindings: defaults
                .iter()
                .filter_map(|(k, a)| Key::parse(k).ok().map(|k| (k, *a)))
                .collect(),
        }
    }
}

impl Keymap {
    /// Replace the keys of `action`.
    pub fn rebind(&mut self, action: Action, specs: &[String]) -> Result<(), String> {
        if specs.is_empty() {
            return Err("needs at least one key".into());
        }
        let keys = specs
            .iter()
            .map(|s| Key::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        self.bindings.retain(|(_, a)| *a != action);
        for k in keys {
            // A key the user gives to this action leaves its default action.
            self.bindings.retain(|(b, _)| *b != k);
            self.bindings.push((k, action));
        }
        Ok(())
    }

    /// Destructive actions off navigation keys; no key reserved for sorting.
    pub fn validate(&self) -> Result<(), String> {
        for (k, a) in &self.bindings {
            let spec = k.spec();
            if a.is_destructive() {
                let nav_bound = self
                    .bindings
                    .iter()
                    .any(|(k2, a2)| k2 == k && a2.is_navigation());
                if NAVIGATION_LIKE.contains(&spec.as_str()) || nav_bound {
                    return Err(format!(
                        "{spec} is a navigation key; a destructive action ({}) may not sit on it",
                        name(*a)
                    ));
                }
            }
            if let KeyCode::Char(c) = k.code
                && !k.ctrl
                && !k.alt
                && SORT_LETTERS.contains(&c)
            {
                return Err(format!(
                    "{spec} sorts table columns; bind {} to another key",
                    name(*a)
                ));
            }
        }
        Ok(())
    }

    pub fn lookup(&self, key: Key) -> Option<Action> {
        self.bindings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, a)| *a)
    }

    /// The keys bound to `action`, as written in the config.
    pub fn keys_for(&self, action: Action) -> Vec<String> {
        self.bindings
            .iter()
            .filter(|(_, a)| *a == action)
            .map(|(k, _)| k.spec())
            .collect()
    }

    /// The first key of `action`, for hints ("?" when unbound).
    pub fn hint(&self, action: Action) -> String {
        self.keys_for(action)
            .into_iter()
            .next()
            .unwrap_or_else(|| "(unbound)".into())
    }
}

fn name(a: Action) -> &'static str {
    NAMED
        .iter()
        .find(|(_, b)| *b == a)
        .map_or("action", |(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        for s in ["q", "G", "ctrl-d", "enter", "f5", "space", "alt-x", "?"] {
            assert_eq!(Key::parse(s).expect(s).spec(), s);
        }
        assert!(Key::parse("f13").is_err());
        assert!(Key::parse("nope").is_err());
    }

    #[test]
    fn default_keymap_is_valid() {
        Keymap::default().validate().expect("defaults");
    }
}
