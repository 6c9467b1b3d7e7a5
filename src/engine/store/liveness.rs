//! Pod liveness: who is alive, detected fast, on either store.
//!
//! PostgreSQL: a pod holds a session advisory lock keyed on its id, on a
//! dedicated connection, taken *before* its registry row is written. The
//! lock dies with the process (sub-second on SIGKILL). The connection sets
//! `idle_session_timeout` and pings well inside it, so a paused (SIGSTOP) or
//! partitioned pod loses its session, and with it the lock, within the
//! liveness timeout; TCP keepalives and `client_connection_check_interval`
//! bound a cut network. Survivors probe peers with
//! `pg_try_advisory_xact_lock` inside one transaction with the registry-row
//! DELETE, so a replacement pod with the same id (which must take the lock
//! before it writes its row) can never be unregistered by a stale probe.
//!
//! SQLite: lease rows. A pod renews `lease_until = now + timeout` every
//! timeout/5; a peer whose lease expired is dead, removed by a single guarded
//! DELETE. A pod refuses to join while another incarnation's lease on its id
//! is live.
//!
//! Either way a death is recorded in `pod_deaths`, and the same recovery
//! code claims the dead pod's runs.
//!
//! Deaths of processes are also seen the moment they happen, without
//! waiting for a probe interval or a lease: a survivor [`Liveness::watch`]es
//! each peer, waiting on the lock the peer's process holds (PostgreSQL: its
//! session's advisory lock; SQLite: an OS file lock beside the database,
//! which the kernel drops when the process dies), and runs a probe as soon
//! as it is granted. Probes and leases stay as the fallback for what no lock
//! release shows: a frozen pod, a cut network.

use super::StoreError;
use async_trait::async_trait;
use serde::Serialize;
use std::time::Duration;

/// Default liveness timeout: the SQLite lease TTL and PostgreSQL's
/// `idle_session_timeout` on the liveness connection.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2000);
/// Default interval between survivors' probes of their peers.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct Identity {
    pub pod_id: String,
    /// Unique per process start: tells a restarted pod from its predecessor.
    pub incarnation: String,
    pub addr: Option<String>,
    pub timeout: Duration,
}

impl Identity {
    /// The lease a renew at `now` (the store's clock) gives: peers read a
    /// lease still ahead as a live pod.
    pub fn lease_until(&self, now: i64) -> i64 {
        now.saturating_add(i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A pod's registry row as it joins (`$1` id, `$2` incarnation, `$3`
/// address, `$4` now, `$5` its lease), on either store.
pub(super) const REGISTER_SQL: &str = "INSERT INTO pods (pod_id, incarnation, addr, started_at, heartbeat_at, lease_until) \
     VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (pod_id) DO UPDATE SET \
     incarnation = $2, addr = $3, started_at = $4, heartbeat_at = $4, lease_until = $5";

/// A row of the pod registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PodRow {
    pub pod_id: String,
    pub incarnation: String,
    pub addr: Option<String>,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    pub lease_until_ms: i64,
}

/// A death this process detected (and recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Death {
    pub pod_id: String,
    pub incarnation: String,
    pub detected_by: String,
    pub detected_at_ms: i64,
    pub last_heartbeat_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error(
        "pod id {pod_id:?} is held by a live incarnation ({incarnation}) until {until_ms}; \
         a second process with the same id would fight over its runs. Stop it, or wait for its \
         lease to expire"
    )]
    InUse {
        pod_id: String,
        incarnation: String,
        until_ms: i64,
    },
    #[error(
        "pod id {pod_id:?}: still locked by a previous incarnation after {}",
        crate::human::duration(*waited)
    )]
    LockTimeout { pod_id: String, waited: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A store's liveness mechanism.
/// What a prober may conclude from a peer's liveness evidence, by how its
/// own membership has fared (the recovery loop's account of its renewals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// A peer's lapsed lease may be read as its death.
    pub leases_speak: bool,
    /// A peer's released liveness lock may be read as its death. Not while
    /// one of our own renews failed within the last liveness timeout: the
    /// server that ended our session (a restart, a crash restart, a thaw)
    /// ended the peer's too, and the peer, alive, has not taken its lock
    /// again yet.
    pub locks_speak: bool,
}

#[async_trait]
pub trait Liveness: Send + Sync {
    /// Become live and registered. Waits up to `wait` for a previous
    /// incarnation of the same id to die.
    async fn join(
        &self,
        me: &Identity,
        wait: Duration,
    ) -> Result<Box<dyn Membership>, LivenessError>;
    /// Probe one peer: `Some(death)` when it is dead and this call removed
    /// its registry row (exactly one prober wins). `standing`: what the
    /// prober's own membership lets it conclude
    /// ([`Standing`]): whether a lapsed lease may
    /// count as death (a prober whose own renewals were not steady cannot
    /// tell a dead peer from a store nobody could write to), and whether a
    /// lock the server holds for a session may (not while the prober's own
    /// renewals have been failing: the server may have ended every
    /// session). Asked once the store is ready to write the death, not
    /// before (the prober may have waited, or been paused, on the way). A
    /// lock the operating system released with its process always counts.
    async fn probe(
        &self,
        peer: &PodRow,
        prober: &str,
        standing: &(dyn Fn() -> Standing + Send + Sync),
    ) -> Result<Option<Death>, StoreError>;
    async fn pods(&self) -> Result<Vec<PodRow>, StoreError>;
    async fn deaths(&self, limit: i64) -> Result<Vec<Death>, StoreError>;
    /// A way to wait for `peer`'s process to be gone, or `None` when this
    /// store has no event for it (then only probes find the death).
    async fn watch(&self, _peer: &PodRow) -> Result<Option<Box<dyn Watch>>, StoreError> {
        Ok(None)
    }
}

/// One survivor waiting on one peer's liveness lock.
#[async_trait]
pub trait Watch: Send {
    /// Wait at most about [`WATCH_ROUND`] for the peer's lock. `Ok(true)`:
    /// it was free, so the process (or session) that held it is gone: probe
    /// the peer now. `Ok(false)`: still held.
    async fn released(&mut self) -> Result<bool, StoreError>;
}

/// How long one [`Watch::released`] waits before answering "still held": a
/// lock wait holds a snapshot on PostgreSQL, so it is renewed this often.
pub const WATCH_ROUND: Duration = Duration::from_secs(1);

/// This process's live membership.
#[async_trait]
pub trait Membership: Send + Sync {
    /// Keep it alive. `Ok(false)`: our registry row is gone or our session
    /// was killed: peers have declared us dead and are taking our runs.
    async fn renew(&mut self) -> Result<bool, StoreError>;
    /// Give liveness up now (graceful shutdown): peers see us dead at their
    /// next probe and recover our runs by the same path as after SIGKILL.
    async fn leave(self: Box<Self>) -> Result<(), StoreError>;
}

/// The advisory-lock key of a pod id: FNV-1a, 64 bits, stable across
/// processes and versions.
pub fn lock_key(pod_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"vigil/pod/".iter().chain(pod_id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(super::lock_key("pod-1"), super::lock_key("pod-1"));
        assert_ne!(super::lock_key("pod-1"), super::lock_key("pod-2"));
        // Pinned: a change would let two versions of Vigil disagree on who is alive.
        assert_eq!(super::lock_key(""), -2_851_392_629_758_251_127);
    }
}
