-- One checkpoint may now record several attempts: p_begin and p_end take a JSON object (one
-- attempt, as before) or an array of them. A ledger step's writes and the end of the locker
-- call before it, or two ledger steps run in one transaction, are then fenced and recorded by
-- one statement. An attempt both begun and ended by the same checkpoint is inserted finished
-- (one row write, not an insert and an update).
CREATE OR REPLACE FUNCTION saga_checkpoint(
    p_saga uuid, p_epoch integer,
    p_begin jsonb, p_end jsonb, p_next jsonb,
    p_data jsonb, p_status text, p_error jsonb, p_undo integer[],
    p_defer double precision, p_rounds integer
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_owner text;
    v_final boolean := p_status IN ('completed', 'compensated', 'compensation_failed', 'failed');
    v_release boolean := v_final OR p_defer IS NOT NULL;
    v_begins jsonb := CASE jsonb_typeof(p_begin) WHEN 'array' THEN p_begin
                                                 WHEN 'object' THEN jsonb_build_array(p_begin)
                                                 ELSE '[]' END;
    v_ends jsonb := CASE jsonb_typeof(p_end) WHEN 'array' THEN p_end
                                             WHEN 'object' THEN jsonb_build_array(p_end)
                                             ELSE '[]' END;
BEGIN
    IF p_status IS NULL AND p_data IS NULL AND p_error IS NULL AND p_undo IS NULL
       AND p_defer IS NULL AND p_rounds IS NULL THEN
        SELECT owner INTO v_owner FROM sagas
        WHERE id = p_saga AND epoch = p_epoch FOR KEY SHARE;
    ELSE
        UPDATE sagas AS s SET
            status = COALESCE(p_status, s.status),
            data = CASE WHEN p_data IS NULL THEN s.data ELSE s.data || p_data END,
            error = COALESCE(p_error, s.error),
            undo = COALESCE(p_undo, s.undo),
            rounds = COALESCE(p_rounds, s.rounds),
            lease_until = CASE WHEN v_release THEN NULL ELSE s.lease_until END,
            owner = CASE WHEN v_release THEN NULL ELSE s.owner END,
            run_at = CASE WHEN p_defer IS NULL THEN s.run_at
                          WHEN p_defer = 'Infinity' THEN 'infinity'
                          ELSE now() + make_interval(secs => p_defer) END,
            finished_at = CASE WHEN v_final THEN now() ELSE s.finished_at END,
            updated_at = now()
        FROM sagas AS old
        WHERE s.id = p_saga AND s.epoch = p_epoch AND old.id = s.id
        RETURNING old.owner INTO v_owner;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'saga % is no longer held under epoch %', p_saga, p_epoch
            USING ERRCODE = 'PVL01';
    END IF;
    -- Ends of attempts begun earlier (not in this checkpoint).
    IF jsonb_array_length(v_ends) > 0 THEN
        UPDATE saga_steps AS st SET status = e->>'status',
                                    output = e->'output',
                                    error = e->'error',
                                    finished_at = clock_timestamp()
        FROM jsonb_array_elements(v_ends) AS e
        WHERE st.saga_id = p_saga AND st.step_index = (e->>'i')::integer
          AND st.phase = e->>'phase' AND st.attempt = (e->>'attempt')::integer
          AND NOT v_begins @> jsonb_build_array(
                  jsonb_build_object('i', e->'i', 'phase', e->'phase', 'attempt', e->'attempt'));
    END IF;
    -- Attempts begun here: running, or finished at once when this checkpoint also ends them.
    IF jsonb_array_length(v_begins) > 0 THEN
        INSERT INTO saga_steps (saga_id, step_index, phase, attempt, name, status, owner, epoch,
                                output, error, started_at, finished_at)
        SELECT p_saga, (b->>'i')::integer, b->>'phase', (b->>'attempt')::integer, b->>'name',
               COALESCE(e->>'status', 'running'), v_owner, p_epoch, e->'output', e->'error',
               at.t, CASE WHEN e IS NULL THEN NULL ELSE at.t END
        FROM jsonb_array_elements(v_begins) WITH ORDINALITY AS bb(b, n)
        LEFT JOIN jsonb_array_elements(v_ends) AS e
          ON e->'i' = b->'i' AND e->'phase' = b->'phase' AND e->'attempt' = b->'attempt'
        CROSS JOIN LATERAL (SELECT clock_timestamp() AS t, bb.n) AS at
        ORDER BY bb.n;
    END IF;
    IF p_next IS NOT NULL THEN
        INSERT INTO saga_steps (saga_id, step_index, phase, attempt, name, status, owner, epoch)
        VALUES (p_saga, (p_next->>'i')::integer, p_next->>'phase',
                (p_next->>'attempt')::integer, p_next->>'name', 'running', v_owner, p_epoch);
    END IF;
    IF p_defer IS NOT NULL AND p_defer <> 'Infinity' THEN
        PERFORM pg_notify('proveniq_work', 'sagas');
    END IF;
END $$;
