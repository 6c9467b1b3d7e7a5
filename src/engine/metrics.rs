//! The engine's metrics, in a `prometheus-client` registry.
//!
//! One [`Metrics`] per engine instance (not a global), so tests running in
//! parallel each see their own counters. The pod's `/metrics` endpoint
//! renders [`Metrics::encode`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    pub source: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FromTo {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

/// Where an authority lookup came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackSource {
    /// Inputs of a step: the outputs of its predecessors.
    Predecessors,
    /// Proof that a step reported as failed had in fact succeeded.
    SpuriousCheck,
}

impl FallbackSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackSource::Predecessors => "predecessors",
            FallbackSource::SpuriousCheck => "spurious_check",
        }
    }
}

/// What a DB fallback lookup ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackOutcome {
    /// Every missing key was found in the store.
    Hit,
    /// At least one key is not in the store (or has no raw output).
    Miss,
    /// The store failed; the lookup was evicted and treated as a miss.
    Error,
    /// The `authority.db_fallback` switch is off; no query was made.
    Disabled,
}

impl FallbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackOutcome::Hit => "hit",
            FallbackOutcome::Miss => "miss",
            FallbackOutcome::Error => "error",
            FallbackOutcome::Disabled => "disabled",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tracker_db_fallback: Family<SourceOutcome, Counter>,
    pub tracker_db_fallback_duration: Histogram,
    pub spurious_recovery: Family<Source, Counter>,
    pub run_transitions: Family<FromTo, Counter>,
    pub transition_rejected: Family<FromTo, Counter>,
    pub step_attempts: Family<Outcome, Counter>,
    pub fenced_writes: Family<Kind, Counter>,
    pub switch_flips: Family<Kind, Counter>,
    pub too_late_events: Family<Kind, Counter>,
    pub dispatch_claims: Family<Outcome, Counter>,
    pub runs_active: Gauge,
    pub attachers_active: Gauge,
    pub pod_deaths: Counter,
    pub detection_latency: Histogram,
    pub recovery_claims: Family<Outcome, Counter>,
    pub reaper_timeouts: Family<Lane, Counter>,
    pub reaper_retries: Family<Lane, Counter>,
    pub janitor_lost: Counter,
    pub ghost_rejected: Counter,
    /// Transactions that committed checkpoints (group commit) ...
    pub group_commits: Counter,
    /// ... and the checkpoints they carried.
    pub group_commit_checkpoints: Counter,
    pub loop_last_tick: Family<Loop, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Gray failures: what the pod did about a store it could not reach in
    /// time (see `engine::lease` and `store::deadline`).
    pub gray: GrayMetrics,
}

/// The series an operator reads to see a slow or cut-off pod before it is
/// declared dead.
#[derive(Debug, Default)]
pub struct GrayMetrics {
    /// Store calls given up on at their client-side deadline, by operation.
    pub deadline_hits: Family<Kind, Counter>,
    /// Step bodies held back and streams ended because this pod's lease
    /// was too close to its end (kind: `step`, `stream`).
    pub self_fenced: Family<Kind, Counter>,
    /// Round trips of the liveness renew (one statement on its own
    /// connection: the store's round trip as this pod sees it).
    pub store_round_trip: Option<Histogram>,
    /// Seconds of our own lease left at the last look.
    pub lease_left: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while this pod is ready (a lease that holds, not stopping).
    pub ready: Gauge,
    /// Connections of each store pool by state (`busy`, `idle`), set at
    /// each scrape.
    pub pool_connections: Family<PoolState, Gauge>,
    /// Each store pool's most connections.
    pub pool_max: Family<PoolName, Gauge>,
    /// A run's writes (checkpoints, chunks, attempts) the store could not
    /// take and the run tried again in place, by operation.
    pub write_waits: Family<Kind, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolState {
    pub pool: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolName {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Lane {
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Loop {
    pub r#loop: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tracker_db_fallback = Family::<SourceOutcome, Counter>::default();
        registry.register(
            "vigil_tracker_db_fallback",
            "Step-authority lookups that missed the in-process tracker and went to the store",
            tracker_db_fallback.clone(),
        );
        let tracker_db_fallback_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "vigil_tracker_db_fallback_duration_seconds",
            "Time spent in one batched output_raw lookup",
            tracker_db_fallback_duration.clone(),
        );
        let spurious_recovery = Family::<Source, Counter>::default();
        registry.register(
            "vigil_spurious_recovery",
            "Steps reported as failed that the store proves succeeded, demoted back to success",
            spurious_recovery.clone(),
        );
        let run_transitions = Family::<FromTo, Counter>::default();
        registry.register(
            "vigil_run_transitions",
            "Run state transitions committed",
            run_transitions.clone(),
        );
        let transition_rejected = Family::<FromTo, Counter>::default();
        registry.register(
            "vigil_transition_rejected",
            "Run state transitions rejected by the transition table, terminal state or fence",
            transition_rejected.clone(),
        );
        let step_attempts = Family::<Outcome, Counter>::default();
        registry.register(
            "vigil_step_attempts",
            "Step attempts by outcome",
            step_attempts.clone(),
        );
        let fenced_writes = Family::<Kind, Counter>::default();
        registry.register(
            "vigil_fenced_writes",
            "Owner writes rejected because the run's epoch moved on",
            fenced_writes.clone(),
        );
        let switch_flips = Family::<Kind, Counter>::default();
        registry.register(
            "vigil_switch_changes",
            "Kill-switch changes seen by this process",
            switch_flips.clone(),
        );
        let too_late_events = Family::<Kind, Counter>::default();
        registry.register(
            "vigil_too_late_events",
            "Events for runs already terminal, answered 409 already_terminal (never retried)",
            too_late_events.clone(),
        );
        let dispatch_claims = Family::<Outcome, Counter>::default();
        registry.register(
            "vigil_dispatch_claims",
            "Claims this pod attempted, by outcome: submitted (a run submitted here, created \
             already claimed), pending, resumed, lost_race, row_busy (another session held the \
             run's row; tried again later), error",
            dispatch_claims.clone(),
        );
        let runs_active = Gauge::default();
        registry.register(
            "vigil_runs_active",
            "Runs this process is driving now",
            runs_active.clone(),
        );
        let attachers_active = Gauge::default();
        registry.register(
            "vigil_attachers_active",
            "Clients attached to run streams on this process",
            attachers_active.clone(),
        );
        let pod_deaths = Counter::default();
        registry.register(
            "vigil_pod_deaths_detected",
            "Peer pods this process found dead (and unregistered)",
            pod_deaths.clone(),
        );
        let detection_latency = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "vigil_detection_latency_seconds",
            "From a dead pod's last sign of life to its detection",
            detection_latency.clone(),
        );
        let recovery_claims = Family::<Outcome, Counter>::default();
        registry.register(
            "vigil_recovery_claims",
            "Claims of orphaned runs: won, or lost to another survivor",
            recovery_claims.clone(),
        );
        let reaper_timeouts = Family::<Lane, Counter>::default();
        registry.register(
            "vigil_reaper_timeouts",
            "Runs timed out by the stale-run reaper",
            reaper_timeouts.clone(),
        );
        let reaper_retries = Family::<Lane, Counter>::default();
        registry.register(
            "vigil_reaper_retries",
            "Retries queued by the reaper, in the statement that timed the run out",
            reaper_retries.clone(),
        );
        let janitor_lost = Counter::default();
        registry.register(
            "vigil_janitor_lost",
            "Runs the janitor marked lost",
            janitor_lost.clone(),
        );
        let ghost_rejected = Counter::default();
        registry.register(
            "vigil_ghost_transitions_rejected",
            "Transitions out of a terminal state rejected (lost -> succeeded and the like)",
            ghost_rejected.clone(),
        );
        let group_commits = Counter::default();
        registry.register(
            "vigil_group_commits",
            "Transactions that committed step checkpoints (several runs' checkpoints share one)",
            group_commits.clone(),
        );
        let group_commit_checkpoints = Counter::default();
        registry.register(
            "vigil_group_commit_checkpoints",
            "Step checkpoints committed by those transactions",
            group_commit_checkpoints.clone(),
        );
        let loop_last_tick = Family::<Loop, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "vigil_loop_last_tick_timestamp_seconds",
            "Unix time of each background loop's last completed tick",
            loop_last_tick.clone(),
        );
        let gray = GrayMetrics {
            store_round_trip: Some(Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            ..Default::default()
        };
        registry.register(
            "vigil_store_deadline_exceeded",
            "Store calls given up on at their client-side deadline (a hung or half-open link)",
            gray.deadline_hits.clone(),
        );
        registry.register(
            "vigil_self_fenced",
            "Step bodies held back (kind=step) and streams ended for a retry elsewhere \
             (kind=stream) because this pod's lease was too close to its end",
            gray.self_fenced.clone(),
        );
        if let Some(h) = &gray.store_round_trip {
            registry.register(
                "vigil_store_round_trip_seconds",
                "Round trips of the liveness renew, one statement on its own connection",
                h.clone(),
            );
        }
        registry.register(
            "vigil_lease_left_seconds",
            "How much of this pod's liveness lease is left, by its own monotonic clock",
            gray.lease_left.clone(),
        );
        registry.register(
            "vigil_ready",
            "1 while this pod is ready: its lease holds and it is not stopping",
            gray.ready.clone(),
        );
        registry.register(
            "vigil_store_pool_connections",
            "Connections of each store pool (data: checkpoints, chunks, reads; control: \
             recovery and claims) by state: busy (in use) or idle; busy at the pool's max \
             means callers wait",
            gray.pool_connections.clone(),
        );
        registry.register(
            "vigil_store_write_waits",
            "A run's writes (kind: checkpoint, chunk, attempt, failure) the store could not take \
             (a full disk, an outage, no answer in time) and the run tried again in place, \
             waiting rather than spending a step attempt",
            gray.write_waits.clone(),
        );
        registry.register(
            "vigil_store_pool_max_connections",
            "The most connections each store pool opens",
            gray.pool_max.clone(),
        );
        registry.register(
            "vigil_build",
            "The version of vigil this process runs",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let metrics = Metrics {
            registry,
            pod_deaths,
            detection_latency,
            recovery_claims,
            reaper_timeouts,
            reaper_retries,
            janitor_lost,
            ghost_rejected,
            group_commits,
            group_commit_checkpoints,
            loop_last_tick,
            too_late_events,
            dispatch_claims,
            runs_active,
            attachers_active,
            tracker_db_fallback,
            tracker_db_fallback_duration,
            spurious_recovery,
            run_transitions,
            transition_rejected,
            step_attempts,
            fenced_writes,
            switch_flips,
            gray,
        };
        // Series whose labels are known in advance start at 0, so that a
        // rate() or an alert on them works before their first event.
        for op in ["renew", "rejoin", "probe", "pod registry read"] {
            let _ = metrics
                .gray
                .deadline_hits
                .get_or_create(&Kind { kind: op.into() });
        }
        for kind in ["step", "stream"] {
            let _ = metrics
                .gray
                .self_fenced
                .get_or_create(&Kind { kind: kind.into() });
        }
        for outcome in ["won", "lost"] {
            let _ = metrics.recovery_claims.get_or_create(&Outcome {
                outcome: outcome.into(),
            });
        }
        for outcome in [
            "submitted",
            "pending",
            "resumed",
            "lost_race",
            "row_busy",
            "error",
        ] {
            let _ = metrics.dispatch_claims.get_or_create(&Outcome {
                outcome: outcome.into(),
            });
        }
        metrics
    }

    /// Start the per-lane series at 0 for every lane this process knows.
    pub fn start_lanes<'a>(&self, lanes: impl IntoIterator<Item = &'a str>) {
        for lane in lanes {
            for family in [&self.reaper_timeouts, &self.reaper_retries] {
                let _ = family.get_or_create(&Lane { lane: lane.into() });
            }
        }
    }

    /// The registry in the OpenMetrics 1.0 text format (what `/metrics`
    /// serves as `application/openmetrics-text`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in the Prometheus text format 0.0.4, for scrapers that
    /// ask only for `text/plain` (see [`to_prometheus_text`]).
    pub fn encode_prometheus_text(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

/// OpenMetrics text rewritten in the Prometheus text format 0.0.4: the
/// samples are the same; what differs is the metadata. A counter family is
/// named by its `_total` sample and an info family by its `_info` sample
/// (typed `gauge`), `unknown` is `untyped`, and there is no `# UNIT` and no
/// `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((family, kind)) = rest.split_once(' ')
        {
            types.insert(family.to_owned(), kind.to_owned());
        }
    }
    let renamed = |family: &str| match types.get(family).map(String::as_str) {
        Some("counter") => format!("{family}_total"),
        Some("info") => format!("{family}_info"),
        _ => family.to_owned(),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(family)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind {
                "info" | "stateset" => "gauge",
                "gaugehistogram" => "histogram",
                "unknown" => "untyped",
                k => k,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(family)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Metrics {
    /// Record the store pools' use (called at each scrape).
    pub fn set_pools(&self, pools: &[crate::engine::store::PoolUse]) {
        for p in pools {
            for (state, n) in [("busy", p.busy), ("idle", p.idle)] {
                self.gray
                    .pool_connections
                    .get_or_create(&PoolState {
                        pool: p.pool.into(),
                        state: state.into(),
                    })
                    .set(i64::from(n));
            }
            self.gray
                .pool_max
                .get_or_create(&PoolName {
                    pool: p.pool.into(),
                })
                .set(i64::from(p.max));
        }
    }

    pub fn fallback(&self, source: FallbackSource, outcome: FallbackOutcome) -> u64 {
        self.tracker_db_fallback
            .get_or_create(&SourceOutcome {
                source: source.as_str().into(),
                outcome: outcome.as_str().into(),
            })
            .get()
    }

    pub fn inc_fallback(&self, source: FallbackSource, outcome: FallbackOutcome) {
        self.tracker_db_fallback
            .get_or_create(&SourceOutcome {
                source: source.as_str().into(),
                outcome: outcome.as_str().into(),
            })
            .inc();
    }

    /// Total DB fallback lookups over every source and outcome except `disabled`
    /// (which made no query).
    pub fn fallback_queries(&self) -> u64 {
        [FallbackSource::Predecessors, FallbackSource::SpuriousCheck]
            .into_iter()
            .flat_map(|s| {
                [
                    FallbackOutcome::Hit,
                    FallbackOutcome::Miss,
                    FallbackOutcome::Error,
                ]
                .into_iter()
                .map(move |o| (s, o))
            })
            .map(|(s, o)| self.fallback(s, o))
            .sum()
    }

    pub fn spurious(&self, source: &str) -> u64 {
        self.spurious_recovery
            .get_or_create(&Source {
                source: source.into(),
            })
            .get()
    }

    pub fn inc_spurious(&self, source: &str) {
        self.spurious_recovery
            .get_or_create(&Source {
                source: source.into(),
            })
            .inc();
    }

    pub fn transitions(&self, from: &str, to: &str) -> u64 {
        self.run_transitions
            .get_or_create(&FromTo {
                from: from.into(),
                to: to.into(),
            })
            .get()
    }

    pub fn rejected(&self, from: &str, to: &str) -> u64 {
        self.transition_rejected
            .get_or_create(&FromTo {
                from: from.into(),
                to: to.into(),
            })
            .get()
    }

    /// One transaction committed `checkpoints` step checkpoints.
    pub fn group_commit(&self, checkpoints: usize) {
        self.group_commits.inc();
        self.group_commit_checkpoints
            .inc_by(u64::try_from(checkpoints).unwrap_or(u64::MAX));
    }

    pub fn inc_transition(&self, from: &str, to: &str) {
        self.run_transitions
            .get_or_create(&FromTo {
                from: from.into(),
                to: to.into(),
            })
            .inc();
    }

    pub fn inc_rejected(&self, from: &str, to: &str) {
        self.transition_rejected
            .get_or_create(&FromTo {
                from: from.into(),
                to: to.into(),
            })
            .inc();
    }

    pub fn attempts(&self, outcome: &str) -> u64 {
        self.step_attempts
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .get()
    }

    pub fn inc_attempt(&self, outcome: &str) {
        self.step_attempts
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn inc_too_late(&self, kind: &str) {
        self.too_late_events
            .get_or_create(&Kind { kind: kind.into() })
            .inc();
    }

    pub fn too_late(&self, kind: &str) -> u64 {
        self.too_late_events
            .get_or_create(&Kind { kind: kind.into() })
            .get()
    }

    pub fn inc_dispatch(&self, outcome: &str) {
        self.dispatch_claims
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn inc_lane(&self, family: &Family<Lane, Counter>, lane: &str) {
        let _ = family.get_or_create(&Lane { lane: lane.into() }).inc();
    }

    pub fn lane_count(&self, family: &Family<Lane, Counter>, lane: &str) -> u64 {
        family.get_or_create(&Lane { lane: lane.into() }).get()
    }

    pub fn inc_claim(&self, outcome: &str) {
        self.recovery_claims
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Record that a background loop finished a tick now.
    pub fn tick(&self, name: &str) {
        let now = crate::engine::clock::wall_ms() as f64 / 1000.0;
        self.loop_last_tick
            .get_or_create(&Loop {
                r#loop: name.into(),
            })
            .set(now);
    }

    pub fn fenced(&self, kind: &str) -> u64 {
        self.fenced_writes
            .get_or_create(&Kind { kind: kind.into() })
            .get()
    }

    /// A step body held back by this pod's lease.
    pub fn inc_self_fenced(&self) {
        self.gray
            .self_fenced
            .get_or_create(&Kind {
                kind: "step".into(),
            })
            .inc();
    }

    /// A run's write tried again in place after a store error.
    pub fn inc_write_wait(&self, op: &str) {
        self.gray
            .write_waits
            .get_or_create(&Kind { kind: op.into() })
            .inc();
    }

    /// A store call given up on at its deadline.
    pub fn inc_deadline(&self, op: &str) {
        self.gray
            .deadline_hits
            .get_or_create(&Kind { kind: op.into() })
            .inc();
    }

    pub fn inc_fenced(&self, kind: &str) {
        self.fenced_writes
            .get_or_create(&Kind { kind: kind.into() })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_names() {
        let m = Metrics::new();
        m.inc_fallback(FallbackSource::Predecessors, FallbackOutcome::Hit);
        m.inc_spurious("in_catch");
        m.inc_transition("pending", "running");
        m.inc_rejected("succeeded", "failed");
        m.inc_attempt("succeeded");
        m.tracker_db_fallback_duration.observe(0.002);
        let text = m.encode();
        for needle in [
            "vigil_tracker_db_fallback_total{source=\"predecessors\",outcome=\"hit\"} 1",
            "vigil_tracker_db_fallback_duration_seconds_count 1",
            "vigil_spurious_recovery_total{source=\"in_catch\"} 1",
            "vigil_run_transitions_total{from=\"pending\",to=\"running\"} 1",
            "vigil_transition_rejected_total{from=\"succeeded\",to=\"failed\"} 1",
            "vigil_step_attempts_total{outcome=\"succeeded\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn prometheus_text_names_families_by_their_samples_and_drops_openmetrics_only_lines() {
        let m = Metrics::new();
        m.inc_attempt("succeeded");
        m.start_lanes(["sync"]);
        let om = m.encode();
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = to_prometheus_text(&om);
        for needle in [
            "# TYPE vigil_step_attempts_total counter\n",
            "# HELP vigil_step_attempts_total ",
            "vigil_step_attempts_total{outcome=\"succeeded\"} 1\n",
            "# TYPE vigil_build_info gauge\n",
            "vigil_reaper_timeouts_total{lane=\"sync\"} 0\n",
            "vigil_recovery_claims_total{outcome=\"lost\"} 0\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        for gone in ["# EOF", "# UNIT ", " unknown\n", " info\n"] {
            assert!(!text.contains(gone), "{gone:?} left in\n{text}");
        }
        // Every sample line of the OpenMetrics body is there, unchanged.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&om), samples(&text));
    }
}
