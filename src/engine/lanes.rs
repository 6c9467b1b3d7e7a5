//! Lanes: which kinds of work heartbeat, and what the reaper may do to them.
//!
//! Seed 003: a reaper covered four lanes but only two ever heartbeat, so every
//! long healthy run on the other two was timed out. Here a lane says whether
//! its runs heartbeat; that answer is copied onto each run at submit
//! (`heartbeat_timeout_ms`, NULL for lanes that do not heartbeat), and the
//! reaper's WHERE clause and its index use exactly that column. Runs on lanes
//! that do not heartbeat are bounded by their deadline instead.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneSpec {
    /// Whether runs on this lane heartbeat while they make progress.
    pub heartbeat: bool,
    /// A heartbeating run silent this long is stale (ms).
    #[serde(default = "default_timeout")]
    pub heartbeat_timeout_ms: u64,
    /// How many times the reaper queues a retry of a stale run.
    #[serde(default)]
    pub retries: u32,
}

fn default_timeout() -> u64 {
    5_000
}

#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("{file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: lane {lane:?}: {problem}")]
    Invalid {
        file: String,
        lane: String,
        problem: String,
    },
    #[error(
        "workflow {workflow:?} uses lane {lane:?}, which is not configured; known lanes: {known}"
    )]
    Unknown {
        workflow: String,
        lane: String,
        known: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LanesFile {
    #[serde(default)]
    lanes: BTreeMap<String, LaneSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lanes {
    by_name: BTreeMap<String, LaneSpec>,
}

impl Default for Lanes {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Lanes {
    /// The four lanes of the field notes: `sync` and `auth` heartbeat,
    /// `action` and `embed_backfill` do not.
    pub fn builtin() -> Self {
        let lane = |heartbeat, retries| LaneSpec {
            heartbeat,
            heartbeat_timeout_ms: default_timeout(),
            retries,
        };
        let by_name = BTreeMap::from([
            ("sync".to_owned(), lane(true, 1)),
            ("auth".to_owned(), lane(true, 0)),
            ("action".to_owned(), lane(false, 0)),
            ("embed_backfill".to_owned(), lane(false, 0)),
        ]);
        Lanes { by_name }
    }

    /// The built-in lanes, overridden and extended by a TOML file of
    /// `[lanes.NAME]` tables.
    pub fn load(file: &Path) -> Result<Self, LaneError> {
        let fname = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| LaneError::Read {
            file: fname.clone(),
            source,
        })?;
        let parsed: LanesFile = toml::from_str(&text).map_err(|source| LaneError::Parse {
            file: fname.clone(),
            source,
        })?;
        let mut lanes = Self::builtin();
        for (name, spec) in parsed.lanes {
            if spec.heartbeat && spec.heartbeat_timeout_ms < 100 {
                return Err(LaneError::Invalid {
                    file: fname,
                    lane: name,
                    problem: "heartbeat_timeout_ms must be at least 100".into(),
                });
            }
            lanes.by_name.insert(name, spec);
        }
        Ok(lanes)
    }

    pub fn get(&self, lane: &str) -> Option<&LaneSpec> {
        self.by_name.get(lane)
    }

    pub fn names(&self) -> impl Iterator<Item = (&str, &LaneSpec)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Every lane a workflow uses must be configured.
    pub fn check(
        &self,
        workflows: &crate::engine::workflow::WorkflowRegistry,
    ) -> Result<(), LaneError> {
        for name in workflows.names() {
            let Ok(wf) = workflows.get(name) else {
                continue;
            };
            let used = std::iter::once(&wf.lane).chain(wf.steps.iter().map(|s| &s.lane));
            for lane in used {
                if self.get(lane).is_none() {
                    return Err(LaneError::Unknown {
                        workflow: wf.name.clone(),
                        lane: lane.clone(),
                        known: self.by_name.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
            }
        }
        Ok(())
    }

    /// `(heartbeat_timeout_ms, retries)` to stamp on a new run of `lane`.
    pub fn run_policy(&self, lane: &str) -> (Option<i64>, i64) {
        match self.get(lane) {
            Some(l) if l.heartbeat => (
                Some(i64::try_from(l.heartbeat_timeout_ms).unwrap_or(i64::MAX)),
                i64::from(l.retries),
            ),
            Some(l) => (None, i64::from(l.retries)),
            None => (None, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_heartbeating_lanes_get_a_timeout() {
        let l = Lanes::builtin();
        assert_eq!(l.run_policy("sync"), (Some(5000), 1));
        assert_eq!(l.run_policy("auth"), (Some(5000), 0));
        assert_eq!(l.run_policy("action").0, None);
        assert_eq!(l.run_policy("embed_backfill").0, None);
    }

    #[test]
    fn a_file_overrides_and_extends() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lanes.toml");
        std::fs::write(&f, "[lanes.sync]\nheartbeat = true\nheartbeat_timeout_ms = 800\nretries = 2\n[lanes.batch]\nheartbeat = false\n").unwrap();
        let l = Lanes::load(&f).unwrap();
        assert_eq!(l.run_policy("sync"), (Some(800), 2));
        assert_eq!(l.run_policy("batch"), (None, 0));
        std::fs::write(&f, "[lanes.sync]\nheartbeat = true\nbogus = 1\n").unwrap();
        let err = Lanes::load(&f).unwrap_err().to_string();
        assert!(err.contains("lanes.toml") && err.contains("bogus"), "{err}");
    }
}
