//! What a link fault is, as the fault proxy ([`super::proxy`]) takes it:
//! the faults, the directions they hit, and what a proxy reports.

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to upstream (pod to database).
    Up,
    /// Upstream to client.
    Down,
    Both,
}

impl Direction {
    pub(super) fn covers(self, way: Way) -> bool {
        matches!(
            (self, way),
            (Direction::Both, _) | (Direction::Up, Way::Up) | (Direction::Down, Way::Down)
        )
    }
}

/// One direction of one connection (`Direction` without `Both`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    Up,
    Down,
}

impl Way {
    pub(super) fn index(self) -> usize {
        match self {
            Way::Up => 0,
            Way::Down => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LinkFault {
    /// Each chunk delayed by ms ± jitter_ms (uniform), order preserved (a
    /// chunk never overtakes the one before).
    Latency {
        direction: Direction,
        ms: u64,
        jitter_ms: u64,
    },
    /// At most bytes_per_sec in that direction, for the whole link (all its
    /// connections share it, as they would share a thin wire): paced in
    /// pieces of a fiftieth of a second, not bursts of a second. 0 counts
    /// as 1.
    Bandwidth {
        direction: Direction,
        bytes_per_sec: u64,
    },
    /// Every open connection reset now (SO_LINGER 0 then close, on both
    /// sockets: the peers see RST, not FIN); while set, new connections are
    /// accepted and reset at once.
    Reset,
    /// Bytes in that direction are read and dropped (Toxiproxy's `timeout`
    /// 0): nothing forwarded, nothing closed. At heal, every connection that
    /// dropped bytes is reset (its stream cannot resume); new connections
    /// after heal are clean.
    Blackhole { direction: Direction },
    /// PostgreSQL-protocol aware: the next `times` statements (over the
    /// whole link) whose SQL contains `pattern` (case-insensitive) are
    /// forwarded upstream whole; the proxy waits for the server's
    /// ReadyForQuery, so the commit surely happened, then resets the
    /// client's socket and closes the upstream one without forwarding the
    /// reply: the client cannot tell whether its commit landed. Choose a
    /// pattern that commits (COMMIT, or an autocommit statement): inside a
    /// transaction block the server rolls back when its connection closes.
    /// A cut under way finishes even if the fault is healed meanwhile.
    /// With `hang`, the client's socket is not reset but left open and
    /// silent for as long as the proxy lives (the server forgot the
    /// connection: a failover, a NAT that dropped the flow): only a
    /// client-side deadline gets the caller out.
    CutAfterCommit {
        pattern: String,
        times: u32,
        hang: bool,
    },
    /// When either side closes, the other side's close is delayed by ms
    /// (data still flows meanwhile).
    SlowClose { ms: u64 },
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LinkStats {
    pub accepted: u64,
    pub open: u64,
    /// Bytes written to the upstream, and to clients.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Bytes a blackhole read and threw away.
    pub bytes_dropped: u64,
    /// Connections reset by a Reset fault or at a blackhole's heal.
    pub resets: u64,
    pub commits_cut: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LinkEvent {
    CommitCut {
        statement: String,
        /// The client's socket was left open and silent, not reset.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        hung: bool,
    },
    Reset {
        connections: usize,
    },
}
