-- A run submitted to a pod with room, created already claimed by it, in one
-- statement (one round trip, one commit). The same writes as the store's
-- `create_claimed_run` on SQLite (engine/store/sql.rs), in the same order:
--   1. the run, as `statements::CREATE_RUN` inserts it (the deadline capped
--      at the `runs.max_deadline_ms` setting); a repeated idempotency key
--      inserts nothing and returns the run it created first, unclaimed;
--   2. the claim's compare-and-set from nobody, logged (`run_claims`, and
--      `pending -> running` in `run_transitions`);
--   3. optionally the first step's attempt and its execution record.
CREATE FUNCTION vigil_create_claimed_run(
    p_id TEXT,
    p_workflow TEXT,
    p_lane TEXT,
    p_input TEXT,
    p_late TEXT,
    p_key TEXT,
    p_deadline_at BIGINT,
    p_now BIGINT,
    p_heartbeat_timeout_ms BIGINT,
    p_retries_left BIGINT,
    p_max_deadline_setting TEXT,
    p_default_max_deadline_ms BIGINT,
    p_pod TEXT,
    p_first_node TEXT,
    p_first_max BIGINT
) RETURNS TABLE (
    o_created BOOLEAN,
    o_epoch BIGINT,
    o_next TEXT,          -- started | already_succeeded | exhausted | NULL
    o_attempts BIGINT,
    o_run runs
) LANGUAGE plpgsql AS $$
DECLARE
    v_status TEXT;
    v_attempts BIGINT;
BEGIN
    o_next := NULL; o_attempts := NULL; o_epoch := NULL;
    INSERT INTO runs (id, workflow, lane, input, state, epoch, late_completion, run_state,
        idempotency_key, deadline_at, created_at, updated_at, heartbeat_timeout_ms, retries_left, family)
    SELECT p_id, p_workflow, p_lane, p_input, 'pending', 0, p_late, '{}', p_key,
        CASE WHEN p_deadline_at IS NULL OR p_deadline_at > p_now + lim.ms THEN p_now + lim.ms
             ELSE p_deadline_at END,
        p_now, p_now, p_heartbeat_timeout_ms, p_retries_left, p_id
    FROM (SELECT COALESCE((SELECT value FROM settings WHERE name = p_max_deadline_setting),
                          p_default_max_deadline_ms) AS ms) lim
    ON CONFLICT (idempotency_key) DO NOTHING;
    o_created := FOUND;
    IF NOT o_created THEN
        SELECT r.* INTO o_run FROM runs r WHERE r.idempotency_key = p_key;
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE runs SET owner_pod = p_pod, epoch = epoch + 1, state = 'running',
        updated_at = p_now, heartbeat_at = p_now
    WHERE id = p_id AND owner_pod IS NULL AND state = 'pending'
    RETURNING epoch INTO o_epoch;
    INSERT INTO run_claims (run_id, from_pod, to_pod, epoch, at)
    VALUES (p_id, NULL, p_pod, o_epoch, p_now);
    INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, reason, late, at)
    VALUES (p_id, 'pending', 'running', o_epoch, p_pod, 'claimed', FALSE, p_now);
    IF p_first_node IS NOT NULL THEN
        SELECT s.status, s.attempts INTO v_status, v_attempts FROM steps s
        WHERE s.run_id = p_id AND s.node_id = p_first_node;
        IF FOUND AND v_status = 'succeeded' THEN
            o_next := 'already_succeeded';
        ELSIF FOUND AND v_attempts >= p_first_max THEN
            o_next := 'exhausted';
            o_attempts := v_attempts;
        ELSE
            INSERT INTO steps AS s (run_id, node_id, status, attempts, updated_at)
            VALUES (p_id, p_first_node, 'running', 1, p_now)
            ON CONFLICT (run_id, node_id) DO UPDATE
            SET attempts = s.attempts + 1, status = 'running', updated_at = p_now
            RETURNING s.attempts INTO o_attempts;
            INSERT INTO effects (run_id, node_id, attempt, epoch, pod, at)
            VALUES (p_id, p_first_node, o_attempts, o_epoch, p_pod, p_now);
            o_next := 'started';
        END IF;
    END IF;
    SELECT r.* INTO o_run FROM runs r WHERE r.id = p_id;
    RETURN NEXT;
END
$$;
