//! Applying what comes back to the app: store rounds, pod scrapes, the
//! cluster's state and finished effects; and the watch, which tells the
//! store collector what to read.

use super::{ACTIVITY_WINDOW_MS, Activity, App, Effect, StreamLine};
use crate::console::data::{
    ChaosPod, DetailData, MetricsUpdate, StoreData, StoreUpdate, View, Watch,
};
use crate::console::gray;
use crate::engine::run::Chunk;
use crate::engine::store::ConsoleEvent;
use std::collections::BTreeMap;

/// Heartbeat ages kept per pod for the Pods view's history.
const HEARTBEAT_HISTORY: usize = 40;

impl Activity {
    pub fn apply(&mut self, u: &MetricsUpdate) {
        // Pods no longer scraped (gone from the registry) leave the sources
        // list; what they counted stays in the totals.
        self.scrapes
            .retain(|pod, _| u.pods.iter().any(|p| &p.pod == pod));
        let mut totals: BTreeMap<String, f64> = self
            .samples
            .iter()
            .filter_map(|(k, v)| v.back().map(|(_, t)| (k.clone(), *t)))
            .collect();
        for p in &u.pods {
            let entry = self.scrapes.entry(p.pod.clone()).or_default();
            entry.url = p.url.clone();
            match &p.result {
                Ok(m) => {
                    entry.ok_at_ms = Some(u.at_ms);
                    entry.error = None;
                    // Round trips since the last scrape that answered.
                    let prev = entry
                        .metrics
                        .as_ref()
                        .and_then(|p| p.store_round_trip.as_deref());
                    entry.round_trips = m
                        .store_round_trip
                        .as_deref()
                        .and_then(|now| gray::round_trips(now, prev));
                    entry.metrics = Some(m.clone());
                    for (series, v) in &m.counters {
                        let key = (p.pod.clone(), series.clone());
                        let delta = match self.prev.insert(key, *v) {
                            Some(prev) if *v >= prev => v - prev,
                            // First sight of the pod (its lifetime count), or a reset.
                            _ => *v,
                        };
                        *totals.entry(series.clone()).or_default() += delta;
                    }
                }
                Err(e) => entry.error = Some(e.clone()),
            }
        }
        for (series, total) in totals {
            let q = self.samples.entry(series).or_default();
            q.push_back((u.at_ms, total));
            while q
                .front()
                .is_some_and(|(at, _)| *at < u.at_ms - ACTIVITY_WINDOW_MS)
            {
                q.pop_front();
            }
        }
    }
}

impl App {
    // ----------------------------------------------------------------- watch

    pub(super) fn bump_gen(&mut self) {
        self.generation += 1;
        self.effects.push(Effect::Watch(self.watch()));
    }

    /// What the store collector should read now.
    pub fn watch(&self) -> Watch {
        Watch {
            generation: self.generation,
            view: self.view,
            run: self.detail.as_ref().map(|d| (d.run_id.clone(), d.session)),
            switch: (self.view == View::Switches)
                .then(|| self.selected_switch())
                .flatten(),
        }
    }

    pub(super) fn watch_changed(&mut self) {
        self.bump_gen();
        self.effects.push(Effect::RefreshNow);
    }

    // ------------------------------------------------------------------ data

    pub fn apply_store(&mut self, u: StoreUpdate) {
        self.dirty = true;
        self.health.query_log.push_back((u.at_ms, u.queries));
        while self
            .health
            .query_log
            .front()
            .is_some_and(|(at, _)| *at < u.at_ms - 10_000)
        {
            self.health.query_log.pop_front();
        }
        self.health.last_took_ms = u.took_ms;
        let data = match u.result {
            Err(e) => {
                self.health.error = Some(e);
                return;
            }
            Ok(d) => d,
        };
        self.health.error = None;
        self.health.ok_at_ms = Some(u.at_ms);
        self.health.backend = data.backend;
        let StoreData {
            pods,
            counts,
            events,
            runs,
            switches,
            audit,
            locks,
            detail,
            ..
        } = data;
        // Append-only data is never stale: keep it whatever the generation.
        self.push_events(events);
        if let Some(d) = &detail {
            self.push_chunks(d);
        }
        if self.frozen || u.generation != self.generation {
            return;
        }
        for p in &pods {
            let q = self.heartbeats.entry(p.pod_id.clone()).or_default();
            q.push_back((u.at_ms - p.heartbeat_at_ms).max(0));
            while q.len() > HEARTBEAT_HISTORY {
                q.pop_front();
            }
        }
        self.heartbeats
            .retain(|id, _| pods.iter().any(|p| &p.pod_id == id));
        self.pods = pods;
        self.counts = counts;
        if let Some(r) = runs {
            self.id_len = crate::console::views::id_abbrev(r.iter().map(|r| r.id.as_str()));
            self.runs = r;
        }
        if let Some(s) = switches {
            self.switches = s;
        }
        if audit.is_some() {
            self.audit = audit;
        }
        if locks.is_some() {
            self.locks = locks;
        }
        if let (Some(d), Some(open)) = (detail, self.detail.as_mut())
            && d.run_id == open.run_id
            && d.session == open.session
        {
            open.run = d.run;
            open.steps = d.steps;
            open.transitions = d.transitions;
            open.claims = d.claims;
            open.loaded = true;
        }
        self.resolve_selection();
    }

    fn push_events(&mut self, mut events: Vec<ConsoleEvent>) {
        if events.is_empty() {
            return;
        }
        events.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(b.id.cmp(&a.id)));
        for e in events.into_iter().rev() {
            if self
                .events
                .iter()
                .take(64)
                .any(|x| x.kind == e.kind && x.id == e.id)
            {
                continue;
            }
            self.events.push_front(e);
        }
        // Keep newest first even when rounds interleave.
        self.events
            .make_contiguous()
            .sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(b.id.cmp(&a.id)));
        self.events.truncate(self.events_limit);
    }

    fn push_chunks(&mut self, d: &DetailData) {
        let Some(open) = self.detail.as_mut() else {
            return;
        };
        if d.run_id != open.run_id || d.session != open.session {
            return;
        }
        if let Some((epoch, keep)) = &d.reset {
            apply_reset(&mut open.stream, *epoch, keep);
        }
        for c in &d.chunks {
            push_chunk(&mut open.stream, c);
        }
    }

    pub fn apply_metrics(&mut self, u: MetricsUpdate) {
        if self.frozen {
            return;
        }
        self.dirty = true;
        self.activity.apply(&u);
    }

    pub fn apply_chaos(&mut self, pods: Vec<ChaosPod>) {
        self.dirty = true;
        self.has_chaos = true;
        self.chaos = pods;
        self.resolve_selection();
    }

    /// An effect finished: say how, and read the store again.
    pub fn effect_done(&mut self, ok: bool, message: String) {
        self.dirty = true;
        if ok {
            self.info(message);
        } else {
            self.error(message);
        }
        self.watch_changed();
    }

    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }
}

/// The run went on at `epoch`: drop the older epochs' chunks that are not
/// in `keep` (what unfinished attempts streamed) and leave a marker.
fn apply_reset(
    stream: &mut Vec<StreamLine>,
    epoch: i64,
    keep: &[crate::engine::store::StreamPartRow],
) {
    let before = stream.len();
    stream.retain(|l| match l {
        StreamLine::Chunk {
            epoch: e,
            step,
            attempt,
            ..
        } => {
            *e >= epoch
                || keep.iter().any(|p| {
                    p.epoch == *e
                        && step.as_deref() == Some(p.node_id.as_str())
                        && *attempt == Some(p.attempt)
                })
        }
        StreamLine::Reset { .. } => true,
    });
    stream.push(StreamLine::Reset {
        epoch,
        discarded: before - stream.len(),
    });
}

fn push_chunk(stream: &mut Vec<StreamLine>, c: &Chunk) {
    if stream.iter().any(
        |l| matches!(l, StreamLine::Chunk { epoch, seq, .. } if *epoch == c.epoch && *seq == c.seq),
    ) {
        return;
    }
    stream.push(StreamLine::Chunk {
        epoch: c.epoch,
        seq: c.seq,
        step: c.node_id.clone(),
        attempt: c.attempt,
        data: c.data.clone(),
    });
    // Keep the tail.
    if stream.len() > 2000 {
        stream.drain(..stream.len() - 2000);
    }
}
