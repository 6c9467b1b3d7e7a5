//! Pods' Prometheus text, reduced to what the Activity and Pods views show.

use std::collections::BTreeMap;

/// One pod's scrape: the counters the Activity view charts (summed over
/// labels it does not split by), its loops' last ticks, its active runs
/// and its own view of its lease (see [`super::gray`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodMetrics {
    /// Series name (see [`series_of`]) -> counter value.
    pub counters: BTreeMap<String, f64>,
    /// Loop name -> unix seconds of its last completed tick.
    pub loop_ticks: BTreeMap<String, f64>,
    pub runs_active: Option<f64>,
    /// `vigil_ready`: 1 ready, 0 not (None: a pod that does not export it).
    pub ready: Option<f64>,
    /// `vigil_lease_left_seconds` (`+Inf`: an engine with no lease).
    pub lease_left: Option<f64>,
    /// `vigil_store_round_trip_seconds`: the liveness renew's round trips.
    pub store_round_trip: Option<super::gray::Buckets>,
    /// `vigil_store_pool_connections` and `_max_connections`, by pool.
    pub pools: BTreeMap<String, PoolGauge>,
}

/// One store pool's connections at the scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolGauge {
    pub busy: f64,
    pub idle: f64,
    pub max: f64,
}

impl PoolGauge {
    /// Every connection out: callers wait for one.
    pub fn saturated(&self) -> bool {
        self.max > 0.0 && self.busy >= self.max
    }
}

/// The series the Activity view shows, in display order: a Prometheus family
/// and the label it is split by (if any), under a readable name.
pub const FAMILIES: &[(&str, Option<&str>, &str)] = &[
    (
        "vigil_tracker_db_fallback_total",
        Some("outcome"),
        "authority fallback",
    ),
    (
        "vigil_spurious_recovery_total",
        Some("source"),
        "spurious recovery",
    ),
    (
        "vigil_recovery_claims_total",
        Some("outcome"),
        "recovery claims",
    ),
    (
        "vigil_pod_deaths_detected_total",
        None,
        "pod deaths detected",
    ),
    (
        "vigil_reaper_timeouts_total",
        Some("lane"),
        "reaper timeouts",
    ),
    ("vigil_reaper_retries_total", Some("lane"), "reaper retries"),
    ("vigil_janitor_lost_total", None, "janitor lost marks"),
    (
        "vigil_ghost_transitions_rejected_total",
        None,
        "ghost transitions rejected",
    ),
    ("vigil_fenced_writes_total", None, "fenced writes"),
    // Gray failures: calls given up on at their client-side deadline (all
    // operations summed), then what pods held back because their own lease
    // ran short: step bodies (`self-fenced step`) and streams ended for a
    // retry elsewhere (`self-fenced stream`).
    (
        "vigil_store_deadline_exceeded_total",
        None,
        "store deadline hits",
    ),
    ("vigil_self_fenced_total", Some("kind"), "self-fenced"),
    (
        "vigil_detection_latency_seconds_sum",
        None,
        "detection latency sum",
    ),
    (
        "vigil_detection_latency_seconds_count",
        None,
        "detection latency count",
    ),
];

/// The display name of a sample, when the Activity view charts it.
pub fn series_of(metric: &str, labels: &prometheus_parse::Labels) -> Option<String> {
    let (_, label, name) = FAMILIES.iter().find(|(m, _, _)| *m == metric)?;
    Some(match label {
        Some(l) => format!("{name} {}", labels.get(l).unwrap_or("-")),
        None => (*name).to_owned(),
    })
}

/// Rank of a series for display: family order, then its label.
pub fn rank(series: &str) -> (usize, String) {
    let i = FAMILIES
        .iter()
        .position(|(_, _, name)| series == *name || series.starts_with(&format!("{name} ")))
        .unwrap_or(usize::MAX);
    (i, series.to_owned())
}

#[derive(Debug, thiserror::Error)]
#[error("unreadable /metrics text: {0}")]
pub struct ParseError(String);

pub fn parse(text: &str) -> Result<PodMetrics, ParseError> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| ParseError(e.to_string()))?;
    let mut out = PodMetrics::default();
    for s in &scrape.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        if s.metric == "vigil_loop_last_tick_timestamp_seconds" {
            if let Some(l) = s.labels.get("loop") {
                out.loop_ticks.insert(l.to_owned(), v);
            }
            continue;
        }
        match s.metric.as_str() {
            "vigil_runs_active" => out.runs_active = Some(v),
            "vigil_ready" => out.ready = Some(v),
            "vigil_lease_left_seconds" => out.lease_left = Some(v),
            "vigil_store_pool_connections" | "vigil_store_pool_max_connections" => {
                let Some(pool) = s.labels.get("pool") else {
                    continue;
                };
                let g = out.pools.entry(pool.to_owned()).or_default();
                match s.labels.get("state") {
                    _ if s.metric == "vigil_store_pool_max_connections" => g.max = v,
                    Some("busy") => g.busy = v,
                    Some("idle") => g.idle = v,
                    _ => {}
                }
            }
            _ => {
                if let Some(series) = series_of(&s.metric, &s.labels) {
                    *out.counters.entry(series).or_default() += v;
                }
            }
        }
    }
    // prometheus-client writes nothing for a labelled family before its
    // first series, and the engine starts no deadline series in advance
    // (it does start self_fenced's, in the same registry): a pod that
    // exports self_fenced has hit no deadline when it exports no deadline
    // series. A pod without either (an older build) shows no row.
    if out.counters.keys().any(|k| k.starts_with("self-fenced ")) {
        out.counters
            .entry("store deadline hits".into())
            .or_default();
    }
    out.store_round_trip = scrape.samples.iter().find_map(|s| match &s.value {
        prometheus_parse::Value::Histogram(h) if s.metric == "vigil_store_round_trip_seconds" => {
            Some(h.iter().map(|b| (b.less_than, b.count)).collect())
        }
        _ => None,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_engine_registry() {
        let m = crate::engine::metrics::Metrics::new();
        m.inc_claim("won");
        m.inc_claim("won");
        m.inc_lane(&m.reaper_timeouts, "sync");
        m.janitor_lost.inc();
        m.detection_latency.observe(2.0);
        m.tick("reaper");
        let p = super::parse(&m.encode()).expect("parse");
        assert_eq!(p.counters.get("recovery claims won"), Some(&2.0));
        assert_eq!(p.counters.get("reaper timeouts sync"), Some(&1.0));
        assert_eq!(p.counters.get("janitor lost marks"), Some(&1.0));
        assert_eq!(p.counters.get("detection latency count"), Some(&1.0));
        assert_eq!(p.counters.get("detection latency sum"), Some(&2.0));
        assert!(p.loop_ticks.contains_key("reaper"));
    }

    #[test]
    fn reads_a_pods_own_view_of_its_lease() {
        let m = crate::engine::metrics::Metrics::new();
        // Nothing happened yet: the declared counters read 0, not unknown.
        for text in [m.encode(), m.encode_prometheus_text()] {
            let p = super::parse(&text).expect("parse");
            assert_eq!(p.counters.get("store deadline hits"), Some(&0.0));
            assert_eq!(p.counters.get("self-fenced step"), Some(&0.0));
            assert_eq!(p.counters.get("self-fenced stream"), Some(&0.0));
        }
        m.gray.ready.set(1);
        m.gray.lease_left.set(0.75);
        m.set_pools(&[
            crate::engine::store::PoolUse {
                pool: "data",
                max: 32,
                busy: 32,
                idle: 0,
            },
            crate::engine::store::PoolUse {
                pool: "control",
                max: 3,
                busy: 1,
                idle: 2,
            },
        ]);
        let rtt = m.gray.store_round_trip.as_ref().expect("histogram");
        for secs in [0.0007, 0.0008, 0.0009, 0.006] {
            rtt.observe(secs);
        }
        m.inc_deadline("renew");
        m.inc_deadline("claim");
        m.inc_deadline("renew");
        m.inc_self_fenced();
        m.gray
            .self_fenced
            .get_or_create(&crate::engine::metrics::Kind {
                kind: "stream".into(),
            })
            .inc_by(2);
        // The console asks for the Prometheus text; OpenMetrics reads the same.
        for text in [m.encode_prometheus_text(), m.encode()] {
            let p = super::parse(&text).expect("parse");
            assert_eq!(p.ready, Some(1.0));
            assert_eq!(p.lease_left, Some(0.75));
            let data = p.pools["data"];
            assert_eq!((data.busy, data.idle, data.max), (32.0, 0.0, 32.0));
            assert!(data.saturated());
            let control = p.pools["control"];
            assert_eq!((control.busy, control.idle, control.max), (1.0, 2.0, 3.0));
            assert!(!control.saturated());
            assert_eq!(p.counters.get("store deadline hits"), Some(&3.0));
            assert_eq!(p.counters.get("self-fenced step"), Some(&1.0));
            assert_eq!(p.counters.get("self-fenced stream"), Some(&2.0));
            let b = p.store_round_trip.as_ref().expect("round trips");
            assert_eq!(b.len(), 17, "16 bounds from 0.5 ms and +Inf: {b:?}");
            assert_eq!(b[0], (0.0005, 0.0));
            assert_eq!(b[1], (0.001, 3.0));
            assert_eq!(b[16], (f64::INFINITY, 4.0));
            let r = super::super::gray::round_trips(b, None).expect("p50/p99");
            assert!(r.p50 > 0.0005 && r.p50 <= 0.001, "{r:?}");
            assert!(r.p99 > 0.004 && r.p99 <= 0.008, "{r:?}");
        }
        // An engine with no lease says +Inf.
        m.gray.lease_left.set(f64::INFINITY);
        m.gray.ready.set(0);
        let p = super::parse(&m.encode_prometheus_text()).expect("parse");
        assert_eq!(p.lease_left, Some(f64::INFINITY));
        assert_eq!(p.ready, Some(0.0));
    }
}
