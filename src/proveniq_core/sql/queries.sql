-- Named queries, loaded once by proveniq_core.db. Parameters are %(name)s.

-- insert_tenant --
INSERT INTO tenants (id, name) VALUES (%(id)s, %(name)s) ON CONFLICT (id) DO NOTHING

-- insert_api_key --
INSERT INTO api_keys (id, tenant_id, name, secret_hash, scopes)
VALUES (%(id)s, %(tenant_id)s, %(name)s, %(secret_hash)s, %(scopes)s)

-- get_api_key --
SELECT id, tenant_id, secret_hash, scopes FROM api_keys
WHERE id = %(id)s AND revoked_at IS NULL

-- list_api_keys --
SELECT id, tenant_id, name, scopes, created_at, revoked_at FROM api_keys
ORDER BY created_at, id

-- revoke_api_key --
UPDATE api_keys SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL
RETURNING id, tenant_id, name, scopes

-- insert_locker --
INSERT INTO lockers (id, tenant_id, locker_ref, site_lat, site_lon, geofence_m)
VALUES (%(id)s, %(tenant_id)s, %(locker_ref)s, %(site_lat)s, %(site_lon)s, %(geofence_m)s)
ON CONFLICT (locker_ref) DO NOTHING
RETURNING *

-- get_locker --
SELECT * FROM lockers WHERE tenant_id = %(tenant_id)s AND locker_ref = %(locker_ref)s

-- get_locker_for_update --
SELECT * FROM lockers WHERE tenant_id = %(tenant_id)s AND locker_ref = %(locker_ref)s
FOR UPDATE

-- list_lockers --
SELECT * FROM lockers
WHERE tenant_id = %(tenant_id)s AND locker_ref > %(after)s
ORDER BY locker_ref LIMIT %(limit)s

-- create_asset --
-- asset_create(): the asset pending, its audit row and asset.created event (migration 0008).
SELECT * FROM asset_create(%(id)s, %(tenant_id)s, %(name)s, %(category)s, %(locker_ref)s,
                           %(saga_id)s, %(actor)s, %(request_id)s)

-- get_asset --
SELECT a.*, v.id AS verification_id, v.status AS verification_status,
       v.reasons AS verification_reasons, v.completed_at AS verification_completed_at
FROM assets a LEFT JOIN verifications v ON v.asset_id = a.id
WHERE a.id = %(id)s AND a.tenant_id = %(tenant_id)s

-- get_asset_for_update --
SELECT * FROM assets WHERE id = %(id)s FOR UPDATE

-- list_assets --
SELECT a.*, v.id AS verification_id, v.status AS verification_status,
       v.reasons AS verification_reasons, v.completed_at AS verification_completed_at
FROM assets a LEFT JOIN verifications v ON v.asset_id = a.id
WHERE a.tenant_id = %(tenant_id)s
  AND (%(status)s::asset_status IS NULL OR a.status = %(status)s::asset_status)
  AND (%(before_at)s::timestamptz IS NULL OR (a.created_at, a.id) < (%(before_at)s, %(before_id)s))
ORDER BY a.created_at DESC, a.id DESC
LIMIT %(limit)s

-- transition_asset --
-- asset_transition(): the move, its audit row and event (migration 0008); all NULL when the
-- asset is unknown.
SELECT * FROM asset_transition(%(id)s, %(status)s, %(locker_id)s, %(actor)s, %(request_id)s,
                               %(saga_id)s, %(reason)s, %(event)s)

-- insert_audit --
INSERT INTO audit_log (tenant_id, actor, action, entity_type, entity_id, before, after,
                       request_id, saga_id)
VALUES (%(tenant_id)s, %(actor)s, %(action)s, %(entity_type)s, %(entity_id)s, %(before)s,
        %(after)s, %(request_id)s, %(saga_id)s)

-- audit_last_sealed --
SELECT seq, hash FROM audit_log WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1

-- audit_unsealed --
SELECT * FROM audit_log WHERE seq IS NULL ORDER BY id LIMIT %(limit)s

-- audit_seal --
-- A batch of rows sealed in one statement: the i-th id gets the i-th seq, prev_hash, hash.
UPDATE audit_log AS a SET seq = s.seq, prev_hash = s.prev_hash, hash = s.hash
FROM unnest(%(ids)s::bigint[], %(seqs)s::bigint[], %(prev_hashes)s::text[],
            %(hashes)s::text[]) AS s(id, seq, prev_hash, hash)
WHERE a.id = s.id AND a.seq IS NULL

-- audit_chain --
SELECT * FROM audit_log WHERE seq > %(after)s ORDER BY seq LIMIT %(limit)s

-- audit_unsealed_count --
SELECT count(*) AS n FROM audit_log WHERE seq IS NULL

-- audit_for_entity --
SELECT id, at, actor, action, before, after, request_id, saga_id FROM audit_log
WHERE entity_type = %(entity_type)s AND entity_id = %(entity_id)s ORDER BY id

-- insert_saga --
WITH saga AS (
    INSERT INTO sagas (id, name, tenant_id, status, input, data, owner, epoch, lease_until,
                       run_at)
    VALUES (%(id)s, %(name)s, %(tenant_id)s, 'running', %(input)s, %(input)s, %(owner)s,
            CASE WHEN %(owner)s::text IS NULL THEN 0 ELSE 1 END,
            CASE WHEN %(owner)s::text IS NULL THEN NULL
                 ELSE now() + make_interval(secs => %(lease)s) END,
            now() + make_interval(secs => %(delay)s))
    RETURNING id, owner, epoch
)
INSERT INTO saga_steps (saga_id, step_index, phase, attempt, name, status, owner, epoch)
SELECT id, 0, 'execute', 1, %(first_step)s, 'running', owner, epoch FROM saga
WHERE %(first_step)s::text IS NOT NULL

-- saga_checkpoint --
SELECT saga_checkpoint(%(saga)s, %(epoch)s, %(begin)s, %(end)s, %(next)s,
                       %(data)s, %(status)s, %(error)s, %(undo)s, %(defer)s, %(rounds)s)

-- notify_sagas --
SELECT pg_notify('proveniq_work', 'sagas')

-- claim_sagas --
-- Claim due sagas (or the one named by id, due or not) under a new epoch; mark the attempts
-- their previous owner left running as interrupted, in the same commit. A saga claimed before
-- it is due (or held: 'infinity', which Python cannot load) becomes due now, so it is
-- recovered as soon as the lease expires should its new owner die.
WITH claimed AS (
    UPDATE sagas SET owner = %(owner)s, epoch = epoch + 1, updated_at = now(),
                     lease_until = now() + make_interval(secs => %(lease)s),
                     run_at = LEAST(run_at, now())
    WHERE id IN (
        SELECT id FROM sagas
        WHERE status IN ('running', 'compensating')
          AND (lease_until IS NULL OR lease_until < now())
          -- one saga by id, due or not (run it now), or whatever is due
          AND CASE WHEN %(id)s::uuid IS NULL THEN run_at <= now() ELSE id = %(id)s END
        ORDER BY run_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING *
), interrupted AS (
    UPDATE saga_steps s SET status = 'interrupted', finished_at = clock_timestamp(),
        error = jsonb_build_object('code', 'E_INTERRUPTED', 'type', 'LeaseExpired',
                                   'message', 'the owner stopped before recording a result')
    FROM claimed c WHERE s.saga_id = c.id AND s.status = 'running'
)
SELECT * FROM claimed

-- wake_saga --
UPDATE sagas SET run_at = now(), updated_at = now()
WHERE id = %(id)s AND owner IS NULL AND status IN ('running', 'compensating')
RETURNING id

-- renew_leases --
UPDATE sagas s SET lease_until = now() + make_interval(secs => %(lease)s)
FROM unnest(%(ids)s::uuid[], %(epochs)s::integer[]) AS held (id, epoch)
WHERE s.id = held.id AND s.epoch = held.epoch AND s.lease_until IS NOT NULL
RETURNING s.id

-- next_saga_due --
-- Held sagas (run_at 'infinity') are due never; subtracting it would raise.
SELECT EXTRACT(EPOCH FROM min(run_at) - now()) AS seconds FROM sagas
WHERE status IN ('running', 'compensating') AND lease_until IS NULL AND run_at < 'infinity'

-- get_saga --
SELECT * FROM sagas WHERE id = %(id)s

-- get_saga_steps --
SELECT * FROM saga_steps WHERE saga_id = %(saga_id)s ORDER BY started_at, step_index, attempt

-- list_sagas --
-- Newest first, without input/data; last_step is the latest attempt in the step log (the
-- step running now, or where the saga stopped). A NULL tenant_id lists every tenant's.
SELECT s.id, s.name, s.tenant_id, s.status, s.owner, s.epoch, s.lease_until, s.run_at,
       s.rounds, s.error, s.created_at, s.finished_at,
       last.name AS last_step, last.phase AS last_step_phase, last.status AS last_step_status
FROM sagas s
LEFT JOIN LATERAL (
    SELECT st.name, st.phase, st.status FROM saga_steps st
    WHERE st.saga_id = s.id
    ORDER BY st.started_at DESC, st.step_index DESC, st.attempt DESC
    LIMIT 1
) last ON true
WHERE (%(status)s::text IS NULL OR s.status = %(status)s)
  AND (%(name)s::text IS NULL OR s.name = %(name)s)
  AND (%(tenant_id)s::text IS NULL OR s.tenant_id = %(tenant_id)s OR s.tenant_id IS NULL)
  AND (%(before_at)s::timestamptz IS NULL
       OR (s.created_at, s.id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY s.created_at DESC, s.id DESC
LIMIT %(limit)s

-- insert_alert --
INSERT INTO ops_alerts (id, dedup_key, code, severity, message, tenant_id, subject)
VALUES (%(id)s, %(dedup_key)s, %(code)s, %(severity)s, %(message)s, %(tenant_id)s, %(subject)s)
ON CONFLICT (dedup_key) WHERE resolved_at IS NULL
DO UPDATE SET count = ops_alerts.count + 1, last_at = now(), message = EXCLUDED.message
RETURNING *

-- list_alerts --
SELECT * FROM ops_alerts
WHERE (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s OR tenant_id IS NULL)
  AND (%(code)s::text IS NULL OR code = %(code)s)
  AND (%(open)s::boolean IS NULL OR (resolved_at IS NULL) = %(open)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (last_at, id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY last_at DESC, id DESC
LIMIT %(limit)s

-- insert_verification --
INSERT INTO verifications (id, asset_id, tenant_id, status)
VALUES (%(id)s, %(asset_id)s, %(tenant_id)s, 'queued')
ON CONFLICT (asset_id) DO NOTHING

-- cancel_verification --
UPDATE verifications SET status = 'cancelled', updated_at = now(), completed_at = now()
WHERE asset_id = %(asset_id)s AND status IN ('queued', 'collecting')
RETURNING id

-- claim_verification --
-- The most overdue due verification (or one whose collector's lease ran out), claimed, with
-- what collecting it needs: its asset's locker and saga, and the locker's site.
WITH job AS (
    UPDATE verifications SET status = 'collecting', attempts = attempts + 1,
                             lease_until = now() + make_interval(secs => %(lease)s),
                             updated_at = now()
    WHERE id = (
        SELECT v.id FROM verifications v
        WHERE (v.status = 'queued' AND v.run_at <= now())
           OR (v.status = 'collecting' AND v.lease_until < now())
        ORDER BY v.run_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING *
)
SELECT job.*, a.locker_ref, a.saga_id, l.site_lat, l.site_lon, l.geofence_m
FROM job JOIN assets a ON a.id = job.asset_id JOIN lockers l ON l.locker_ref = a.locker_ref

-- get_verification_for_update --
SELECT v.*, a.status AS asset_status, a.locker_ref
FROM verifications v JOIN assets a ON a.id = v.asset_id
WHERE v.id = %(id)s FOR UPDATE OF v

-- finish_verification --
UPDATE verifications SET status = %(status)s, reasons = %(reasons)s, checks = %(checks)s,
                         evidence = %(evidence)s, lease_until = NULL, last_error = NULL,
                         updated_at = now(), completed_at = now()
WHERE id = %(id)s

-- reschedule_verification --
UPDATE verifications SET status = %(status)s, lease_until = NULL, last_error = %(error)s,
                         run_at = now() + make_interval(secs => %(delay)s), updated_at = now()
WHERE id = %(id)s

-- insert_evidence --
INSERT INTO evidence (id, verification_id, asset_id, tenant_id, kind, sha256, content_type,
                      size_bytes, phash, captured_at, lat, lon, accuracy_m)
VALUES (%(id)s, %(verification_id)s, %(asset_id)s, %(tenant_id)s, 'photo', %(sha256)s,
        %(content_type)s, %(size_bytes)s, %(phash)s, %(captured_at)s, %(lat)s, %(lon)s,
        %(accuracy_m)s)
ON CONFLICT (verification_id, sha256) DO NOTHING

-- nearest_evidence --
-- The photo of another asset (any tenant) closest to a perceptual hash, by Hamming distance.
-- A scan of every hashed photo: fine for now, a BK-tree or hash bands when it is not.
SELECT asset_id, tenant_id, bit_count((phash # %(phash)s)::bit(64))::integer AS distance
FROM evidence
WHERE phash IS NOT NULL AND asset_id <> %(asset_id)s
ORDER BY distance
LIMIT 1

-- list_evidence --
SELECT * FROM evidence WHERE asset_id = %(asset_id)s AND tenant_id = %(tenant_id)s
ORDER BY created_at, sha256

-- get_evidence --
SELECT * FROM evidence
WHERE asset_id = %(asset_id)s AND tenant_id = %(tenant_id)s AND sha256 = %(sha256)s
LIMIT 1

-- evidence_of_verifications --
SELECT * FROM evidence WHERE verification_id = ANY(%(ids)s::uuid[])
ORDER BY created_at, sha256

-- insert_review --
INSERT INTO reviews (id, verification_id, asset_id, tenant_id, reasons, due_at)
VALUES (%(id)s, %(verification_id)s, %(asset_id)s, %(tenant_id)s, %(reasons)s,
        now() + make_interval(secs => %(timeout)s))
ON CONFLICT (verification_id) DO NOTHING
RETURNING *

-- list_reviews --
-- The review queue, oldest first; without a status, the undecided (pending or expired).
SELECT r.*, v.checks FROM reviews r JOIN verifications v ON v.id = r.verification_id
WHERE r.tenant_id = %(tenant_id)s
  AND CASE WHEN %(status)s::text IS NULL THEN r.status IN ('pending', 'expired')
           ELSE r.status = %(status)s END
  AND (%(after_at)s::timestamptz IS NULL
       OR (r.created_at, r.id) > (%(after_at)s, %(after_id)s::uuid))
ORDER BY r.created_at, r.id
LIMIT %(limit)s

-- get_review_for_update --
SELECT r.*, v.checks FROM reviews r JOIN verifications v ON v.id = r.verification_id
WHERE r.id = %(id)s AND r.tenant_id = %(tenant_id)s
FOR UPDATE OF r

-- decide_review --
UPDATE reviews SET status = %(status)s, decided_by = %(decided_by)s, note = %(note)s,
                   decided_at = now()
WHERE id = %(id)s AND status IN ('pending', 'expired')
RETURNING *

-- expire_due_reviews --
UPDATE reviews SET status = 'expired', expired_at = now()
WHERE id IN (
    SELECT id FROM reviews WHERE status = 'pending' AND due_at <= now()
    ORDER BY due_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING *

-- open_retry_entry_for_update --
SELECT * FROM retry_queue
WHERE asset_id = %(asset_id)s AND status IN ('pending', 'retrying', 'exhausted')
FOR UPDATE

-- insert_retry_entry --
INSERT INTO retry_queue (id, asset_id, tenant_id, locker_ref, operation, saga_id, retry_count,
                         next_retry_at, last_error, status)
VALUES (%(id)s, %(asset_id)s, %(tenant_id)s, %(locker_ref)s, 'link', %(saga_id)s,
        %(retry_count)s, now() + make_interval(secs => %(delay)s), %(last_error)s, %(status)s)

-- update_retry_entry --
UPDATE retry_queue SET retry_count = %(retry_count)s,
                       next_retry_at = now() + make_interval(secs => %(delay)s),
                       last_error = %(last_error)s, status = %(status)s, updated_at = now()
WHERE asset_id = %(asset_id)s AND status IN ('pending', 'retrying', 'exhausted')
RETURNING *

-- mark_retry_entry_retrying --
UPDATE retry_queue SET status = 'retrying', updated_at = now()
WHERE asset_id = %(asset_id)s AND status IN ('pending', 'exhausted')

-- close_retry_entries --
UPDATE retry_queue SET status = %(status)s, next_retry_at = NULL, updated_at = now(),
                       closed_at = now()
WHERE asset_id = %(asset_id)s AND status IN ('pending', 'retrying', 'exhausted')

-- retry_entry_now --
-- An operator's retry: the entry (exhausted or discarded ones too) is retrying, by the
-- process that claimed its saga in the same transaction.
UPDATE retry_queue SET status = 'retrying', next_retry_at = NULL, updated_at = now(),
                       closed_at = NULL
WHERE id = %(id)s AND status IN ('pending', 'retrying', 'exhausted', 'discarded')
RETURNING *

-- get_retry_entry --
SELECT * FROM retry_queue WHERE id = %(id)s

-- get_retry_entry_for_update --
SELECT * FROM retry_queue WHERE id = %(id)s FOR UPDATE

-- latest_retry_entry --
SELECT * FROM retry_queue WHERE asset_id = %(asset_id)s ORDER BY created_at DESC LIMIT 1

-- count_open_retry_entries --
-- The backlog for core_dlq_depth, every tenant: open entries by status.
SELECT status, count(*)::integer AS n FROM retry_queue
WHERE status IN ('pending', 'retrying', 'exhausted')
GROUP BY status

-- due_retry_entries --
SELECT r.* FROM retry_queue r JOIN sagas s ON s.id = r.saga_id
WHERE r.status = 'pending' AND r.next_retry_at <= now() AND s.owner IS NULL
ORDER BY r.next_retry_at
LIMIT %(limit)s

-- list_retry_entries --
SELECT * FROM retry_queue
WHERE tenant_id = %(tenant_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(asset_id)s::uuid IS NULL OR asset_id = %(asset_id)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (created_at, id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- hold_saga --
UPDATE sagas SET run_at = 'infinity', updated_at = now()
WHERE id = %(id)s AND owner IS NULL AND status = 'running'
RETURNING id

-- wake_locker_retries --
-- The locker is back: its pending entries' sagas are due now, and the entries say so.
WITH woken AS (
    UPDATE sagas s SET run_at = now(), updated_at = now()
    FROM retry_queue r
    WHERE r.saga_id = s.id AND r.locker_ref = %(locker_ref)s AND r.status = 'pending'
      AND s.owner IS NULL AND s.status = 'running' AND s.run_at > now()
      AND NOT EXISTS (SELECT 1 FROM lockers l  -- in maintenance: it waits for the end
                      WHERE l.tenant_id = r.tenant_id AND l.locker_ref = r.locker_ref
                        AND l.maintenance_until > now())
    RETURNING s.id
)
UPDATE retry_queue r SET next_retry_at = now(), updated_at = now()
FROM woken WHERE r.saga_id = woken.id AND r.status = 'pending'
RETURNING r.saga_id AS id

-- locker_maintenance --
SELECT maintenance_until FROM lockers
WHERE locker_ref = %(locker_ref)s AND maintenance_until > now()

-- set_locker_maintenance --
UPDATE lockers SET maintenance_until = %(until)s
WHERE tenant_id = %(tenant_id)s AND locker_ref = %(locker_ref)s
RETURNING *

-- exhaust_retry_entries --
UPDATE retry_queue SET status = 'exhausted', next_retry_at = NULL, last_error = %(last_error)s,
                       updated_at = now()
WHERE asset_id = %(asset_id)s AND status IN ('pending', 'retrying')
RETURNING *

-- retry_link_saga --
-- An operator's retry of a held link: a fresh locker command (linkGeneration + 1). The saga
-- falls due after a grace period (seconds), unless claimed in the same transaction.
UPDATE sagas SET data = jsonb_set(data, '{linkGeneration}',
                                  to_jsonb(COALESCE((data->>'linkGeneration')::integer, 0) + 1)),
                 run_at = now() + make_interval(secs => %(grace)s), updated_at = now()
WHERE id = %(id)s AND owner IS NULL AND status = 'running'
RETURNING id

-- resolve_alerts --
UPDATE ops_alerts SET resolved_at = now()
WHERE dedup_key = ANY(%(dedup_keys)s) AND resolved_at IS NULL

-- emit_webhook_event --
-- The outbox write, in the caller's transaction: outbox_emit() (migration 0008).
SELECT outbox_emit(%(id)s, %(tenant_id)s, %(type)s, %(data)s)

-- notify_webhooks --
SELECT pg_notify('proveniq_work', 'webhooks')

-- claim_webhook_delivery --
-- One due delivery to an active endpoint (or one whose worker's lease ran out), with what it
-- takes to send it; ``attempts`` becomes the number of the attempt being made.
UPDATE webhook_deliveries d
SET status = 'delivering', attempts = d.attempts + 1,
    lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
FROM webhook_endpoints e, webhook_events ev
WHERE d.id = (
    SELECT c.id FROM webhook_deliveries c JOIN webhook_endpoints ce ON ce.id = c.endpoint_id
    WHERE ce.status = 'active'
      AND ((c.status = 'pending' AND c.next_attempt_at <= now())
           OR (c.status = 'delivering' AND c.lease_until < now()))
    ORDER BY c.next_attempt_at
    LIMIT 1
    FOR UPDATE OF c SKIP LOCKED
)
  AND e.id = d.endpoint_id AND ev.id = d.event_id
RETURNING d.id, d.attempts, d.endpoint_id, e.tenant_id, e.url, e.secret,
          ev.id AS event_id, ev.type, ev.data, ev.created_at AS event_at

-- record_webhook_attempt --
-- An attempt's outcome, fenced by its number: nothing is written when the delivery is gone or
-- another worker took it over (the lease ran out).
WITH d AS (
    UPDATE webhook_deliveries
    SET status = %(status)s, lease_until = NULL,
        next_attempt_at = now() + make_interval(secs => COALESCE(%(delay)s::float8, 0)),
        last_status_code = %(status_code)s, last_error = %(error)s, updated_at = now(),
        finished_at = CASE WHEN %(status)s::text IN ('delivered', 'failed') THEN now() END
    WHERE id = %(id)s AND status = 'delivering' AND attempts = %(attempt)s
    RETURNING id
)
INSERT INTO webhook_attempts (id, delivery_id, attempt, attempted_at, duration_ms, status_code,
                              error)
SELECT %(attempt_id)s, d.id, %(attempt)s, %(attempted_at)s, %(duration_ms)s, %(status_code)s,
       %(error)s
FROM d
RETURNING delivery_id

-- insert_webhook_endpoint --
INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret)
VALUES (%(id)s, %(tenant_id)s, %(url)s, %(events)s, %(secret)s)
RETURNING *

-- get_webhook_endpoint --
SELECT * FROM webhook_endpoints WHERE id = %(id)s AND tenant_id = %(tenant_id)s

-- list_webhook_endpoints --
SELECT * FROM webhook_endpoints
WHERE tenant_id = %(tenant_id)s
  AND (%(before_at)s::timestamptz IS NULL
       OR (created_at, id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- delete_webhook_endpoint --
DELETE FROM webhook_endpoints WHERE id = %(id)s AND tenant_id = %(tenant_id)s
RETURNING *

-- disable_webhook_endpoint --
UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = %(reason)s,
                             disabled_at = now(), updated_at = now()
WHERE id = %(id)s AND status = 'active'
RETURNING *

-- enable_webhook_endpoint --
UPDATE webhook_endpoints SET status = 'active', disabled_reason = NULL, disabled_at = NULL,
                             updated_at = now()
WHERE id = %(id)s AND tenant_id = %(tenant_id)s AND status = 'disabled'
RETURNING *

-- list_webhook_deliveries --
SELECT d.*, ev.type, ev.data, ev.created_at AS event_at
FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id
WHERE d.endpoint_id = %(endpoint_id)s
  AND (%(status)s::text IS NULL OR d.status = %(status)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (d.created_at, d.id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY d.created_at DESC, d.id DESC
LIMIT %(limit)s

-- get_webhook_delivery --
SELECT d.*, ev.type, ev.data, ev.created_at AS event_at
FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id
WHERE d.id = %(id)s AND d.endpoint_id = %(endpoint_id)s

-- list_webhook_attempts --
SELECT * FROM webhook_attempts WHERE delivery_id = ANY (%(ids)s) ORDER BY delivery_id, attempt

-- redeliver_webhook --
INSERT INTO webhook_deliveries (id, event_id, endpoint_id, redelivery_of)
SELECT %(id)s, event_id, endpoint_id, id FROM webhook_deliveries WHERE id = %(of)s
RETURNING id

-- Idempotency-Key (api/idempotency.py). The claim inserts the key, or takes over a row
-- that is 24 h old or in flight with a lapsed lease (same route and body only); it returns
-- a row only when this request now owns the key.
-- idempotency_claim --
INSERT INTO idempotency_keys AS k (tenant_id, key, route, request_hash, token, locked_until)
VALUES (%(tenant_id)s, %(key)s, %(route)s, %(request_hash)s, %(token)s,
        now() + make_interval(secs => %(lease)s))
ON CONFLICT (tenant_id, key) DO UPDATE SET
    route = EXCLUDED.route,
    request_hash = EXCLUDED.request_hash,
    token = EXCLUDED.token,
    status = 'in_flight',
    locked_until = EXCLUDED.locked_until,
    response_status = NULL,
    response_headers = NULL,
    response_body = NULL,
    created_at = now(),
    completed_at = NULL
WHERE k.created_at <= now() - make_interval(secs => %(ttl)s)
   OR (k.status = 'in_flight' AND k.locked_until <= now()
       AND k.route = EXCLUDED.route AND k.request_hash = EXCLUDED.request_hash)
RETURNING k.token

-- idempotency_lookup --
SELECT route, request_hash, status, response_status, response_headers, response_body,
       created_at <= now() - make_interval(secs => %(ttl)s) AS expired,
       status = 'in_flight' AND locked_until <= now() AS lease_lapsed
FROM idempotency_keys
WHERE tenant_id = %(tenant_id)s AND key = %(key)s

-- idempotency_complete --
UPDATE idempotency_keys SET
    status = 'completed',
    locked_until = NULL,
    response_status = %(status)s,
    response_headers = %(headers)s,
    response_body = %(body)s,
    completed_at = now()
WHERE tenant_id = %(tenant_id)s AND key = %(key)s AND token = %(token)s
  AND status = 'in_flight'

-- idempotency_renew --
UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => %(lease)s)
WHERE tenant_id = %(tenant_id)s AND key = %(key)s AND token = %(token)s
  AND status = 'in_flight'

-- idempotency_release --
DELETE FROM idempotency_keys
WHERE tenant_id = %(tenant_id)s AND key = %(key)s AND token = %(token)s
  AND status = 'in_flight'

-- idempotency_purge --
DELETE FROM idempotency_keys
WHERE (tenant_id, key) IN (
    SELECT tenant_id, key FROM idempotency_keys
    WHERE created_at <= now() - make_interval(secs => %(ttl)s)
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
