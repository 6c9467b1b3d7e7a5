//! What a fault does: its action, and for the link faults (latency, loss,
//! half-open links...) which link it hits and how, checked strictly.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// SIGKILL.
    Kill,
    /// SIGTERM (graceful stop).
    Term,
    /// SIGSTOP for `duration_ms`, then SIGCONT.
    Pause,
    /// Start a pod that exited, with the same id.
    Restart,
    /// Set a kill switch (`switch`, `value`).
    Switch,
    /// Stop the run's machinery on its owner, keeping ownership (chaos hook).
    Stall,
    /// Stop the PostgreSQL server for `duration_ms` (throwaway server only).
    StoreOutage,
    /// Send the run's first owner's completion after the run ended (seed 002).
    LateComplete,
    /// Disconnect the pod's container from the scenario network for
    /// `duration_ms`, then reconnect it (Docker driver only).
    Partition,
    /// Freeze the PostgreSQL server for `duration_ms`: SIGSTOP every process
    /// of the throwaway server (process driver) or pause its container
    /// (Docker driver), then let it go on. Connections stay open and hang.
    StoreFreeze,
    /// Hold run `run`'s row locked (`SELECT ... FOR UPDATE` in an open
    /// transaction) for `duration_ms`. With a target pod the lock is taken
    /// by a session of that pod (its chaos hook; pause it next and it is a
    /// pod frozen mid-transaction); without one, by a session of the
    /// runner's own (an operator's open `psql`). PostgreSQL only.
    RowLock,
    /// Step the target pod's wall clock by `offset_ms` (negative: behind),
    /// as a drifting host or an NTP step does (chaos hook).
    ClockSkew,
    /// Hold the SQLite database's write lock (`BEGIN IMMEDIATE`, which
    /// every other writer then waits behind) for `duration_ms`. With a
    /// target pod the lock is taken by a connection of that pod (its chaos
    /// hook; pause it next and it is a pod frozen mid-write, every other
    /// writer frozen with it); without one, by the runner's own (an
    /// operator's open `sqlite3` shell). SQLite only.
    WriteLock,
    /// Every chunk on the link delayed by `ms` ± `jitter_ms` (the runner's
    /// fault proxy), for `duration_ms`.
    Latency,
    /// The link held to `bytes_per_sec` (the fault proxy).
    Bandwidth,
    /// Every open connection on the link reset (RST), and new ones reset
    /// as they come, for `duration_ms`.
    Reset,
    /// Bytes on the link read and dropped, nothing closed (connections that
    /// lost bytes are reset at the heal).
    Blackhole,
    /// The next `times` statements matching `pattern` are forwarded to the
    /// database whole, then the connection is dropped before the reply
    /// reaches the pod: it cannot tell whether its commit landed.
    CutAfterCommit,
    /// Closes on the link delayed by `ms`.
    SlowClose,
    /// Every packet of the link dropped (nftables, no FIN, no RST): the
    /// pod's connections to its store go half-open.
    HalfOpen,
    /// `percent` % of the link's packets dropped at random (nftables).
    Loss,
    /// The store's disk filled for `duration_ms`: the runner puts the
    /// store's files on a size-limited tmpfs of its own (`[cluster]
    /// store_disk`) and fills it with a ballast file; the heal deletes it.
    DiskFull,
    /// Every write, fsync and fdatasync on the store's disk waits
    /// `delay_ms` first, for `duration_ms` (the FUSE layer; a degraded
    /// volume).
    SlowDisk,
    /// A power cut: every holder of the store's files (the SQLite pods, or
    /// the PostgreSQL server) is killed, whatever they wrote and never
    /// fsynced is lost (the FUSE layer, LazyFS's model), and they start
    /// again.
    LoseUnsynced,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Term => "term",
            Action::Pause => "pause",
            Action::Restart => "restart",
            Action::Switch => "switch",
            Action::Stall => "stall",
            Action::StoreOutage => "store_outage",
            Action::LateComplete => "late_complete",
            Action::Partition => "partition",
            Action::StoreFreeze => "store_freeze",
            Action::RowLock => "row_lock",
            Action::ClockSkew => "clock_skew",
            Action::WriteLock => "write_lock",
            Action::Latency => "latency",
            Action::Bandwidth => "bandwidth",
            Action::Reset => "reset",
            Action::Blackhole => "blackhole",
            Action::CutAfterCommit => "cut_after_commit",
            Action::SlowClose => "slow_close",
            Action::HalfOpen => "half_open",
            Action::Loss => "loss",
            Action::DiskFull => "disk_full",
            Action::SlowDisk => "slow_disk",
            Action::LoseUnsynced => "lose_unsynced",
        }
    }
}

impl Action {
    /// A fault on the store itself, which every pod sees alike (not on a
    /// pod, a row or a link).
    pub fn on_store(self) -> bool {
        matches!(
            self,
            Action::StoreOutage
                | Action::StoreFreeze
                | Action::DiskFull
                | Action::SlowDisk
                | Action::LoseUnsynced
        )
    }

    /// A fault on the store's disk, which must be one of the runner's.
    pub fn needs_disk(self) -> bool {
        matches!(
            self,
            Action::DiskFull | Action::SlowDisk | Action::LoseUnsynced
        )
    }

    /// A fault on the store's disk that needs the FUSE layer over it.
    pub fn needs_fuse(self) -> bool {
        matches!(self, Action::SlowDisk | Action::LoseUnsynced)
    }

    /// A fault on a link the runner's proxy or nftables controls.
    pub fn is_link(self) -> bool {
        matches!(
            self,
            Action::Latency
                | Action::Bandwidth
                | Action::Reset
                | Action::Blackhole
                | Action::CutAfterCommit
                | Action::SlowClose
                | Action::HalfOpen
                | Action::Loss
        )
    }

    /// A link fault made of dropped packets (nftables), not of the proxy.
    pub fn is_packet_level(self) -> bool {
        matches!(self, Action::HalfOpen | Action::Loss)
    }
}

/// Which way bytes flow on a link: `up` from the pod to the database (or
/// from a client to the pod), `down` back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
    #[default]
    Both,
}

/// Which link a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LinkName {
    /// Between a pod and its database (PostgreSQL).
    #[default]
    Store,
    /// Between one run's clients (the runner's attachers) and the pods:
    /// a slow consumer of that run's stream. The fault names the run
    /// (`run`); any store.
    Client,
}

/// A link fault's `link = { ... }` table, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkCfg {
    #[serde(default)]
    pub on: LinkName,
    #[serde(default)]
    pub direction: Direction,
    pub ms: Option<u64>,
    pub jitter_ms: Option<u64>,
    pub bytes_per_sec: Option<u64>,
    pub percent: Option<u8>,
    pub pattern: Option<String>,
    pub times: Option<u32>,
    /// cut_after_commit: leave the pod's socket open and silent instead
    /// of resetting it.
    pub hang: Option<bool>,
}

/// A link fault, checked: what the runner applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    pub on: LinkName,
    pub direction: Direction,
    pub ms: u64,
    pub jitter_ms: u64,
    pub bytes_per_sec: u64,
    pub percent: u8,
    pub pattern: String,
    pub times: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hang: bool,
}

impl LinkSpec {
    /// What `action` asks of `cfg`, or (field, problem).
    pub fn check(action: Action, cfg: &LinkCfg) -> Result<LinkSpec, (&'static str, String)> {
        let a = action.as_str();
        let takes: &[&str] = match action {
            Action::Latency => &["direction", "ms", "jitter_ms"],
            Action::Bandwidth => &["direction", "bytes_per_sec"],
            Action::Reset | Action::HalfOpen => &[],
            Action::Blackhole => &["direction"],
            Action::CutAfterCommit => &["pattern", "times", "hang"],
            Action::SlowClose => &["ms"],
            Action::Loss => &["percent"],
            _ => return Err(("link", format!("{a} is not a link fault: it takes no link"))),
        };
        let given = [
            ("direction", cfg.direction != Direction::Both),
            ("ms", cfg.ms.is_some()),
            ("jitter_ms", cfg.jitter_ms.is_some()),
            ("bytes_per_sec", cfg.bytes_per_sec.is_some()),
            ("percent", cfg.percent.is_some()),
            ("pattern", cfg.pattern.is_some()),
            ("times", cfg.times.is_some()),
            ("hang", cfg.hang.is_some()),
        ];
        for (key, set) in given {
            if set && !takes.contains(&key) {
                return Err(("link", format!("{a} takes no link.{key}")));
            }
        }
        let need = |v: Option<u64>, key: &'static str| {
            v.filter(|n| *n > 0)
                .ok_or(("link", format!("{a} needs link.{key} (above 0)")))
        };
        let mut spec = LinkSpec {
            on: cfg.on,
            direction: cfg.direction,
            ms: 0,
            jitter_ms: cfg.jitter_ms.unwrap_or(0),
            bytes_per_sec: 0,
            percent: 0,
            pattern: String::new(),
            times: cfg.times.unwrap_or(1),
            hang: cfg.hang.unwrap_or(false),
        };
        match action {
            Action::Latency => {
                spec.ms = need(cfg.ms, "ms")?;
                if spec.jitter_ms > spec.ms {
                    return Err((
                        "link",
                        "latency: link.jitter_ms may not exceed link.ms".into(),
                    ));
                }
            }
            Action::SlowClose => spec.ms = need(cfg.ms, "ms")?,
            Action::Bandwidth => spec.bytes_per_sec = need(cfg.bytes_per_sec, "bytes_per_sec")?,
            Action::Loss => {
                spec.percent = cfg
                    .percent
                    .filter(|p| (1..=100).contains(p))
                    .ok_or(("link", "loss needs link.percent, 1 to 100".into()))?;
            }
            Action::CutAfterCommit => {
                spec.pattern = cfg.pattern.clone().unwrap_or_else(|| "COMMIT".into());
                if spec.pattern.trim().is_empty() {
                    return Err(("link", "cut_after_commit: link.pattern is empty".into()));
                }
                if spec.times == 0 {
                    return Err((
                        "link",
                        "cut_after_commit: link.times must be at least 1".into(),
                    ));
                }
            }
            _ => {}
        }
        Ok(spec)
    }
}

/// A fault's link table against its action and the cluster: (where, field,
/// problem) when wrong. A link fault needs a duration and PostgreSQL (the
/// link is the pod's to its database).
pub(super) fn check_link(
    action: Action,
    f: &super::FaultCfg,
    cluster: &super::ClusterCfg,
) -> Result<(), (Option<std::ops::Range<usize>>, &'static str, String)> {
    let a = action.as_str();
    match &f.link {
        Some(l) if !action.is_link() => {
            return Err((Some(l.span()), "link", format!("{a} takes no link")));
        }
        _ if !action.is_link() => return Ok(()),
        _ => {}
    }
    let cfg = f
        .link
        .as_ref()
        .map(|l| l.get_ref().clone())
        .unwrap_or_default();
    let at = f.link.as_ref().map(toml::Spanned::span);
    LinkSpec::check(action, &cfg).map_err(|(k, p)| (at.clone(), k, p))?;
    if f.duration_ms.is_none() {
        return Err((None, "duration_ms", format!("{a} needs duration_ms")));
    }
    if cfg.on == LinkName::Client {
        return check_client_link(action, f, at);
    }
    if cluster.store != super::StoreKind::Postgres {
        return Err((
            None,
            "action",
            format!(
                "{a} hits the link between a pod and its database: it needs store = \"postgres\""
            ),
        ));
    }
    Ok(())
}

/// A client link fault: a proxy fault (not a packet fault: the clients are
/// the runner's own, on any driver) on the link of the run `run` names, on
/// any store.
fn check_client_link(
    action: Action,
    f: &super::FaultCfg,
    at: Option<std::ops::Range<usize>>,
) -> Result<(), (Option<std::ops::Range<usize>>, &'static str, String)> {
    let a = action.as_str();
    if !matches!(
        action,
        Action::Latency | Action::Bandwidth | Action::Reset | Action::Blackhole
    ) {
        return Err((
            at,
            "link",
            format!(
                "{a} is a store link fault: a client link (link.on = \"client\") takes \
                 latency, bandwidth, reset or blackhole"
            ),
        ));
    }
    if f.run.is_none() {
        return Err((
            None,
            "run",
            format!("{a} on a client link needs the run whose clients it slows (run = \"rN\")"),
        ));
    }
    Ok(())
}
