//! Step authority: which steps of a run succeeded, and with what raw output.
//!
//! The in-process tracker is the fast path. On a miss (a run resumed on a
//! process that did not run its predecessors), one batched query reads
//! `output_raw` for every missing step: never the redacted `output`, which
//! would inject `[REDACTED]` into downstream inputs only on cross-process
//! resume. Concurrent lookups of the same key share one query (single
//! flight). Store errors are contained: evicted, warned, counted, and
//! reported to the caller as a retryable miss.

use crate::engine::metrics::{FallbackOutcome, FallbackSource, Metrics};
use crate::engine::store::Store;
use crate::engine::switches::Switches;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

type Key = (String, String);
type BatchResult = Result<Arc<HashMap<String, Value>>, Arc<str>>;
type Batch = Shared<BoxFuture<'static, BatchResult>>;

/// The answer to "what did these steps output?".
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Lookup {
    pub found: HashMap<String, Value>,
    /// Not in the tracker and not (provably) in the store.
    pub missing: Vec<String>,
    /// The store lookup failed: the misses may well exist; try again.
    pub errored: bool,
    /// `authority.db_fallback` is off: no store lookup was made.
    pub disabled: bool,
}

#[derive(Debug)]
pub struct Authority {
    store: Arc<dyn Store>,
    switches: Switches,
    metrics: Arc<Metrics>,
    tracker: Arc<Mutex<HashMap<Key, Value>>>,
    inflight: Mutex<HashMap<Key, (u64, Batch)>>,
    next_batch: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Authority {
    pub fn new(store: Arc<dyn Store>, switches: Switches, metrics: Arc<Metrics>) -> Self {
        Authority {
            store,
            switches,
            metrics,
            tracker: Arc::default(),
            inflight: Mutex::default(),
            next_batch: AtomicU64::new(1),
        }
    }

    /// Record a step success this process committed.
    pub fn record(&self, run_id: &str, node_id: &str, raw: Value) {
        lock(&self.tracker).insert((run_id.to_owned(), node_id.to_owned()), raw);
    }

    /// Drop everything known about a run (it ended, or this process lost it).
    pub fn forget_run(&self, run_id: &str) {
        lock(&self.tracker).retain(|(r, _), _| r != run_id);
    }

    pub fn tracked(&self, run_id: &str, node_id: &str) -> bool {
        lock(&self.tracker).contains_key(&(run_id.to_owned(), node_id.to_owned()))
    }

    /// Raw outputs of `nodes`, from the tracker or, for the misses, from one
    /// batched store query.
    pub async fn outputs(&self, run_id: &str, nodes: &[String], source: FallbackSource) -> Lookup {
        let mut lookup = Lookup::default();
        let mut misses = Vec::new();
        {
            let tracker = lock(&self.tracker);
            for n in nodes {
                match tracker.get(&(run_id.to_owned(), n.clone())) {
                    Some(v) => {
                        lookup.found.insert(n.clone(), v.clone());
                    }
                    None => misses.push(n.clone()),
                }
            }
        }
        if misses.is_empty() {
            return lookup;
        }
        if !self.switches.db_fallback() {
            self.metrics.inc_fallback(source, FallbackOutcome::Disabled);
            tracing::warn!(run_id, missing = ?misses, "authority.db_fallback is off: tracker misses stay misses");
            lookup.missing = misses;
            lookup.disabled = true;
            return lookup;
        }

        // Single flight: join batches already under way for some keys, lead
        // one new batch for the rest.
        let (mine, joined) = {
            let mut inflight = lock(&self.inflight);
            let mut joined: Vec<(String, Batch)> = Vec::new();
            let mut lead = Vec::new();
            for n in &misses {
                match inflight.get(&(run_id.to_owned(), n.clone())) {
                    Some((_, b)) => joined.push((n.clone(), b.clone())),
                    None => lead.push(n.clone()),
                }
            }
            let mine = if lead.is_empty() {
                None
            } else {
                let id = self.next_batch.fetch_add(1, Ordering::Relaxed);
                let batch = self.batch(run_id.to_owned(), lead.clone(), source);
                for n in &lead {
                    inflight.insert((run_id.to_owned(), n.clone()), (id, batch.clone()));
                }
                Some((id, lead, batch))
            };
            (mine, joined)
        };

        let mut results: Vec<(Vec<String>, BatchResult)> = Vec::new();
        if let Some((id, lead, batch)) = mine {
            let res = batch.await;
            let mut inflight = lock(&self.inflight);
            for n in &lead {
                let key = (run_id.to_owned(), n.clone());
                if inflight.get(&key).is_some_and(|(bid, _)| *bid == id) {
                    inflight.remove(&key);
                }
            }
            drop(inflight);
            results.push((lead, res));
        }
        for (n, batch) in joined {
            results.push((vec![n], batch.await));
        }

        for (keys, res) in results {
            match res {
                Ok(map) => {
                    for k in keys {
                        match map.get(&k) {
                            Some(v) => {
                                lookup.found.insert(k, v.clone());
                            }
                            None => lookup.missing.push(k),
                        }
                    }
                }
                Err(_) => {
                    // Evict: nothing half-known stays cached for these keys.
                    let mut tracker = lock(&self.tracker);
                    for k in keys {
                        tracker.remove(&(run_id.to_owned(), k.clone()));
                        lookup.missing.push(k);
                    }
                    lookup.errored = true;
                }
            }
        }
        lookup
    }

    /// One batched query, shared by every concurrent asker of its keys.
    fn batch(&self, run_id: String, nodes: Vec<String>, source: FallbackSource) -> Batch {
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let tracker = self.tracker.clone();
        async move {
            let started = Instant::now();
            let res = store.step_outputs_raw(&run_id, &nodes).await;
            metrics
                .tracker_db_fallback_duration
                .observe(started.elapsed().as_secs_f64());
            match res {
                Ok(map) => {
                    let outcome = if nodes.iter().all(|n| map.contains_key(n)) {
                        FallbackOutcome::Hit
                    } else {
                        FallbackOutcome::Miss
                    };
                    metrics.inc_fallback(source, outcome);
                    // Hydrate before the batch leaves the in-flight map, so a
                    // lookup arriving in between finds the tracker warm.
                    let mut t = lock(&tracker);
                    for (k, v) in &map {
                        t.insert((run_id.clone(), k.clone()), v.clone());
                    }
                    drop(t);
                    Ok(Arc::new(map))
                }
                Err(e) => {
                    metrics.inc_fallback(source, FallbackOutcome::Error);
                    tracing::warn!(run_id, nodes = ?nodes, error = %e, "authority DB fallback failed; evicted, treating as a miss");
                    Err(Arc::from(e.to_string()))
                }
            }
        }
        .boxed()
        .shared()
    }
}
