-- Durable sagas: a lease with a fencing epoch, durable timers (run_at), one log row per step
-- attempt, the compensation plan, and ops alerts.

-- A process owns a saga while ``lease_until`` is in the future. Every claim bumps ``epoch``;
-- every checkpoint names the epoch it was claimed under, so a process that lost its lease
-- cannot record anything. ``run_at`` is when the saga is next due (a durable timer).
ALTER TABLE sagas
    ADD COLUMN epoch integer NOT NULL DEFAULT 0,
    ADD COLUMN undo integer[],
    ADD COLUMN rounds integer NOT NULL DEFAULT 0;
UPDATE sagas SET run_at = created_at WHERE run_at IS NULL;
ALTER TABLE sagas ALTER COLUMN run_at SET DEFAULT now(), ALTER COLUMN run_at SET NOT NULL;
DROP INDEX sagas_claimable;
CREATE INDEX sagas_due ON sagas (run_at) WHERE status IN ('running', 'compensating');

-- One row per attempt of a step (or of its compensation): the step timeline.
ALTER TABLE saga_steps RENAME COLUMN attempts TO attempt;
ALTER TABLE saga_steps DROP CONSTRAINT saga_steps_pkey;
ALTER TABLE saga_steps ADD PRIMARY KEY (saga_id, step_index, phase, attempt);
ALTER TABLE saga_steps ADD COLUMN owner text, ADD COLUMN epoch integer;
-- Step rows are written only by saga_checkpoint() and insert_saga, after the saga row is
-- locked (or created) in the same statement; the foreign key would lock it a second time.
ALTER TABLE saga_steps DROP CONSTRAINT saga_steps_saga_id_fkey;
ALTER TABLE saga_steps DROP CONSTRAINT saga_steps_status_check;
ALTER TABLE saga_steps ADD CONSTRAINT saga_steps_status_check
    CHECK (status IN ('running', 'completed', 'failed', 'interrupted', 'deferred'));

-- One checkpoint, one statement: check the fence, then write the step rows and any change
-- to the saga. Raises SQLSTATE PVL01 when the caller's epoch is stale.
--   p_begin / p_next  {"i", "phase", "attempt", "name"}        insert a running attempt
--   p_end             {"i", "phase", "attempt", "status", "output", "error"}  finish one
-- p_begin is written before p_end and p_next after it. p_defer releases the saga until
-- now() + p_defer seconds (Infinity: until woken); a terminal p_status releases it for good.
-- A checkpoint that changes nothing on the saga only takes a KEY SHARE lock on its row:
-- claims lock with FOR UPDATE, so none can slip between this check and the commit, and the
-- row is not rewritten on every step. Leases are extended by the owner's keepalive.
CREATE FUNCTION saga_checkpoint(
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
        UPDATE sagas SET
            status = COALESCE(p_status, status),
            data = CASE WHEN p_data IS NULL THEN data ELSE data || p_data END,
            error = COALESCE(p_error, error),
            undo = COALESCE(p_undo, undo),
            rounds = COALESCE(p_rounds, rounds),
            lease_until = CASE WHEN v_release THEN NULL ELSE lease_until END,
            owner = CASE WHEN v_release THEN NULL ELSE owner END,
            run_at = CASE WHEN p_defer IS NULL THEN run_at
                          WHEN p_defer = 'Infinity' THEN 'infinity'
                          ELSE now() + make_interval(secs => p_defer) END,
            finished_at = CASE WHEN v_final THEN now() ELSE finished_at END,
            updated_at = now()
        WHERE id = p_saga AND epoch = p_epoch
        RETURNING owner INTO v_owner;
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

-- Ops alerts: one open row per cause (dedup_key), counted while it repeats.
CREATE TABLE ops_alerts (
    id           uuid PRIMARY KEY,
    dedup_key    text NOT NULL,
    code         text NOT NULL,
    severity     text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message      text NOT NULL,
    tenant_id    text,
    subject      jsonb NOT NULL DEFAULT '{}',
    count        integer NOT NULL DEFAULT 1,
    first_at     timestamptz NOT NULL DEFAULT now(),
    last_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz
);
CREATE UNIQUE INDEX ops_alerts_open ON ops_alerts (dedup_key) WHERE resolved_at IS NULL;
CREATE INDEX ops_alerts_recent ON ops_alerts (last_at DESC, id DESC);
