-- The checkpoints a group commit carries are written by one statement: an array of
-- saga_checkpoint()'s arguments as JSON objects (a missing key is NULL; "defer" may be the
-- string "Infinity"). One parameter to encode and one result to read instead of eleven and
-- one per saga: the client's work per checkpoint was most of the engine's. A refused fence
-- (PVL01) fails the statement; the group commit then writes each checkpoint on its own.
CREATE FUNCTION saga_checkpoints(p_rows jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
BEGIN
    FOR r IN SELECT value FROM jsonb_array_elements(p_rows) LOOP
        PERFORM saga_checkpoint(
            (r->>'saga')::uuid, (r->>'epoch')::integer,
            r->'begin', r->'end', r->'next', r->'data', r->>'status', r->'error',
            CASE WHEN r ? 'undo'
                 THEN ARRAY(SELECT jsonb_array_elements_text(r->'undo')::integer) END,
            (r->>'defer')::double precision, (r->>'rounds')::integer);
    END LOOP;
END $$;
