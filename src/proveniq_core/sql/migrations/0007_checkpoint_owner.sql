-- A transactional step now begins and finishes its attempt in one checkpoint, which may
-- also release the saga (its last step). The attempt row must still name the owner that ran
-- it, so the checkpoint takes the owner from the row as it was before the update.
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
    IF p_begin IS NOT NULL THEN
        INSERT INTO saga_steps (saga_id, step_index, phase, attempt, name, status, owner, epoch)
        VALUES (p_saga, (p_begin->>'i')::integer, p_begin->>'phase',
                (p_begin->>'attempt')::integer, p_begin->>'name', 'running', v_owner, p_epoch);
    END IF;
    IF p_end IS NOT NULL THEN
        UPDATE saga_steps SET status = p_end->>'status',
                              output = p_end->'output',
                              error = p_end->'error',
                              finished_at = clock_timestamp()
        WHERE saga_id = p_saga AND step_index = (p_end->>'i')::integer
          AND phase = p_end->>'phase' AND attempt = (p_end->>'attempt')::integer;
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
