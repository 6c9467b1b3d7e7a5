//! What operators read: times as RFC 3339 with their age, and who did a
//! thing when they did not say.

/// A store time (Unix ms) as RFC 3339 in UTC, to the millisecond:
/// `2026-12-04T14:56:08.123Z`. Out of range: the raw number, marked.
pub fn timestamp(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => format!("{t:.3}"),
        Err(_) => format!("{ms} (Unix ms, out of range)"),
    }
}

/// How long before `now_ms` the time `ms` was, in at most two units:
/// `4s ago`, `3m 20s ago`, `2h 5m ago`, `12d 3h ago` (`in 3s` if ahead,
/// as a skewed clock can make it).
pub fn age(now_ms: i64, ms: i64) -> String {
    use jiff::{SpanRound, Unit};
    let diff = now_ms.saturating_sub(ms);
    let span = jiff::Span::new()
        .try_milliseconds(diff.unsigned_abs().min(i64::MAX as u64) as i64)
        .and_then(|s| {
            let s = s.round(
                SpanRound::new()
                    .largest(Unit::Day)
                    .smallest(Unit::Second)
                    .days_are_24_hours(),
            )?;
            // At most two units: round to the unit after the largest.
            let smallest = [
                (s.get_days() != 0, Unit::Hour),
                (s.get_hours() != 0, Unit::Minute),
            ]
            .into_iter()
            .find_map(|(big, unit)| big.then_some(unit))
            .unwrap_or(Unit::Second);
            s.round(
                SpanRound::new()
                    .largest(Unit::Day)
                    .smallest(smallest)
                    .days_are_24_hours(),
            )
        });
    let text = match span {
        Ok(s) if s.is_zero() => "0s".to_owned(),
        Ok(s) => format!("{s:#}"),
        Err(_) => format!("{}ms", diff.unsigned_abs()),
    };
    if diff < 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A duration for a human: `30s`, `1.5s`, `250ms`, `2m 5s`.
pub fn duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 && !ms.is_multiple_of(1000) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        // Whole seconds and up: jiff's friendly form (`30s`, `2m 5s`).
        jiff::SignedDuration::try_from(d)
            .map_or_else(|_| format!("{}s", d.as_secs()), |sd| format!("{sd:#}"))
    }
}

/// A time for a human: `2026-12-04T14:56:08.123Z (3m 20s ago)`.
pub fn when(now_ms: i64, ms: i64) -> String {
    format!("{} ({})", timestamp(ms), age(now_ms, ms))
}

/// The current Unix time in ms.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Who an audited change is by when `--who` is not given: git's
/// `user.name`, else `USER@HOST`; never a placeholder.
pub fn default_who() -> String {
    let git = std::process::Command::new("git")
        .args(["config", "--get", "user.name"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|n| !n.is_empty());
    git.unwrap_or_else(|| {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{user}@{host}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_ages_two_units_at_most() {
        assert_eq!(timestamp(1_796_236_907_288), "2026-12-02T18:41:47.288Z");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        let now = 1_796_236_907_288;
        assert_eq!(age(now, now), "0s ago");
        assert_eq!(age(now, now - 4_400), "4s ago");
        assert_eq!(age(now, now - 200_000), "3m 20s ago");
        assert_eq!(age(now, now - (2 * 3_600 + 5 * 60 + 7) * 1000), "2h 5m ago");
        assert_eq!(
            age(now, now - (12 * 86_400 + 3 * 3_600 + 59) * 1000),
            "12d 3h ago"
        );
        assert_eq!(age(now, now + 3_000), "in 3s");
        use std::time::Duration;
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(
            when(now, now - 200_000),
            "2026-12-02T18:38:27.288Z (3m 20s ago)"
        );
    }

    #[test]
    fn the_default_who_is_a_name_never_a_placeholder() {
        let who = default_who();
        assert!(!who.is_empty() && who != "unknown", "{who}");
    }
}
