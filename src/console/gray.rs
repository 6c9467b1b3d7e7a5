//! Gray failures as a pod reports them on its own /metrics: whether it
//! thinks it is ready, how much of its liveness lease its own clock says is
//! left, and how long its store takes to answer the liveness renew. Peers
//! judge a pod by the store; these say how the pod judges itself, so a slow
//! or cut-off pod shows here before anyone declares it dead.
//!
//! Pure functions only: the quantile of a scraped histogram, the change
//! between two scrapes of it, and the texts the Pods view shows.

/// A scraped histogram: `(upper bound, cumulative count)` per bucket, as
/// the `le` buckets of a Prometheus histogram (the last one `+Inf`).
pub type Buckets = Vec<(f64, f64)>;

/// The `q` quantile of `buckets`, as Prometheus' `histogram_quantile`
/// computes it (`promql/quantile.go`, `bucketQuantile`): find the bucket
/// the rank `q * count` falls in and interpolate linearly within it,
/// from 0 for the first bucket. A rank in the `+Inf` bucket answers the
/// highest finite bound. `None` where Prometheus answers NaN: no `+Inf`
/// bucket, fewer than two buckets, no observation, `q` not a number.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if q.is_nan() {
        return None;
    }
    if q < 0.0 {
        return Some(f64::NEG_INFINITY);
    }
    if q > 1.0 {
        return Some(f64::INFINITY);
    }
    let mut b: Buckets = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    if b.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
        return None;
    }
    // Buckets with the same bound add up (Prometheus' coalesceBuckets),
    // and counts never go down (ensureMonotonic): a scrape read between
    // two bucket increments may not be monotonic.
    b.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    let mut max = 0.0_f64;
    for bucket in &mut b {
        max = max.max(bucket.1);
        bucket.1 = max;
    }
    if b.len() < 2 {
        return None;
    }
    let observations = b[b.len() - 1].1;
    if observations <= 0.0 {
        return None;
    }
    let mut rank = q * observations;
    let i = b[..b.len() - 1]
        .iter()
        .position(|(_, count)| *count >= rank)
        .unwrap_or(b.len() - 1);
    if i == b.len() - 1 {
        return Some(b[b.len() - 2].0);
    }
    if i == 0 && b[0].0 <= 0.0 {
        return Some(b[0].0);
    }
    let (end, mut count) = b[i];
    let mut start = 0.0;
    if i > 0 {
        start = b[i - 1].0;
        count -= b[i - 1].1;
        rank -= b[i - 1].1;
    }
    Some(start + (end - start) * (rank / count))
}

/// What was observed between two scrapes of one histogram: `now - prev`,
/// bucket by bucket. `None` when they cannot be subtracted: other buckets,
/// or a count that went down (the pod restarted: its counts began again).
pub fn since(now: &[(f64, f64)], prev: &[(f64, f64)]) -> Option<Buckets> {
    if now.len() != prev.len() {
        return None;
    }
    now.iter()
        .zip(prev)
        .map(|(&(le, n), &(le_prev, p))| (le == le_prev && n >= p).then_some((le, n - p)))
        .collect()
}

/// The store round trips of one pod, as the Pods view shows them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundTrips {
    /// Seconds.
    pub p50: f64,
    pub p99: f64,
    /// How many round trips they were computed from ...
    pub observations: f64,
    /// ... and whether those are the ones since the console's previous
    /// scrape of the pod (else: every one since the pod started).
    pub recent: bool,
}

/// p50 and p99 of the round trips since the previous scrape (`prev`) when
/// there were any, else of all the pod ever observed; `None` when it has
/// observed none.
pub fn round_trips(now: &[(f64, f64)], prev: Option<&[(f64, f64)]>) -> Option<RoundTrips> {
    let total = |b: &[(f64, f64)]| b.iter().map(|(_, n)| *n).fold(0.0, f64::max);
    let of = |b: &[(f64, f64)], recent: bool| {
        Some(RoundTrips {
            p50: histogram_quantile(0.5, b)?,
            p99: histogram_quantile(0.99, b)?,
            observations: total(b),
            recent,
        })
    };
    prev.and_then(|p| since(now, p))
        .filter(|d| total(d) > 0.0)
        .and_then(|d| of(&d, true))
        .or_else(|| of(now, false))
}

/// A pod's lease margin: `0.8s` left, `lapsed` at 0 (peers may judge it
/// dead from then on), `no lease` for an engine that keeps none (`+Inf`).
pub fn lease_text(left_secs: f64) -> String {
    if left_secs.is_nan() {
        "-".into()
    } else if left_secs == f64::INFINITY {
        "no lease".into()
    } else if left_secs <= 0.0 {
        "lapsed".into()
    } else if left_secs < 0.05 {
        // Not lapsed yet: never round a sliver of lease down to "0.0s".
        "<0.1s".into()
    } else {
        super::views::age((left_secs * 1000.0).round() as i64)
    }
}

/// A short duration to about two significant digits: `0.52ms`, `3.1ms`,
/// `120ms`, `1.6s`.
pub fn short_secs(secs: f64) -> String {
    let ms = secs * 1000.0;
    if !ms.is_finite() {
        "-".into()
    } else if ms < 1.0 {
        format!("{ms:.2}ms")
    } else if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        super::views::age(ms.round() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn quantile_interpolates_within_the_bucket_as_prometheus_does() {
        // 10 in (0, 1], 10 in (1, 2], none above.
        let b = [(1.0, 10.0), (2.0, 20.0), (INF, 20.0)];
        assert!(close(histogram_quantile(0.5, &b), 1.0));
        assert!(close(histogram_quantile(0.25, &b), 0.5));
        assert!(close(histogram_quantile(0.75, &b), 1.5));
        assert!(close(histogram_quantile(0.99, &b), 1.98));
        assert!(close(histogram_quantile(0.0, &b), 0.0));
        assert!(close(histogram_quantile(1.0, &b), 2.0));
        // Unsorted input is sorted first.
        let shuffled = [(INF, 20.0), (2.0, 20.0), (1.0, 10.0)];
        assert!(close(histogram_quantile(0.75, &shuffled), 1.5));
    }

    #[test]
    fn quantile_edges_follow_prometheus() {
        // A rank in the +Inf bucket answers the highest finite bound.
        let b = [(1.0, 1.0), (2.0, 2.0), (INF, 10.0)];
        assert!(close(histogram_quantile(0.5, &b), 2.0));
        // NaN cases.
        assert_eq!(histogram_quantile(0.5, &[(1.0, 1.0), (2.0, 2.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(INF, 3.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0), (INF, 0.0)]), None);
        assert_eq!(histogram_quantile(f64::NAN, &b), None);
        assert_eq!(histogram_quantile(-0.1, &b), Some(f64::NEG_INFINITY));
        assert_eq!(histogram_quantile(1.1, &b), Some(INF));
        // A first bucket at or below 0 answers its bound.
        assert!(close(
            histogram_quantile(0.1, &[(0.0, 5.0), (1.0, 10.0), (INF, 10.0)]),
            0.0
        ));
        // Counts that dip are made monotonic.
        let dip = [(1.0, 10.0), (2.0, 9.0), (4.0, 20.0), (INF, 20.0)];
        assert!(close(histogram_quantile(0.5, &dip), 1.0));
        assert!(close(histogram_quantile(0.75, &dip), 3.0));
    }

    #[test]
    fn quantile_of_the_renew_buckets() {
        // The pod's buckets: exponential from 0.5 ms. 4 renews in
        // (0.5, 1] ms and 1 in (4, 8] ms.
        let mut b: Buckets = (0..16).map(|i| (0.0005 * 2f64.powi(i), 0.0)).collect();
        b.push((INF, 0.0));
        for (le, n) in &mut b {
            *n = if *le >= 0.004 * 1.5 {
                5.0
            } else if *le >= 0.001 {
                4.0
            } else {
                0.0
            };
        }
        // Rank 2.5 of 4 in (0.5, 1] ms.
        assert!(close(
            histogram_quantile(0.5, &b),
            0.0005 + 0.0005 * (2.5 / 4.0)
        ));
        // Rank 4.95: 0.95 of the one in (4, 8] ms.
        assert!(close(histogram_quantile(0.99, &b), 0.004 + 0.004 * 0.95));
    }

    #[test]
    fn deltas_since_the_previous_scrape_else_cumulative() {
        let prev = vec![(1.0, 10.0), (2.0, 10.0), (INF, 10.0)];
        // 4 new round trips, all in (1, 2].
        let now = vec![(1.0, 10.0), (2.0, 14.0), (INF, 14.0)];
        assert_eq!(
            since(&now, &prev),
            Some(vec![(1.0, 0.0), (2.0, 4.0), (INF, 4.0)])
        );
        let r = round_trips(&now, Some(&prev)).unwrap();
        assert!(r.recent);
        assert_eq!(r.observations, 4.0);
        assert!((r.p50 - 1.5).abs() < 1e-12, "{r:?}");
        // Nothing new since: every round trip the pod observed.
        let r = round_trips(&now, Some(&now)).unwrap();
        assert!(!r.recent);
        assert_eq!(r.observations, 14.0);
        assert!((r.p50 - 1.0 / 10.0 * 7.0).abs() < 1e-12, "{r:?}");
        // First scrape: cumulative.
        assert!(!round_trips(&now, None).unwrap().recent);
        // A restarted pod (counts went down): cumulative, not negative.
        let restarted = vec![(1.0, 1.0), (2.0, 1.0), (INF, 1.0)];
        assert_eq!(since(&restarted, &prev), None);
        let r = round_trips(&restarted, Some(&prev)).unwrap();
        assert!(!r.recent);
        assert_eq!(r.observations, 1.0);
        // Other buckets cannot be subtracted.
        assert_eq!(since(&now, &[(1.0, 0.0), (INF, 0.0)]), None);
        // No round trip at all.
        assert_eq!(round_trips(&[(1.0, 0.0), (INF, 0.0)], None), None);
    }

    #[test]
    fn lease_and_duration_texts() {
        assert_eq!(lease_text(0.8), "0.8s");
        assert_eq!(lease_text(0.84), "0.8s");
        assert_eq!(lease_text(12.3), "12s");
        assert_eq!(lease_text(0.0), "lapsed");
        assert_eq!(lease_text(-1.0), "lapsed");
        assert_eq!(lease_text(0.01), "<0.1s");
        assert_eq!(lease_text(INF), "no lease");
        assert_eq!(lease_text(f64::NAN), "-");
        assert_eq!(short_secs(0.000_52), "0.52ms");
        assert_eq!(short_secs(0.003_14), "3.1ms");
        assert_eq!(short_secs(0.120), "120ms");
        assert_eq!(short_secs(1.6), "1.6s");
        assert_eq!(short_secs(INF), "-");
    }
}
