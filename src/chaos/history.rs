//! The history: everything the runner observed, in one ordered log.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Mutex;
use std::time::Instant;

/// One line of `history.jsonl`. Each field once: `t_ms`, `wall_ms`, `kind`,
/// then the fields of that kind (docs/chaos.md lists them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the scenario started.
    pub t_ms: u64,
    /// Wall-clock milliseconds (to line up with the store's timestamps).
    pub wall_ms: i64,
    pub kind: String,
    #[serde(flatten)]
    pub data: Value,
}

#[derive(Debug)]
pub struct History {
    t0: Instant,
    wall0: i64,
    events: Mutex<Vec<Event>>,
}

impl History {
    pub fn new() -> Self {
        History {
            t0: Instant::now(),
            wall0: crate::engine::clock::wall_ms(),
            events: Mutex::default(),
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn wall0(&self) -> i64 {
        self.wall0
    }

    pub fn record(&self, kind: &str, data: Value) {
        let data = unclash(data);
        let e = Event {
            t_ms: self.elapsed_ms(),
            wall_ms: crate::engine::clock::wall_ms(),
            kind: kind.to_owned(),
            data,
        };
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    /// Add an event observed in the store at wall time `wall_ms`.
    pub fn record_at(&self, wall_ms: i64, kind: &str, data: Value) {
        let data = unclash(data);
        let t_ms = u64::try_from((wall_ms - self.wall0).max(0)).unwrap_or(0);
        let e = Event {
            t_ms,
            wall_ms,
            kind: kind.to_owned(),
            data,
        };
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    /// Every event, ordered by time (stable for equal times).
    pub fn snapshot(&self) -> Vec<Event> {
        let mut v = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.sort_by_key(|e| e.wall_ms);
        v
    }
}

/// The line's own keys may not appear again in its fields (a JSON object
/// with a key twice means whatever the parser reading it decides).
fn unclash(data: Value) -> Value {
    match data {
        Value::Object(m)
            if !["t_ms", "wall_ms", "kind"]
                .iter()
                .any(|k| m.contains_key(*k)) =>
        {
            Value::Object(m)
        }
        Value::Object(_) => serde_json::json!({ "fields": data }),
        other => serde_json::json!({ "value": other }),
    }
}

/// Read a saved `history.jsonl`, naming the line of any problem.
pub fn load(path: &std::path::Path) -> Result<Vec<Event>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: Event =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(e);
    }
    Ok(out)
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}
