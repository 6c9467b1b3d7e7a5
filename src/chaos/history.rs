//! The history: everything the runner observed, in one ordered log.

use serde::Serialize;
use serde_json::Value;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
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

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}
