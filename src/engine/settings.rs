//! Numeric settings every pod sharing a store agrees on: rows in the store's
//! `settings` table, each change in one transaction with a `setting_audit`
//! row (who, when, old, new, why), like the kill switches. A setting with no
//! row has its built-in default.

use crate::engine::store::{SettingAudit, Store, StoreError};

/// The longest deadline a run gets. Applied by the store when it creates a
/// run, so every pod caps alike: a workflow's `deadline_ms` above it is
/// capped to it, and a run of a workflow without `deadline_ms` gets it.
pub const RUNS_MAX_DEADLINE_MS: &str = "runs.max_deadline_ms";

/// A setting Vigil knows: its name, default, bounds and what it governs.
#[derive(Debug, Clone, Copy)]
pub struct SettingSpec {
    pub name: &'static str,
    pub default: i64,
    pub min: i64,
    pub max: i64,
    pub governs: &'static str,
}

pub const KNOWN: &[SettingSpec] = &[SettingSpec {
    name: RUNS_MAX_DEADLINE_MS,
    // One hour; migration 0006 gives unfinished older runs the same.
    default: 3_600_000,
    min: 1_000,
    // About ten years: far from any overflow of `now + value`.
    max: 315_360_000_000,
    governs: "the longest deadline any run gets (ms): a workflow's deadline_ms above it is \
              capped, and a workflow without deadline_ms gets it; applied when a run is created",
}];

/// The default of [`RUNS_MAX_DEADLINE_MS`] (used while the store has no row).
pub const DEFAULT_MAX_DEADLINE_MS: i64 = KNOWN[0].default;

#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("unknown setting {name:?}; known: {known}")]
    Unknown { name: String, known: String },
    #[error("{name} = {value} is out of range: expected {min} to {max}")]
    OutOfRange {
        name: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn spec(name: &str) -> Result<&'static SettingSpec, SettingError> {
    KNOWN
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| SettingError::Unknown {
            name: name.to_owned(),
            known: KNOWN.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        })
}

/// The current value of a known setting: its row, else its default.
pub async fn get(store: &dyn Store, name: &str) -> Result<i64, SettingError> {
    let spec = spec(name)?;
    let rows = store.settings().await?;
    Ok(rows
        .iter()
        .find(|r| r.name == spec.name)
        .map_or(spec.default, |r| r.value))
}

/// Set a known setting in the store, within its bounds, with its audit row.
pub async fn set(
    store: &dyn Store,
    name: &str,
    value: i64,
    who: &str,
    reason: &str,
) -> Result<SettingAudit, SettingError> {
    let spec = spec(name)?;
    if !(spec.min..=spec.max).contains(&value) {
        return Err(SettingError::OutOfRange {
            name: spec.name,
            value,
            min: spec.min,
            max: spec.max,
        });
    }
    Ok(store.set_setting(spec.name, value, who, reason).await?)
}
