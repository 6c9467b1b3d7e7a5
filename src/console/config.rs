//! The console's TOML config: refresh rates, read-only, key bindings, theme.
//!
//! Read from `$XDG_CONFIG_HOME/vigil/console.toml` (default
//! `~/.config/vigil/console.toml`) or `--config PATH`. Every field is
//! optional; unknown fields are errors that name the file and the field, so a
//! typo never silently falls back to a default.

use super::keys::{Action as KeyAction, Keymap};
use super::theme::{Theme, ThemeConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// How often the store is read (ms).
    pub refresh_ms: u64,
    /// How often pods' /metrics are scraped (ms).
    pub metrics_ms: u64,
    /// How many of the newest runs the Runs view loads.
    pub runs_limit: i64,
    /// How many events the Events view keeps.
    pub events_limit: usize,
    /// Disable every action (switch flips, chaos), in every view.
    pub read_only: bool,
    /// Who the audit trail names for switch flips (default: $USER).
    pub who: Option<String>,
    pub theme: ThemeConfig,
    /// `action = "key"` or `action = ["key", "key"]`.
    pub keys: std::collections::BTreeMap<String, KeyList>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum KeyList {
    One(String),
    Many(Vec<String>),
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            refresh_ms: 500,
            metrics_ms: 1000,
            runs_limit: 1000,
            events_limit: 2000,
            read_only: false,
            who: None,
            theme: ThemeConfig::default(),
            keys: Default::default(),
        }
    }
}

/// The config the console runs with, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub refresh: Duration,
    pub metrics: Duration,
    pub runs_limit: i64,
    pub events_limit: usize,
    pub read_only: bool,
    pub who: String,
    pub theme: Theme,
    pub keys: Keymap,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading console config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("console config {path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// `$XDG_CONFIG_HOME/vigil/console.toml`, else `$HOME/.config/vigil/console.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("vigil").join("console.toml"))
}

impl Config {
    /// Load `explicit` (which must exist), else the default path if it
    /// exists, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => default_path().filter(|p| p.exists()),
        };
        match path {
            None => Config::from_file(ConfigFile::default(), None),
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                Config::parse(&text, Some(p))
            }
        }
    }

    pub fn parse(text: &str, path: Option<PathBuf>) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: shown(path.as_deref()),
            problem: e.to_string(),
        })?;
        Config::from_file(file, path)
    }

    pub fn from_file(file: ConfigFile, path: Option<PathBuf>) -> Result<Config, ConfigError> {
        let invalid = |problem: String| ConfigError::Invalid {
            path: shown(path.as_deref()),
            problem,
        };
        if !(100..=60_000).contains(&file.refresh_ms) {
            return Err(invalid(format!(
                "refresh_ms = {}: use 100..=60000",
                file.refresh_ms
            )));
        }
        if !(200..=60_000).contains(&file.metrics_ms) {
            return Err(invalid(format!(
                "metrics_ms = {}: use 200..=60000",
                file.metrics_ms
            )));
        }
        if !(1..=100_000).contains(&file.runs_limit) {
            return Err(invalid(format!(
                "runs_limit = {}: use 1..=100000",
                file.runs_limit
            )));
        }
        if !(10..=100_000).contains(&file.events_limit) {
            return Err(invalid(format!(
                "events_limit = {}: use 10..=100000",
                file.events_limit
            )));
        }
        let mut keys = Keymap::default();
        for (name, list) in &file.keys {
            let action = KeyAction::from_name(name).ok_or_else(|| {
                invalid(format!(
                    "[keys] {name}: unknown action; known: {}",
                    KeyAction::names().join(", ")
                ))
            })?;
            let specs = match list {
                KeyList::One(s) => vec![s.clone()],
                KeyList::Many(v) => v.clone(),
            };
            keys.rebind(action, &specs)
                .map_err(|e| invalid(format!("[keys] {name}: {e}")))?;
        }
        keys.validate()
            .map_err(|e| invalid(format!("[keys]: {e}")))?;
        let theme = Theme::from_config(&file.theme, crate::logging::no_color())
            .map_err(|e| invalid(format!("[theme] {e}")))?;
        let who = file
            .who
            .clone()
            .or_else(|| std::env::var("VIGIL_WHO").ok())
            .filter(|w| !w.trim().is_empty())
            .unwrap_or_else(crate::human::default_who);
        Ok(Config {
            refresh: Duration::from_millis(file.refresh_ms),
            metrics: Duration::from_millis(file.metrics_ms),
            runs_limit: file.runs_limit,
            events_limit: file.events_limit,
            read_only: file.read_only,
            who,
            theme,
            keys,
            source: path,
        })
    }
}

fn shown(p: Option<&Path>) -> String {
    p.map_or_else(|| "(inline)".to_owned(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::parse("", None).expect("empty config");
        assert_eq!(c.refresh, Duration::from_millis(500));
        assert!(!c.read_only);
    }

    #[test]
    fn unknown_fields_and_actions_are_named() {
        let e = Config::parse("refresh = 3", None).unwrap_err().to_string();
        assert!(e.contains("refresh"), "{e}");
        let e = Config::parse("[keys]\nexplode = \"x\"", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("explode") && e.contains("unknown action"), "{e}");
    }

    #[test]
    fn destructive_actions_cannot_sit_on_navigation_keys() {
        let e = Config::parse("[keys]\nchaos_kill = \"ctrl-d\"", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ctrl-d"), "{e}");
        let e = Config::parse("[keys]\ntoggle_switch = \"enter\"", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("enter"), "{e}");
    }

    #[test]
    fn rebinding_and_read_only() {
        let c = Config::parse(
            "read_only = true\nrefresh_ms = 250\n[keys]\nquit = [\"Q\", \"ctrl-q\"]",
            None,
        )
        .expect("valid");
        assert!(c.read_only);
        assert_eq!(c.keys.keys_for(KeyAction::Quit), vec!["Q", "ctrl-q"]);
    }

    #[test]
    fn out_of_range_refresh_is_refused() {
        let e = Config::parse("refresh_ms = 5", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("refresh_ms = 5"), "{e}");
    }
}
