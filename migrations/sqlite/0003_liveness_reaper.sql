-- Pod registry (liveness), deaths detected, and the run columns the reaper
-- and retries need. Times are milliseconds since the Unix epoch.
CREATE TABLE pods (
    pod_id       TEXT PRIMARY KEY,
    incarnation  TEXT NOT NULL,
    addr         TEXT,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    -- SQLite liveness: the pod is live while lease_until >= now.
    lease_until  INTEGER NOT NULL
);

CREATE TABLE pod_deaths (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    pod_id            TEXT NOT NULL,
    incarnation       TEXT NOT NULL,
    detected_by       TEXT NOT NULL,
    detected_at       INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL
);

-- NULL: the run's lane does not heartbeat, so the reaper never touches it
-- (its deadline bounds it). The reaper's WHERE clause and the index below
-- share this one predicate, derived from the lane config at submit.
ALTER TABLE runs ADD COLUMN heartbeat_timeout_ms INTEGER;
ALTER TABLE runs ADD COLUMN heartbeat_at INTEGER;
-- Reaper retries left for this run; a retry gets one less.
ALTER TABLE runs ADD COLUMN retries_left INTEGER NOT NULL DEFAULT 0;
-- The first run of a retry chain (itself for the first); at most one active per family.
ALTER TABLE runs ADD COLUMN family TEXT;
ALTER TABLE runs ADD COLUMN retry_of TEXT;

CREATE INDEX runs_reaper_idx ON runs (heartbeat_at)
    WHERE state = 'running' AND heartbeat_timeout_ms IS NOT NULL;
CREATE INDEX runs_family_active_idx ON runs (family)
    WHERE state IN ('pending', 'running');
