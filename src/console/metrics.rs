//! Pods' Prometheus text, reduced to what the Activity and Pods views show.

use std::collections::BTreeMap;

/// One pod's scrape: the counters the Activity view charts (summed over
/// labels it does not split by), its loops' last ticks and its active runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodMetrics {
    /// Series name (see [`series_of`]) -> counter value.
    pub counters: BTreeMap<String, f64>,
    /// Loop name -> unix seconds of its last completed tick.
    pub loop_ticks: BTreeMap<String, f64>,
    pub runs_active: Option<f64>,
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
        if s.metric == "vigil_runs_active" {
            out.runs_active = Some(v);
            continue;
        }
        if let Some(series) = series_of(&s.metric, &s.labels) {
            *out.counters.entry(series).or_default() += v;
        }
    }
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
}
