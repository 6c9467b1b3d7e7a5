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
    /// A claim purges every chunk of older epochs, finished steps' included
    /// (the pre-issue-13 purge: a late attacher loses finished steps' output).
    PurgeFinished,
    /// Owner writes (chunks, step attempts and checkpoints, run heartbeats)
    /// are not fenced by the claim epoch: a zombie owner keeps writing.
    SkipFence,
    /// Liveness probes never find a peer dead (advisory lock and lease alike).
    BlindSurvivor,
    /// ~500 ms after an owner moves a run to `succeeded`, it writes a second
    /// terminal transition `succeeded -> failed`, past the terminal guard.
    DoubleTerminal,
    /// The pre-issue-14 PostgreSQL sessions: a claim waits as long as it
    /// takes for a run's row another session holds, and the liveness renew
    /// waits for the recovery pass (it shared its loop), so one locked row
    /// silences every survivor's liveness session.
    StallingClaims,
    /// A PostgreSQL store compares leases, heartbeats and deadlines on this
    /// host's wall clock instead of the server's: a skewed pod reaps healthy
    /// runs.
    HostClockLeases,
    /// A SQLite prober reads a peer's lapsed lease as its death whatever
    /// its own renewals say: after a pod paused holding the write lock,
    /// every lease has lapsed and live pods are declared dead.
    UnsteadyLeases,
    /// A PostgreSQL prober reads a released liveness lock as death whatever
    /// the peer's lease and its own renewals say (the rule before gray
    /// failures): when a frozen database thaws and ends every idle
    /// liveness session at once, live pods are declared dead.
    LockReleaseIsDeath,
    /// A pod whose lease may have run out by its own clock still starts
    /// step bodies, stays ready and keeps its streams open.
    NoSelfFence,
    /// Probes, the registry, orphan lists and claims share the data pool:
    /// under a slow store they queue behind checkpoints.
    SharedLivenessPool,
    /// A pod's store calls (checkpoints, chunks, claims, reads) have no
    /// client-side deadline: a call on a connection the server forgot
    /// waits for an answer that never comes.
    NoStoreDeadline,
    /// A run's stream tail reads ahead of its client into an unbounded
    /// queue, from what the client has received rather than what it
    /// queued: a slow consumer grows the pod's memory without bound.
    UnboundedStream,
    /// A run's write the store could not take ends the attempt at once
    /// (the pre-issue-29 driver): the run is claimed back and the
    /// interrupted step's body runs again, so an outage spends an attempt
    /// per try and a few seconds of a full disk fail the run.
    NoStoreWait,
    /// SQLite commits with `synchronous=OFF`: a commit is acknowledged
    /// before it is on disk, and a power cut loses it.
    SqliteSyncOff,
    /// The chaos runner starts its throwaway PostgreSQL server with
    /// `fsync=off` even under a fault that loses unsynced writes.
    PgFsyncOff,
    /// A PostgreSQL prober reads a peer's released lock with a fresh lease
    /// as its death even while its own renewals are failing: when the
    /// server restarts (a power cut, a crash restart) every session, and
    /// every lock, goes at once, and the first prober back declares live
    /// peers dead before they have taken their locks again.
    RestartIsDeath,
}

impl Bug {
    pub const ALL: [Bug; 23] = [
        Bug::ReapAllLanes,
        Bug::SkipPurge,
        Bug::ClaimWithoutCas,
        Bug::ReadRedacted,
        Bug::AttemptsInMemory,
        Bug::AllowLostSuccess,
        Bug::NonAtomicTimeoutRetry,
        Bug::PurgeFinished,
        Bug::SkipFence,
        Bug::BlindSurvivor,
        Bug::DoubleTerminal,
        Bug::StallingClaims,
        Bug::HostClockLeases,
        Bug::UnsteadyLeases,
        Bug::LockReleaseIsDeath,
        Bug::NoSelfFence,
        Bug::SharedLivenessPool,
        Bug::NoStoreDeadline,
        Bug::UnboundedStream,
        Bug::NoStoreWait,
        Bug::SqliteSyncOff,
        Bug::PgFsyncOff,
        Bug::RestartIsDeath,
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
            Bug::PurgeFinished => "purge_finished",
            Bug::SkipFence => "skip_fence",
            Bug::BlindSurvivor => "blind_survivor",
            Bug::DoubleTerminal => "double_terminal",
            Bug::StallingClaims => "stalling_claims",
            Bug::HostClockLeases => "host_clock_leases",
            Bug::UnsteadyLeases => "unsteady_leases",
            Bug::LockReleaseIsDeath => "lock_release_is_death",
            Bug::NoSelfFence => "no_self_fence",
            Bug::SharedLivenessPool => "shared_liveness_pool",
            Bug::NoStoreDeadline => "no_store_deadline",
            Bug::UnboundedStream => "unbounded_stream",
            Bug::NoStoreWait => "no_store_wait",
            Bug::SqliteSyncOff => "sqlite_sync_off",
            Bug::PgFsyncOff => "pg_fsync_off",
            Bug::RestartIsDeath => "restart_is_death",
        }
    }
}

/// The reason (and error) of the second terminal write `double_terminal` makes.
pub const DOUBLE_TERMINAL_REASON: &str = "fault: double_terminal";

#[cfg(feature = "fault-injection")]
tokio::task_local! {
    /// Bugs switched on for one task only (tests: see [`with_faults`]).
    static FORCED: Vec<Bug>;
}

/// Run `f` with `bugs` switched on in this task only (and in the tasks it
/// spawns through [`carry`]), whatever `VIGIL_FAULTS` says: lets tests in one
/// process turn a bug on without turning it on for their neighbours.
#[cfg(feature = "fault-injection")]
pub async fn with_faults<F: std::future::Future>(bugs: &[Bug], f: F) -> F::Output {
    FORCED.scope(bugs.to_vec(), f).await
}

/// `f`, carrying the bugs this task has switched on (see [`with_faults`])
/// into wherever it is spawned.
#[cfg(feature = "fault-injection")]
pub fn carry<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    let forced = FORCED.try_with(Clone::clone).unwrap_or_default();
    FORCED.scope(forced, f)
}

/// Without the `fault-injection` feature there is nothing to carry.
#[cfg(not(feature = "fault-injection"))]
pub fn carry<F: std::future::Future>(f: F) -> F {
    f
}

/// Is `bug` switched on in this process (or in this task)?
#[cfg(feature = "fault-injection")]
pub fn on(bug: Bug) -> bool {
    if FORCED.try_with(|b| b.contains(&bug)).unwrap_or(false) {
        return true;
    }
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
