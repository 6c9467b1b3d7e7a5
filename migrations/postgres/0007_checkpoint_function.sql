-- Step checkpoints of several runs in one statement: one round trip and, in
-- autocommit, one commit for the whole group (the pod's group commit hands
-- it every checkpoint waiting at that moment). Job by job, the same writes
-- as the store's checkpoint on SQLite (engine/store/sql.rs,
-- `checkpoint_in`), in the same order:
--   1. the fence: the run, locked, must be running at the writer's epoch;
--   2. the step's running attempt becomes succeeded with its output;
--   3. the run's actor state;
--   4. optionally the next step's attempt (and its execution record);
--   5. optionally the run's success (the last step), logged.
-- A job refused at 1 or 2 has written nothing and the others go on; its
-- row says why (the caller turns it into the same error as on SQLite).
CREATE FUNCTION vigil_checkpoints(
    p_run_ids TEXT[],
    p_node_ids TEXT[],
    p_epochs BIGINT[],
    p_outputs TEXT[],
    p_outputs_raw TEXT[],
    p_states TEXT[],
    p_states_raw TEXT[],
    p_next_nodes TEXT[],
    p_next_max BIGINT[],
    p_next_pods TEXT[],
    p_succeed_as TEXT[],
    p_now BIGINT
) RETURNS TABLE (
    o_outcome TEXT,       -- ok | not_found | fenced | no_running_attempt
    o_state TEXT,         -- the run's state and epoch as found (refusals)
    o_epoch BIGINT,
    o_next TEXT,          -- started | already_succeeded | exhausted | NULL
    o_attempts BIGINT     -- the next step's attempt (started) or attempts used (exhausted)
) LANGUAGE plpgsql AS $$
DECLARE
    i INT;
    v_status TEXT;
    v_attempts BIGINT;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_run_ids, 1), 0) LOOP
        o_outcome := NULL; o_state := NULL; o_epoch := NULL; o_next := NULL; o_attempts := NULL;
        SELECT r.state, r.epoch INTO o_state, o_epoch FROM runs r WHERE r.id = p_run_ids[i] FOR UPDATE;
        IF NOT FOUND THEN
            o_outcome := 'not_found';
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF o_state <> 'running' OR o_epoch <> p_epochs[i] THEN
            o_outcome := 'fenced';
            RETURN NEXT;
            CONTINUE;
        END IF;
        UPDATE steps SET status = 'succeeded', output = p_outputs[i], output_raw = p_outputs_raw[i],
            error = NULL, updated_at = p_now
        WHERE run_id = p_run_ids[i] AND node_id = p_node_ids[i] AND status = 'running';
        IF NOT FOUND THEN
            o_outcome := 'no_running_attempt';
            RETURN NEXT;
            CONTINUE;
        END IF;
        UPDATE runs SET run_state = p_states[i], run_state_raw = p_states_raw[i], updated_at = p_now
        WHERE id = p_run_ids[i];
        IF p_next_nodes[i] IS NOT NULL THEN
            SELECT s.status, s.attempts INTO v_status, v_attempts FROM steps s
            WHERE s.run_id = p_run_ids[i] AND s.node_id = p_next_nodes[i];
            IF FOUND AND v_status = 'succeeded' THEN
                o_next := 'already_succeeded';
            ELSIF FOUND AND v_attempts >= p_next_max[i] THEN
                o_next := 'exhausted';
                o_attempts := v_attempts;
            ELSE
                INSERT INTO steps AS s (run_id, node_id, status, attempts, updated_at)
                VALUES (p_run_ids[i], p_next_nodes[i], 'running', 1, p_now)
                ON CONFLICT (run_id, node_id) DO UPDATE
                SET attempts = s.attempts + 1, status = 'running', updated_at = p_now
                RETURNING s.attempts INTO o_attempts;
                INSERT INTO effects (run_id, node_id, attempt, epoch, pod, at)
                VALUES (p_run_ids[i], p_next_nodes[i], o_attempts, p_epochs[i], p_next_pods[i], p_now);
                o_next := 'started';
            END IF;
        END IF;
        IF p_succeed_as[i] IS NOT NULL THEN
            UPDATE runs SET state = 'succeeded', updated_at = p_now WHERE id = p_run_ids[i];
            INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, reason, late, at)
            VALUES (p_run_ids[i], 'running', 'succeeded', o_epoch, p_succeed_as[i],
                    'all steps succeeded', FALSE, p_now);
        END IF;
        o_outcome := 'ok';
        RETURN NEXT;
    END LOOP;
END
$$;
