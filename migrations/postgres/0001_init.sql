-- Vigil schema v1 (PostgreSQL). Times are milliseconds since the Unix epoch.
CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    lane            TEXT NOT NULL,
    input           TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending','running','succeeded','failed','cancelled','timed_out','lost')),
    owner_pod       TEXT,
    epoch           BIGINT NOT NULL DEFAULT 0,
    late_completion TEXT NOT NULL DEFAULT 'reject' CHECK (late_completion IN ('reject','accept')),
    run_state       TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    error           TEXT,
    deadline_at     BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX runs_state_idx ON runs (state, created_at);
CREATE INDEX runs_owner_idx ON runs (owner_pod, state);

CREATE TABLE run_transitions (
    id         BIGSERIAL PRIMARY KEY,
    run_id     TEXT NOT NULL REFERENCES runs (id),
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    pod        TEXT,
    reason     TEXT NOT NULL,
    late       BOOLEAN NOT NULL DEFAULT FALSE,
    at         BIGINT NOT NULL
);
CREATE INDEX run_transitions_run_idx ON run_transitions (run_id, id);

CREATE TABLE run_claims (
    id         BIGSERIAL PRIMARY KEY,
    run_id     TEXT NOT NULL REFERENCES runs (id),
    from_pod   TEXT,
    to_pod     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX run_claims_run_idx ON run_claims (run_id, id);

-- Version 1 kept only the redacted output; output_raw arrives in 0002, so
-- rows written before it have output_raw NULL (a miss, never a null value).
CREATE TABLE steps (
    run_id     TEXT NOT NULL REFERENCES runs (id),
    node_id    TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('running','succeeded','failed')),
    attempts   BIGINT NOT NULL DEFAULT 0,
    output     TEXT,
    error      TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, node_id)
);

CREATE TABLE chunks (
    run_id TEXT NOT NULL REFERENCES runs (id),
    epoch  BIGINT NOT NULL,
    seq    BIGINT NOT NULL,
    data   TEXT NOT NULL,
    at     BIGINT NOT NULL,
    PRIMARY KEY (run_id, epoch, seq)
);

-- What an external system would record each time a step body executes.
CREATE TABLE effects (
    id      BIGSERIAL PRIMARY KEY,
    run_id  TEXT NOT NULL,
    node_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    epoch   BIGINT NOT NULL,
    pod     TEXT NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX effects_run_idx ON effects (run_id, node_id);

CREATE TABLE switches (
    name       TEXT PRIMARY KEY,
    enabled    BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    reason     TEXT NOT NULL
);

CREATE TABLE switch_audit (
    id        BIGSERIAL PRIMARY KEY,
    name      TEXT NOT NULL,
    old_value BOOLEAN,
    new_value BOOLEAN NOT NULL,
    who       TEXT NOT NULL,
    reason    TEXT NOT NULL,
    at        BIGINT NOT NULL
);
