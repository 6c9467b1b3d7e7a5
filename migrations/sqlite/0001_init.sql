-- Vigil schema v1 (SQLite). Times are milliseconds since the Unix epoch.
CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    lane            TEXT NOT NULL,
    input           TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending','running','succeeded','failed','cancelled','timed_out','lost')),
    owner_pod       TEXT,
    epoch           INTEGER NOT NULL DEFAULT 0,
    late_completion TEXT NOT NULL DEFAULT 'reject' CHECK (late_completion IN ('reject','accept')),
    run_state       TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    error           TEXT,
    deadline_at     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX runs_state_idx ON runs (state, created_at);
CREATE INDEX runs_owner_idx ON runs (owner_pod, state);

CREATE TABLE run_transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL REFERENCES runs (id),
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    pod        TEXT,
    reason     TEXT NOT NULL,
    late       INTEGER NOT NULL DEFAULT 0,
    at         INTEGER NOT NULL
);
CREATE INDEX run_transitions_run_idx ON run_transitions (run_id, id);

CREATE TABLE run_claims (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL REFERENCES runs (id),
    from_pod   TEXT,
    to_pod     TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX run_claims_run_idx ON run_claims (run_id, id);

-- Version 1 kept only the redacted output; output_raw arrives in 0002, so
-- rows written before it have output_raw NULL (a miss, never a null value).
CREATE TABLE steps (
    run_id     TEXT NOT NULL REFERENCES runs (id),
    node_id    TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('running','succeeded','failed')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    output     TEXT,
    error      TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, node_id)
);

CREATE TABLE chunks (
    run_id TEXT NOT NULL REFERENCES runs (id),
    epoch  INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    data   TEXT NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (run_id, epoch, seq)
);

-- What an external system would record each time a step body executes.
CREATE TABLE effects (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL,
    node_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    epoch   INTEGER NOT NULL,
    pod     TEXT NOT NULL,
    at      INTEGER NOT NULL
);
CREATE INDEX effects_run_idx ON effects (run_id, node_id);

CREATE TABLE switches (
    name       TEXT PRIMARY KEY,
    enabled    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    reason     TEXT NOT NULL
);

CREATE TABLE switch_audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    name      TEXT NOT NULL,
    old_value INTEGER,
    new_value INTEGER NOT NULL,
    who       TEXT NOT NULL,
    reason    TEXT NOT NULL,
    at        INTEGER NOT NULL
);
