//! Kill switches: rows in the store with an audit trail, watched live.
//!
//! Reading a switch is one atomic load. A watcher loop re-reads the table
//! every [`WATCH_INTERVAL`], so every process sees a flip within a second
//! without a restart. An environment variable sets only the boot default,
//! used while the store has no row for the switch (the original bug read its
//! switch at module load and needed a restart to flip).

use crate::engine::store::{Store, StoreError, SwitchAudit};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A switch Vigil knows: its name, default, the env var for the boot
/// default, and what turning it off does.
#[derive(Debug, Clone, Copy)]
pub struct SwitchSpec {
    pub name: &'static str,
    pub default: bool,
    pub env: &'static str,
    pub disables: &'static str,
    pub metric: &'static str,
}

pub const AUTHORITY_DB_FALLBACK: &str = "authority.db_fallback";

pub const RECOVERY_ENABLED: &str = "recovery.enabled";
pub const REAPER_ENABLED: &str = "reaper.enabled";
pub const JANITOR_ENABLED: &str = "janitor.enabled";

pub const KNOWN: &[SwitchSpec] = &[
    // Off, a tracker miss stays a miss. The step that needed those outputs
    // fails permanently (naming the predecessors and this switch) before any
    // attempt; it never runs on missing inputs. The pre-fix behaviour of
    // FIELD-NOTES section 1 (a fan-in succeeding on nulls) is not restored:
    // a loud failure is recoverable, silently wrong output is not.
    SwitchSpec {
        name: AUTHORITY_DB_FALLBACK,
        default: true,
        env: "VIGIL_SWITCH_AUTHORITY_DB_FALLBACK",
        disables: "the batched store lookup of predecessor outputs on a tracker miss; a step \
                   whose predecessors ran in another process (a resumed run) then fails \
                   permanently, naming them, instead of running on missing inputs",
        metric: "vigil_tracker_db_fallback_total{outcome=\"disabled\"}",
    },
    SwitchSpec {
        name: RECOVERY_ENABLED,
        default: true,
        env: "VIGIL_SWITCH_RECOVERY_ENABLED",
        disables: "claiming the runs of dead pods; dead pods are still detected and counted, \
                   their runs wait (and the janitor may mark them lost)",
        metric: "vigil_recovery_claims_total",
    },
    SwitchSpec {
        name: REAPER_ENABLED,
        default: true,
        env: "VIGIL_SWITCH_REAPER_ENABLED",
        disables: "timing out stale heartbeating runs (and queueing their retries) and runs past \
                   their deadline",
        metric: "vigil_reaper_timeouts_total",
    },
    SwitchSpec {
        name: JANITOR_ENABLED,
        default: true,
        env: "VIGIL_SWITCH_JANITOR_ENABLED",
        disables: "marking lost the runs whose owner is gone and that nobody resumed",
        metric: "vigil_janitor_lost_total",
    },
];

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("unknown switch {name:?}; known: {known}")]
    Unknown { name: String, known: String },
    #[error("bad value {value:?} for {env}: expected on/off, true/false or 1/0")]
    BadEnv { env: &'static str, value: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn spec(name: &str) -> Result<&'static SwitchSpec, SwitchError> {
    KNOWN
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| SwitchError::Unknown {
            name: name.to_owned(),
            known: KNOWN.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        })
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Some(true),
        "off" | "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[derive(Debug)]
struct Inner {
    /// One flag per entry of [`KNOWN`], same order.
    flags: Vec<AtomicBool>,
    boot: Vec<bool>,
    last_tick_ms: AtomicI64,
}

/// This process's view of the switches. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Switches(Arc<Inner>);

impl Switches {
    /// Boot defaults from [`KNOWN`], overridden by their env vars.
    pub fn from_env() -> Result<Self, SwitchError> {
        let mut boot = Vec::with_capacity(KNOWN.len());
        for s in KNOWN {
            let v = match std::env::var(s.env) {
                Ok(v) => parse_bool(&v).ok_or(SwitchError::BadEnv {
                    env: s.env,
                    value: v,
                })?,
                Err(_) => s.default,
            };
            boot.push(v);
        }
        Ok(Self::with_boot(boot))
    }

    /// Boot defaults as in [`KNOWN`], ignoring the environment (tests).
    pub fn defaults() -> Self {
        Self::with_boot(KNOWN.iter().map(|s| s.default).collect())
    }

    fn with_boot(boot: Vec<bool>) -> Self {
        Switches(Arc::new(Inner {
            flags: boot.iter().map(|b| AtomicBool::new(*b)).collect(),
            boot,
            last_tick_ms: AtomicI64::new(0),
        }))
    }

    fn index(name: &str) -> Option<usize> {
        KNOWN.iter().position(|s| s.name == name)
    }

    /// The current value; an unknown name reads as off.
    pub fn enabled(&self, name: &str) -> bool {
        Self::index(name).is_some_and(|i| self.0.flags[i].load(Ordering::Relaxed))
    }

    /// `authority.db_fallback`, the hot-path read.
    pub fn db_fallback(&self) -> bool {
        self.0.flags[0].load(Ordering::Relaxed)
    }

    /// Wall-clock ms of the watcher's last successful refresh (0: never).
    pub fn last_tick_ms(&self) -> i64 {
        self.0.last_tick_ms.load(Ordering::Relaxed)
    }

    /// Re-read every switch from the store. A switch with no row keeps its
    /// boot default.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let rows = store.switches().await?;
        for (i, s) in KNOWN.iter().enumerate() {
            let v = rows
                .iter()
                .find(|r| r.name == s.name)
                .map_or(self.0.boot[i], |r| r.enabled);
            let old = self.0.flags[i].swap(v, Ordering::Relaxed);
            if old != v {
                tracing::warn!(switch = s.name, enabled = v, "kill switch changed");
                store
                    .metrics()
                    .switch_flips
                    .get_or_create(&crate::engine::metrics::Kind {
                        kind: s.name.into(),
                    })
                    .inc();
            }
        }
        self.0
            .last_tick_ms
            .store(crate::engine::clock::wall_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// Keep this view in step with the store until `cancel` fires.
    pub fn spawn_watcher(
        &self,
        store: Arc<dyn Store>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = me.refresh(store.as_ref()).await {
                            tracing::warn!(error = %e, "switch watcher could not read the store; keeping last values");
                        }
                    }
                }
            }
        })
    }
}

/// Set a known switch in the store, with its audit row.
pub async fn set(
    store: &dyn Store,
    name: &str,
    enabled: bool,
    who: &str,
    reason: &str,
) -> Result<SwitchAudit, SwitchError> {
    let spec = spec(name)?;
    Ok(store.set_switch(spec.name, enabled, who, reason).await?)
}
