//! Deliberate bugs, for proving that the chaos checkers have teeth.
//!
//! Built only with the `fault-injection` cargo feature, which must never be
//! on in a release build. At run time `VIGIL_FAULTS=a,b` (read once, at the
//! first check) turns bugs on; without the feature every check is a
//! constant `false` and the code paths compile away.

#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!("the fault-injection feature must never be built in release mode");

/// The field-notes bugs Vigil can re-introduce on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The reaper times out runs on every lane, heartbeating or not (seed 003).
    ReapAllLanes,
    /// A claim does not purge the older epochs' stream chunks (seed 001).
    SkipPurge,
    /// A claim does not compare-and-set on the previous owner (seed 001).
    ClaimWithoutCas,
    /// The authority reads the redacted `output` instead of `output_raw` (seed 000).
    ReadRedacted,
    /// Attempt counters live in memory only (seed 004).
    AttemptsInMemory,
    /// `lost -> succeeded` is allowed whatever the policy (seed 002).
    AllowLostSuccess,
    /// The reaper commits the timeout, then crashes before queueing the retry (seed 003).
    NonAtomicTimeoutRetry,
}

impl Bug {
    pub const ALL: [Bug; 7] = [
        Bug::ReapAllLanes,
        Bug::SkipPurge,
        Bug::ClaimWithoutCas,
        Bug::ReadRedacted,
        Bug::AttemptsInMemory,
        Bug::AllowLostSuccess,
        Bug::NonAtomicTimeoutRetry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::ReapAllLanes => "reap_all_lanes",
            Bug::SkipPurge => "skip_purge",
            Bug::ClaimWithoutCas => "claim_without_cas",
            Bug::ReadRedacted => "read_redacted",
            Bug::AttemptsInMemory => "attempts_in_memory",
            Bug::AllowLostSuccess => "allow_lost_success",
            Bug::NonAtomicTimeoutRetry => "non_atomic_timeout_retry",
        }
    }
}

/// Is `bug` switched on in this process?
#[cfg(feature = "fault-injection")]
pub fn on(bug: Bug) -> bool {
    static ENABLED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ENABLED
        .get_or_init(|| {
            std::env::var("VIGIL_FAULTS")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|b| b == bug.name())
}

/// Without the `fault-injection` feature no bug can be switched on.
#[cfg(not(feature = "fault-injection"))]
pub const fn on(_bug: Bug) -> bool {
    false
}
