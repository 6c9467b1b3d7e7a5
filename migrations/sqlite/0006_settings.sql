-- Numeric settings every pod sharing this store agrees on (src/engine/settings.rs
-- names them; a setting with no row has its built-in default), each change
-- audited like a switch. Times are milliseconds since the Unix epoch.
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    reason     TEXT NOT NULL
);

CREATE TABLE setting_audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    name      TEXT NOT NULL,
    old_value BIGINT,
    new_value BIGINT NOT NULL,
    who       TEXT NOT NULL,
    reason    TEXT NOT NULL,
    at        BIGINT NOT NULL
);

-- Every run has a deadline now (runs.max_deadline_ms when its workflow sets
-- none). Unfinished runs created before this migration without one get the
-- default maximum, one hour, from their creation.
UPDATE runs SET deadline_at = created_at + 3600000
    WHERE deadline_at IS NULL AND state IN ('pending', 'running');
