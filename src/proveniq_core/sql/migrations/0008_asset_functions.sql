-- An asset's creation and each of its transitions in one statement: the change, its audit
-- row and its webhook event, written server-side (they were three or four statements, each
-- a client round of work). What the audit and the event say about an asset is defined here.

-- The outbox write: the event and one delivery per active endpoint of the tenant subscribed
-- to its type; nothing at all when none is. KEY SHARE: an endpoint deleted meanwhile is
-- skipped rather than failing the caller's change. Workers are woken at commit.
CREATE FUNCTION outbox_emit(p_id uuid, p_tenant text, p_type text, p_data jsonb)
RETURNS void LANGUAGE sql AS $$
    WITH endpoints AS (
        SELECT id FROM webhook_endpoints
        WHERE tenant_id = p_tenant AND status = 'active' AND p_type = ANY (events)
        FOR KEY SHARE
    ), event AS (
        INSERT INTO webhook_events (id, tenant_id, type, data)
        SELECT p_id, p_tenant, p_type, p_data
        WHERE EXISTS (SELECT FROM endpoints)
        RETURNING id
    ), deliveries AS (
        INSERT INTO webhook_deliveries (id, event_id, endpoint_id)
        SELECT gen_random_uuid(), event.id, endpoints.id FROM event, endpoints
        RETURNING id
    )
    SELECT pg_notify('proveniq_work', 'webhooks') FROM (SELECT FROM deliveries LIMIT 1) AS woken
$$;

-- The audited view of an asset row.
CREATE FUNCTION asset_snapshot(a assets) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'status', a.status, 'version', a.version,
        'lockerRef', a.locker_ref, 'lockerId', a.locker_id)
$$;

-- What an asset.* webhook event says about the asset.
CREATE FUNCTION asset_event(a assets, p_previous asset_status, p_reason text)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'assetId', a.id, 'name', a.name, 'category', a.category,
        'lockerRef', a.locker_ref, 'lockerId', a.locker_id, 'status', a.status,
        'previousStatus', p_previous, 'version', a.version, 'sagaId', a.saga_id,
        'reason', p_reason)
$$;

-- Insert the asset pending, audited, with its asset.created event. A repeat with the same
-- id changes nothing and returns the asset as it is.
CREATE FUNCTION asset_create(
    p_id uuid, p_tenant text, p_name text, p_category text, p_locker_ref text,
    p_saga_id uuid, p_actor text, p_request_id text
) RETURNS assets LANGUAGE plpgsql AS $$
DECLARE
    v_row assets;
BEGIN
    INSERT INTO assets (id, tenant_id, name, category, locker_ref, saga_id)
    VALUES (p_id, p_tenant, p_name, p_category, p_locker_ref, p_saga_id)
    ON CONFLICT (id) DO NOTHING
    RETURNING * INTO v_row;
    IF NOT FOUND THEN
        SELECT * INTO v_row FROM assets WHERE id = p_id FOR UPDATE;
        RETURN v_row;
    END IF;
    INSERT INTO audit_log (tenant_id, actor, action, entity_type, entity_id, after,
                           request_id, saga_id)
    VALUES (p_tenant, p_actor, 'asset.created', 'asset', p_id::text,
            asset_snapshot(v_row) || jsonb_build_object('name', p_name, 'category', p_category),
            p_request_id, p_saga_id);
    PERFORM outbox_emit(gen_random_uuid(), p_tenant, 'asset.created',
                        asset_event(v_row, NULL, NULL));
    RETURN v_row;
END $$;

-- Move the asset to p_to (the guard trigger refuses an illegal move), audited, and emit
-- p_event (when not NULL) if the status changed. Already there (with the same locker_id,
-- when one is given): nothing changes. Returns the asset after; all NULL when unknown.
CREATE FUNCTION asset_transition(
    p_id uuid, p_to asset_status, p_locker_id text, p_actor text, p_request_id text,
    p_saga_id uuid, p_reason text, p_event text
) RETURNS assets LANGUAGE plpgsql AS $$
DECLARE
    v_before assets;
    v_after assets;
BEGIN
    SELECT * INTO v_before FROM assets WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_before.status = p_to AND (p_locker_id IS NULL OR p_locker_id = v_before.locker_id) THEN
        RETURN v_before;
    END IF;
    UPDATE assets SET status = p_to, locker_id = COALESCE(p_locker_id, locker_id)
    WHERE id = p_id
    RETURNING * INTO v_after;
    INSERT INTO audit_log (tenant_id, actor, action, entity_type, entity_id, before, after,
                           request_id, saga_id)
    VALUES (v_before.tenant_id, p_actor, 'asset.' || p_to, 'asset', p_id::text,
            asset_snapshot(v_before),
            asset_snapshot(v_after) || CASE WHEN p_reason <> ''
                                            THEN jsonb_build_object('reason', p_reason)
                                            ELSE '{}' END,
            p_request_id, p_saga_id);
    IF p_event IS NOT NULL AND v_before.status <> p_to THEN
        PERFORM outbox_emit(gen_random_uuid(), v_before.tenant_id, p_event,
                            asset_event(v_after, v_before.status, p_reason));
    END IF;
    RETURN v_after;
END $$;
