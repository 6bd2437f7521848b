-- Named queries, loaded once by proveniq_core.db. Parameters are %(name)s.

-- insert_tenant --
-- A tenant, once: a second insert of the same id is a no-op.
INSERT INTO tenants (id, name) VALUES (%(id)s, %(name)s) ON CONFLICT (id) DO NOTHING

-- insert_api_key --
-- A new API key with its secret's hash (never the secret) and scopes.
INSERT INTO api_keys (id, tenant_id, name, secret_hash, scopes)
VALUES (%(id)s, %(tenant_id)s, %(name)s, %(secret_hash)s, %(scopes)s)

-- get_api_key --
-- A live key by id, for authentication; NULL when unknown or revoked.
SELECT id, tenant_id, name, secret_hash, scopes FROM api_keys
WHERE id = %(id)s AND revoked_at IS NULL

-- list_api_keys --
-- Every key of every tenant, revoked ones too, oldest first; never the hash.
SELECT id, tenant_id, name, scopes, created_at, revoked_at FROM api_keys
ORDER BY created_at, id

-- revoke_api_key --
-- Revoke a live key; no row when it is unknown or already revoked.
UPDATE api_keys SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL
RETURNING id, tenant_id, name, scopes

-- insert_locker --
-- Register a locker and its site geofence; no row when its locker_ref is taken
-- (by any tenant).
INSERT INTO lockers (id, tenant_id, locker_ref, site_lat, site_lon, geofence_m)
VALUES (%(id)s, %(tenant_id)s, %(locker_ref)s, %(site_lat)s, %(site_lon)s, %(geofence_m)s)
ON CONFLICT (locker_ref) DO NOTHING
RETURNING *

-- get_locker --
-- One of the tenant's lockers by its ref; NULL when unknown.
SELECT * FROM lockers WHERE tenant_id = %(tenant_id)s AND locker_ref = %(locker_ref)s

-- get_locker_for_update --
-- The tenant's locker by ref, row-locked for the caller's transaction.
SELECT * FROM lockers WHERE tenant_id = %(tenant_id)s AND locker_ref = %(locker_ref)s
FOR UPDATE

-- tenant_locker_refs --
-- The refs of every locker the tenant registered (scopes per-device circuits and faults).
SELECT locker_ref FROM lockers WHERE tenant_id = %(tenant_id)s

-- list_lockers --
-- The tenant's lockers in locker_ref order, a page after the cursor ref.
SELECT * FROM lockers
WHERE tenant_id = %(tenant_id)s AND locker_ref > %(after)s
ORDER BY locker_ref LIMIT %(limit)s

-- create_asset --
-- asset_create(): the asset pending, its audit row and asset.created event (migration 0008).
SELECT * FROM asset_create(%(id)s, %(tenant_id)s, %(name)s, %(category)s, %(locker_ref)s,
                           %(saga_id)s, %(actor)s, %(request_id)s)

-- get_asset --
-- One of the tenant's assets with its verification's status and reasons (NULL when
-- none yet); NULL when the asset is unknown or another tenant's.
SELECT a.*, v.id AS verification_id, v.status AS verification_status,
       v.reasons AS verification_reasons, v.completed_at AS verification_completed_at
FROM assets a LEFT JOIN verifications v ON v.asset_id = a.id
WHERE a.id = %(id)s AND a.tenant_id = %(tenant_id)s

-- get_asset_for_update --
-- The asset row-locked, any tenant (callers check it); NULL when unknown.
SELECT * FROM assets WHERE id = %(id)s FOR UPDATE

-- list_assets --
-- The tenant's assets newest first, optionally by status, with their verification,
-- in keyset pages (created_at, id).
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
-- An audit row, unsealed (seq NULL) until the sealer chains it.
INSERT INTO audit_log (tenant_id, actor, action, entity_type, entity_id, before, after,
                       request_id, saga_id)
VALUES (%(tenant_id)s, %(actor)s, %(action)s, %(entity_type)s, %(entity_id)s, %(before)s,
        %(after)s, %(request_id)s, %(saga_id)s)

-- audit_last_sealed --
-- The head of the hash chain: the highest sealed seq and its hash.
SELECT seq, hash FROM audit_log WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1

-- audit_unsealed --
-- The next rows to seal, in insertion order.
SELECT * FROM audit_log WHERE seq IS NULL ORDER BY id LIMIT %(limit)s

-- audit_seal --
-- A batch of rows sealed in one statement: the i-th id gets the i-th seq, prev_hash, hash.
UPDATE audit_log AS a SET seq = s.seq, prev_hash = s.prev_hash, hash = s.hash
FROM unnest(%(ids)s::bigint[], %(seqs)s::bigint[], %(prev_hashes)s::text[],
            %(hashes)s::text[]) AS s(id, seq, prev_hash, hash)
WHERE a.id = s.id AND a.seq IS NULL

-- audit_chain --
-- Sealed rows after a seq, in chain order, for verifying the chain page by page.
SELECT * FROM audit_log WHERE seq > %(after)s ORDER BY seq LIMIT %(limit)s

-- audit_unsealed_count --
-- How many audit rows await sealing.
SELECT count(*) AS n FROM audit_log WHERE seq IS NULL

-- audit_hash_at --
-- The hash of the sealed row at a seq; NULL when there is none.
SELECT hash FROM audit_log WHERE seq = %(seq)s

-- audit_checkpoint_lock --
-- One checkpoint writer at a time; a periodic writer that finds it taken skips its turn.
SELECT CASE WHEN %(wait)s THEN pg_advisory_xact_lock(%(key)s) IS NOT NULL
            ELSE pg_try_advisory_xact_lock(%(key)s) END AS locked

-- audit_checkpoint_last --
-- The last checkpoint and whether it is younger than the interval (by the database's clock,
-- the one clock every worker shares).
SELECT seq, head_hash, key_id, signed_at, signature,
       signed_at > clock_timestamp() - make_interval(secs => %(interval)s) AS recent
FROM audit_checkpoints ORDER BY id DESC LIMIT 1

-- audit_checkpoint_clock --
-- The database's clock (to the millisecond) that signs a checkpoint.
SELECT date_trunc('milliseconds', clock_timestamp()) AS now

-- insert_audit_checkpoint --
-- A signed checkpoint of the chain head (seq, hash, key, time).
INSERT INTO audit_checkpoints (seq, head_hash, key_id, signed_at, signature)
VALUES (%(seq)s, %(head_hash)s, %(key_id)s, %(signed_at)s, %(signature)s)

-- audit_for_entity --
-- The audit trail of one entity, oldest first.
SELECT id, at, actor, action, before, after, request_id, saga_id FROM audit_log
WHERE entity_type = %(entity_type)s AND entity_id = %(entity_id)s ORDER BY id

-- insert_saga --
-- A new running saga, owned (with a lease) or left for a worker to claim after
-- the delay, and its first step's running attempt when it has one.
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

-- saga_checkpoints --
-- Checkpoints, of one saga or of several, in one statement (migration 0017): its parameter
-- is a JSON array of saga_checkpoint()'s arguments, one object per checkpoint, missing keys
-- NULL. saga_checkpoint() records a step's outcome and the saga's next state, fenced by
-- epoch: a worker whose lease was taken over writes nothing and gets PVL01 (migration 0007).
SELECT saga_checkpoints(%(rows)s)

-- notify_sagas --
-- Wake the saga workers (NOTIFY proveniq_work 'sagas') when the caller commits.
SELECT pg_notify('proveniq_work', 'sagas')

-- claim_sagas --
-- Claim due sagas (or the one named by id, due or not) under a new epoch; mark the attempts
-- their previous owner left running as interrupted, in the same commit. Each comes with its
-- step log (``steps``, as get_saga_steps reads it once this commits: the interrupted attempts
-- as such), so the new owner need not read it again. A saga claimed before it is due (or
-- held: 'infinity', which Python cannot load) becomes due now, so it is recovered as soon
-- as the lease expires should its new owner die. Times are the server's
-- now() moved by the engine clock's offset (0 but in tests).
WITH lost AS (  -- what an interrupted attempt's error says, once for both uses below
    SELECT jsonb_build_object('code', 'E_INTERRUPTED', 'type', 'LeaseExpired',
                              'message', 'the owner stopped before recording a result') AS error
), claimed AS (
    UPDATE sagas SET owner = %(owner)s, epoch = epoch + 1, updated_at = now(),
                     lease_until = now() + make_interval(secs => %(lease)s),
                     run_at = LEAST(run_at, now() + make_interval(secs => %(offset)s))
    WHERE id IN (
        SELECT id FROM sagas
        WHERE status IN ('running', 'compensating')
          AND (lease_until IS NULL OR lease_until < now() + make_interval(secs => %(offset)s))
          -- one saga by id, due or not (run it now), or whatever is due
          AND CASE WHEN %(id)s::uuid IS NULL THEN run_at <= now() + make_interval(secs => %(offset)s)
                   ELSE id = %(id)s END
        ORDER BY run_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING *
), interrupted AS (
    UPDATE saga_steps s SET status = 'interrupted', finished_at = clock_timestamp(),
        error = lost.error
    FROM claimed c, lost WHERE s.saga_id = c.id AND s.status = 'running'
)
SELECT c.*, (
    SELECT COALESCE(jsonb_agg(jsonb_build_object(
               'step_index', s.step_index, 'phase', s.phase, 'attempt', s.attempt,
               'status', CASE WHEN s.status = 'running' THEN 'interrupted' ELSE s.status END,
               'error', CASE WHEN s.status = 'running' THEN lost.error ELSE s.error END)
               ORDER BY s.started_at, s.step_index, s.attempt), '[]')
    FROM saga_steps s, lost WHERE s.saga_id = c.id
) AS steps
FROM claimed c

-- wake_saga --
-- An unowned saga falls due now; no row when a worker holds it or it has ended.
UPDATE sagas SET run_at = now(), updated_at = now()
WHERE id = %(id)s AND owner IS NULL AND status IN ('running', 'compensating')
RETURNING id

-- renew_leases --
-- Extend the leases of the sagas this worker holds, fenced by epoch. A row per saga still
-- held (renewed) and per saga another owner has claimed since (taken: its lease was lost);
-- none for a saga this worker let go meanwhile (ended or parked: same epoch, no lease).
WITH held AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(epochs)s::integer[]) AS h (id, epoch)
), renewed AS (
    UPDATE sagas s SET lease_until = now() + make_interval(secs => %(lease)s)
    FROM held WHERE s.id = held.id AND s.epoch = held.epoch AND s.lease_until IS NOT NULL
    RETURNING s.id
)
SELECT id, false AS taken FROM renewed
UNION ALL
SELECT s.id, true FROM sagas s JOIN held ON s.id = held.id WHERE s.epoch <> held.epoch

-- next_saga_due --
-- Held sagas (run_at 'infinity') are due never; subtracting it would raise.
SELECT EXTRACT(EPOCH FROM min(run_at) - now()) AS seconds FROM sagas
WHERE status IN ('running', 'compensating') AND lease_until IS NULL AND run_at < 'infinity'

-- get_saga --
-- One saga by id, any tenant; NULL when unknown.
SELECT * FROM sagas WHERE id = %(id)s

-- get_saga_steps --
-- A saga's step log: every attempt of every step, in the order they ran.
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
-- Raise an ops alert, or bump the count, last_at and message of the open one
-- with the same dedup_key.
INSERT INTO ops_alerts (id, dedup_key, code, severity, message, tenant_id, subject)
VALUES (%(id)s, %(dedup_key)s, %(code)s, %(severity)s, %(message)s, %(tenant_id)s, %(subject)s)
ON CONFLICT (dedup_key) WHERE resolved_at IS NULL
DO UPDATE SET count = ops_alerts.count + 1, last_at = now(), message = EXCLUDED.message
RETURNING *

-- get_alert_for_update --
-- A tenant's alert, or a system alert (no tenant), which every tenant's operators see.
SELECT * FROM ops_alerts
WHERE id = %(id)s AND (tenant_id = %(tenant_id)s OR tenant_id IS NULL)
FOR UPDATE

-- acknowledge_alert --
-- Acknowledge an alert; the first acknowledgement (time, who) is kept.
UPDATE ops_alerts SET acknowledged_at = COALESCE(acknowledged_at, now()),
                      acknowledged_by = COALESCE(acknowledged_by, %(actor)s)
WHERE id = %(id)s
RETURNING *

-- resolve_alert --
-- Resolve an open alert by id; no row when it was already resolved.
UPDATE ops_alerts SET resolved_at = now(), resolved_by = %(actor)s
WHERE id = %(id)s AND resolved_at IS NULL
RETURNING *

-- list_alerts --
-- Alerts the tenant sees (its own and system ones; NULL tenant: all), by code and
-- open/resolved, most recently raised first, in keyset pages.
SELECT * FROM ops_alerts
WHERE (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s OR tenant_id IS NULL)
  AND (%(code)s::text IS NULL OR code = %(code)s)
  AND (%(open)s::boolean IS NULL OR (resolved_at IS NULL) = %(open)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (last_at, id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY last_at DESC, id DESC
LIMIT %(limit)s

-- insert_verification --
-- Queue an asset's verification; at most one per asset (a repeat is a no-op).
INSERT INTO verifications (id, asset_id, tenant_id, status)
VALUES (%(id)s, %(asset_id)s, %(tenant_id)s, 'queued')
ON CONFLICT (asset_id) DO NOTHING

-- cancel_verification --
-- Cancel an asset's verification while it is still queued or collecting.
UPDATE verifications SET status = 'cancelled', updated_at = now(), completed_at = now()
WHERE asset_id = %(asset_id)s AND status IN ('queued', 'collecting')
RETURNING id

-- claim_verifications --
-- Up to %(limit)s due verifications (or ones whose collector's lease ran out), the most
-- overdue first, claimed in one statement, each with what collecting it needs: its asset's
-- locker and saga, and the locker's site. Fewer than asked: nothing more is due.
WITH job AS (
    UPDATE verifications SET status = 'collecting', attempts = attempts + 1,
                             lease_until = now() + make_interval(secs => %(lease)s),
                             updated_at = now()
    WHERE id IN (
        SELECT v.id FROM verifications v
        WHERE (v.status = 'queued' AND v.run_at <= now())
           OR (v.status = 'collecting' AND v.lease_until < now())
        ORDER BY v.run_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING *
)
SELECT job.*, a.locker_ref, a.saga_id, l.site_lat, l.site_lon, l.geofence_m
FROM job JOIN assets a ON a.id = job.asset_id JOIN lockers l ON l.locker_ref = a.locker_ref

-- get_verification_for_update --
-- A verification with its asset's status and locker, the
-- verification row-locked (FOR UPDATE OF v).
SELECT v.*, a.status AS asset_status, a.locker_ref
FROM verifications v JOIN assets a ON a.id = v.asset_id
WHERE v.id = %(id)s FOR UPDATE OF v

-- finish_verification --
-- A verification's outcome: status, reasons, checks and evidence; its lease ends.
UPDATE verifications SET status = %(status)s, reasons = %(reasons)s, checks = %(checks)s,
                         evidence = %(evidence)s, lease_until = NULL, last_error = NULL,
                         updated_at = now(), completed_at = now()
WHERE id = %(id)s

-- reschedule_verification --
-- Put a verification back (with the error) to run again after the delay;
-- its lease ends.
UPDATE verifications SET status = %(status)s, lease_until = NULL, last_error = %(error)s,
                         run_at = now() + make_interval(secs => %(delay)s), updated_at = now()
WHERE id = %(id)s

-- insert_evidence --
-- A photo's metadata (hash, phash, GPS) for a verification; the same photo
-- twice (same sha256) is stored once.
INSERT INTO evidence (id, verification_id, asset_id, tenant_id, kind, sha256, content_type,
                      size_bytes, phash, captured_at, lat, lon, accuracy_m)
VALUES (%(id)s, %(verification_id)s, %(asset_id)s, %(tenant_id)s, 'photo', %(sha256)s,
        %(content_type)s, %(size_bytes)s, %(phash)s, %(captured_at)s, %(lat)s, %(lon)s,
        %(accuracy_m)s)
ON CONFLICT (verification_id, sha256) DO NOTHING

-- nearest_evidence --
-- The photo of another asset (any tenant) closest to a perceptual hash by Hamming distance,
-- if one is within %(within)s bits (at most 8: the bands of migration 0016 find every photo
-- that close, through their index); no row otherwise.
SELECT asset_id, tenant_id, bit_count((phash # %(phash)s)::bit(64))::integer AS distance
FROM evidence
WHERE phash_bands(phash) && phash_bands(%(phash)s) AND phash IS NOT NULL
  AND asset_id <> %(asset_id)s AND bit_count((phash # %(phash)s)::bit(64)) <= %(within)s
ORDER BY distance
LIMIT 1

-- list_evidence --
-- The tenant's photos of an asset, oldest first.
SELECT * FROM evidence WHERE asset_id = %(asset_id)s AND tenant_id = %(tenant_id)s
ORDER BY created_at, sha256

-- get_evidence --
-- One of the tenant's photos of an asset by its sha256; NULL when unknown.
SELECT * FROM evidence
WHERE asset_id = %(asset_id)s AND tenant_id = %(tenant_id)s AND sha256 = %(sha256)s
LIMIT 1

-- evidence_of_verifications --
-- The photos of several verifications at once, oldest first.
SELECT * FROM evidence WHERE verification_id = ANY(%(ids)s::uuid[])
ORDER BY created_at, sha256

-- insert_review --
-- Open a manual review of a verification, due after the timeout; at most one
-- per verification (no row on a repeat).
INSERT INTO reviews (id, verification_id, asset_id, tenant_id, reasons, due_at)
VALUES (%(id)s, %(verification_id)s, %(asset_id)s, %(tenant_id)s, %(reasons)s,
        now() + make_interval(secs => %(timeout)s))
ON CONFLICT (verification_id) DO NOTHING
RETURNING *

-- list_reviews --
-- The review queue, oldest first; without a status, the undecided (pending or expired).
SELECT r.*, v.checks, COALESCE(r.claimed_until > now(), false) AS claim_live
FROM reviews r JOIN verifications v ON v.id = r.verification_id
WHERE r.tenant_id = %(tenant_id)s
  AND CASE WHEN %(status)s::text IS NULL THEN r.status IN ('pending', 'expired')
           ELSE r.status = %(status)s END
  AND (%(after_at)s::timestamptz IS NULL
       OR (r.created_at, r.id) > (%(after_at)s, %(after_id)s::uuid))
ORDER BY r.created_at, r.id
LIMIT %(limit)s

-- get_review_for_update --
-- One of the tenant's reviews with its checks, row-locked (FOR UPDATE OF r).
SELECT r.*, v.checks, COALESCE(r.claimed_until > now(), false) AS claim_live
FROM reviews r JOIN verifications v ON v.id = r.verification_id
WHERE r.id = %(id)s AND r.tenant_id = %(tenant_id)s
FOR UPDATE OF r

-- get_review --
-- One review with its checks; claim_live: someone holds it now.
SELECT r.*, v.checks, COALESCE(r.claimed_until > now(), false) AS claim_live
FROM reviews r JOIN verifications v ON v.id = r.verification_id
WHERE r.id = %(id)s AND r.tenant_id = %(tenant_id)s

-- get_review_photo --
-- A photo the reviewer may see: the review's own evidence, or that of the same tenant's asset
-- its photo resembles (the near-duplicate check's matchAssetId), to compare the two.
SELECT e.* FROM reviews r
JOIN verifications v ON v.id = r.verification_id
JOIN evidence e ON e.tenant_id = r.tenant_id AND e.sha256 = %(sha256)s
    AND (e.verification_id = r.verification_id
         OR e.asset_id::text = v.checks -> 'photo_not_duplicate' ->> 'matchAssetId')
WHERE r.id = %(id)s AND r.tenant_id = %(tenant_id)s
LIMIT 1

-- claim_review --
-- Hold an undecided review that nobody else holds (or whose hold ran out), or renew one's own.
WITH claimed AS (
    UPDATE reviews SET claimed_key = %(key_id)s, claimed_by = %(claimed_by)s,
                       claimed_until = now() + make_interval(secs => %(lease)s)
    WHERE id = %(id)s AND tenant_id = %(tenant_id)s AND status IN ('pending', 'expired')
      AND (claimed_key IS NULL OR claimed_key = %(key_id)s OR claimed_until <= now())
    RETURNING *
)
SELECT c.*, v.checks, true AS claim_live
FROM claimed c JOIN verifications v ON v.id = c.verification_id

-- release_review --
-- Give up one's own hold on an undecided review; no row when not held by this key.
UPDATE reviews SET claimed_key = NULL, claimed_by = NULL, claimed_until = NULL
WHERE id = %(id)s AND tenant_id = %(tenant_id)s AND claimed_key = %(key_id)s
  AND status IN ('pending', 'expired')
RETURNING id

-- decide_review --
-- Approve or reject an undecided review, clearing its hold; no row when it was
-- already decided.
UPDATE reviews SET status = %(status)s, decided_by = %(decided_by)s, note = %(note)s,
                   reason = %(reason)s, decided_at = now(),
                   claimed_key = NULL, claimed_by = NULL, claimed_until = NULL
WHERE id = %(id)s AND status IN ('pending', 'expired')
RETURNING *, false AS claim_live

-- settle_reviewed_verification --
-- The reviewer's outcome becomes the verification's: verified or rejected.
UPDATE verifications SET status = %(status)s, updated_at = now()
WHERE id = %(id)s AND status = 'manual_review'

-- expire_due_reviews --
-- Pending reviews past their deadline become expired (still undecided), a
-- batch at a time; FOR UPDATE SKIP LOCKED: one sweeper per review.
UPDATE reviews SET status = 'expired', expired_at = now()
WHERE id IN (
    SELECT id FROM reviews WHERE status = 'pending' AND due_at <= now()
    ORDER BY due_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING *

-- open_retry_entry_for_update --
-- An asset's open retry-queue entry (pending, retrying or exhausted),
-- row-locked; NULL when it has none.
SELECT * FROM retry_queue
WHERE asset_id = %(asset_id)s AND status IN ('pending', 'retrying', 'exhausted')
FOR UPDATE

-- insert_retry_entry --
-- Queue a failed locker link for retry, due after the delay.
INSERT INTO retry_queue (id, asset_id, tenant_id, locker_ref, operation, saga_id, retry_count,
                         next_retry_at, last_error, status)
VALUES (%(id)s, %(asset_id)s, %(tenant_id)s, %(locker_ref)s, 'link', %(saga_id)s,
        %(retry_count)s, now() + make_interval(secs => %(delay)s), %(last_error)s, %(status)s)

-- update_retry_entry --
-- An asset's open entry after another failed attempt: count, next time, error,
-- status.
UPDATE retry_queue SET retry_count = %(retry_count)s,
                       next_retry_at = now() + make_interval(secs => %(delay)s),
                       last_error = %(last_error)s, status = %(status)s, updated_at = now()
WHERE asset_id = %(asset_id)s AND status IN ('pending', 'retrying', 'exhausted')
RETURNING *

-- start_link_retry --
-- A retried link, before its command goes out, in one statement: the asset's pending or
-- exhausted entry is marked retrying; the locker's maintenance end (NULL when it is not in
-- one) and the device's recorded answer to the command (NULL until it answered).
WITH retrying AS (
    UPDATE retry_queue SET status = 'retrying', updated_at = now()
    WHERE asset_id = %(asset_id)s AND status IN ('pending', 'exhausted')
)
SELECT (SELECT maintenance_until FROM lockers
        WHERE locker_ref = %(locker_ref)s AND maintenance_until > now()) AS maintenance_until,
       (SELECT reply FROM locker_commands
        WHERE command_id = %(command_id)s AND reply IS NOT NULL) AS reply

-- close_retry_entries --
-- Close an asset's open entries (resolved or discarded): no next retry.
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
-- One retry-queue entry by id, any tenant (callers check it); NULL when unknown.
SELECT * FROM retry_queue WHERE id = %(id)s

-- get_retry_entry_for_update --
-- One retry-queue entry by id, row-locked; NULL when unknown.
SELECT * FROM retry_queue WHERE id = %(id)s FOR UPDATE

-- latest_retry_entry --
-- An asset's newest retry-queue entry, open or closed; NULL when none.
SELECT * FROM retry_queue WHERE asset_id = %(asset_id)s ORDER BY created_at DESC LIMIT 1

-- count_open_retry_entries --
-- The backlog for core_dlq_depth, every tenant: open entries by status.
SELECT status, count(*)::integer AS n FROM retry_queue
WHERE status IN ('pending', 'retrying', 'exhausted')
GROUP BY status

-- scrape_backlog --
-- The backlogs an operator is paged on, every tenant, for the scrape-time gauges: sagas due
-- and unclaimed (the claim's own predicate, claim_sagas) and how long the oldest has been
-- claimable, pending reviews and the oldest one's age, unsealed audit rows and the oldest
-- one's age, webhook endpoints by status. Ages are seconds, 0 when there is none.
SELECT
    (SELECT count(*) FROM sagas
     WHERE status IN ('running', 'compensating') AND run_at <= now()
       AND (lease_until IS NULL OR lease_until < now()))::integer AS sagas_due,
    (SELECT COALESCE(extract(epoch FROM now() - min(GREATEST(run_at, lease_until))), 0)
     FROM sagas
     WHERE status IN ('running', 'compensating') AND run_at <= now()
       AND (lease_until IS NULL OR lease_until < now()))::float8 AS oldest_due_s,
    (SELECT count(*) FROM reviews WHERE status = 'pending')::integer AS reviews_pending,
    (SELECT COALESCE(extract(epoch FROM now() - min(created_at)), 0)
     FROM reviews WHERE status = 'pending')::float8 AS oldest_review_s,
    (SELECT count(*) FROM audit_log WHERE seq IS NULL)::integer AS audit_unsealed,
    (SELECT COALESCE(extract(epoch FROM now() - min(at)), 0)
     FROM audit_log WHERE seq IS NULL)::float8 AS oldest_unsealed_s,
    (SELECT count(*) FROM webhook_endpoints WHERE status = 'active')::integer
        AS webhooks_active,
    (SELECT count(*) FROM webhook_endpoints WHERE status = 'disabled')::integer
        AS webhooks_disabled

-- count_open_alerts --
-- Open ops alerts by code and severity, every tenant, with when the latest was last raised
-- (unix seconds), for core_ops_alerts_open.
SELECT code, severity, count(*)::integer AS n, extract(epoch FROM max(last_at))::float8 AS last_at
FROM ops_alerts WHERE resolved_at IS NULL
GROUP BY code, severity

-- due_retry_entries --
-- Pending entries due now whose saga no worker holds, most overdue first.
SELECT r.* FROM retry_queue r JOIN sagas s ON s.id = r.saga_id
WHERE r.status = 'pending' AND r.next_retry_at <= now() AND s.owner IS NULL
ORDER BY r.next_retry_at
LIMIT %(limit)s

-- list_retry_entries --
-- The tenant's retry-queue entries newest first, by status and asset, in
-- keyset pages.
SELECT * FROM retry_queue
WHERE tenant_id = %(tenant_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(asset_id)s::uuid IS NULL OR asset_id = %(asset_id)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (created_at, id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- hold_saga --
-- Park an unowned running saga (run_at 'infinity') so no worker claims it; no row
-- when a process is running it right now.
UPDATE sagas SET run_at = 'infinity', updated_at = now()
WHERE id = %(id)s AND owner IS NULL AND status = 'running'
RETURNING id

-- wake_locker_retries --
-- The lockers are back: their pending entries' sagas are due now, and the entries say so.
WITH woken AS (
    UPDATE sagas s SET run_at = now(), updated_at = now()
    FROM retry_queue r
    WHERE r.saga_id = s.id AND r.locker_ref = ANY(%(locker_refs)s) AND r.status = 'pending'
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
-- When a locker's maintenance window ends; NULL when it is not in one.
SELECT maintenance_until FROM lockers
WHERE locker_ref = %(locker_ref)s AND maintenance_until > now()

-- set_locker_maintenance --
-- Set or clear (NULL) the tenant's locker's maintenance window end.
UPDATE lockers SET maintenance_until = %(until)s
WHERE tenant_id = %(tenant_id)s AND locker_ref = %(locker_ref)s
RETURNING *

-- exhaust_retry_entries --
-- An asset's pending or retrying entries gave up: exhausted, no next retry.
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
-- Resolve the open alerts with these dedup keys (the condition went away).
UPDATE ops_alerts SET resolved_at = now()
WHERE dedup_key = ANY(%(dedup_keys)s) AND resolved_at IS NULL

-- emit_webhook_event --
-- The outbox write, in the caller's transaction: outbox_emit() (migration 0008).
SELECT outbox_emit(%(id)s, %(tenant_id)s, %(type)s, %(data)s)

-- notify_webhooks --
-- Wake the webhook workers (NOTIFY proveniq_work 'webhooks') on commit.
SELECT pg_notify('proveniq_work', 'webhooks')

-- claim_webhook_deliveries --
-- Up to %(limit)s due deliveries to active endpoints (or ones whose worker's lease ran out),
-- the most overdue first, claimed in one statement, each with what it takes to send it;
-- ``attempts`` becomes the number of the attempt being made. Fewer than asked: no more due.
UPDATE webhook_deliveries d
SET status = 'delivering', attempts = d.attempts + 1,
    lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
FROM webhook_endpoints e, webhook_events ev
WHERE d.id IN (
    SELECT c.id FROM webhook_deliveries c JOIN webhook_endpoints ce ON ce.id = c.endpoint_id
    WHERE ce.status = 'active'
      AND ((c.status = 'pending' AND c.next_attempt_at <= now())
           OR (c.status = 'delivering' AND c.lease_until < now()))
    ORDER BY c.next_attempt_at
    LIMIT %(limit)s
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
-- Subscribe a URL to event types with its (sealed) signing secret.
INSERT INTO webhook_endpoints (id, tenant_id, url, events, secret)
VALUES (%(id)s, %(tenant_id)s, %(url)s, %(events)s, %(secret)s)
RETURNING *

-- get_webhook_endpoint --
-- One of the tenant's endpoints; NULL when unknown or another tenant's.
SELECT * FROM webhook_endpoints WHERE id = %(id)s AND tenant_id = %(tenant_id)s

-- lock_webhook_endpoint --
-- The endpoint, row-locked for the caller's transaction: a concurrent delete either waits
-- for it or has already won (no row: "not found").
SELECT * FROM webhook_endpoints WHERE id = %(id)s AND tenant_id = %(tenant_id)s FOR UPDATE

-- plaintext_webhook_secrets --
-- Secrets stored before sealing existed (migration 0011), to seal at start-up.
SELECT id, secret FROM webhook_endpoints WHERE starts_with(secret, 'whsec_') FOR UPDATE

-- seal_webhook_secret --
-- Replace a plaintext secret with its sealed form, only if still plaintext.
UPDATE webhook_endpoints SET secret = %(sealed)s WHERE id = %(id)s AND secret = %(plain)s

-- list_webhook_endpoints --
-- The tenant's endpoints newest first, in keyset pages.
SELECT * FROM webhook_endpoints
WHERE tenant_id = %(tenant_id)s
  AND (%(before_at)s::timestamptz IS NULL
       OR (created_at, id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- delete_webhook_endpoint --
-- Delete one of the tenant's endpoints; no row when unknown.
DELETE FROM webhook_endpoints WHERE id = %(id)s AND tenant_id = %(tenant_id)s
RETURNING *

-- disable_webhook_endpoint --
-- Stop delivering to an active endpoint, with the reason; no row when
-- already disabled.
UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = %(reason)s,
                             disabled_at = now(), updated_at = now()
WHERE id = %(id)s AND status = 'active'
RETURNING *

-- enable_webhook_endpoint --
-- Deliver to a disabled endpoint of the tenant again; no row when it is
-- unknown or active.
UPDATE webhook_endpoints SET status = 'active', disabled_reason = NULL, disabled_at = NULL,
                             updated_at = now()
WHERE id = %(id)s AND tenant_id = %(tenant_id)s AND status = 'disabled'
RETURNING *

-- list_webhook_deliveries --
-- An endpoint's deliveries with their events, newest first, by status, in
-- keyset pages.
SELECT d.*, ev.type, ev.data, ev.created_at AS event_at
FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id
WHERE d.endpoint_id = %(endpoint_id)s
  AND (%(status)s::text IS NULL OR d.status = %(status)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (d.created_at, d.id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY d.created_at DESC, d.id DESC
LIMIT %(limit)s

-- get_webhook_delivery --
-- One delivery of an endpoint with its event; NULL when unknown.
SELECT d.*, ev.type, ev.data, ev.created_at AS event_at
FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id
WHERE d.id = %(id)s AND d.endpoint_id = %(endpoint_id)s

-- list_webhook_attempts --
-- The attempts of several deliveries, by delivery and attempt number.
SELECT * FROM webhook_attempts WHERE delivery_id = ANY (%(ids)s) ORDER BY delivery_id, attempt

-- redeliver_webhook --
-- A new delivery of the same event to the same endpoint, linked to the original.
INSERT INTO webhook_deliveries (id, event_id, endpoint_id, redelivery_of)
SELECT %(id)s, event_id, endpoint_id, id FROM webhook_deliveries WHERE id = %(of)s
RETURNING id

-- Idempotency-Key (api/idempotency.py). The claim inserts the key, or takes over a row
-- that is 24 h old or in flight with a lapsed lease (same route and body only); it returns
-- a row only when this request now owns the key.
-- idempotency_claim --
-- Own an Idempotency-Key: insert it, or take over an expired or abandoned one
-- (see above); the token when this request owns it, no row otherwise.
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
-- A key's stored request and response, whether it expired, and whether its
-- in-flight owner's lease lapsed; NULL when unknown.
SELECT route, request_hash, status, response_status, response_headers, response_body,
       created_at <= now() - make_interval(secs => %(ttl)s) AS expired,
       status = 'in_flight' AND locked_until <= now() AS lease_lapsed
FROM idempotency_keys
WHERE tenant_id = %(tenant_id)s AND key = %(key)s

-- idempotency_complete --
-- Store the response for replay; only the owner (token) of an in-flight key.
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
-- Extend the owner's lease on an in-flight key (a slow request).
UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => %(lease)s)
WHERE tenant_id = %(tenant_id)s AND key = %(key)s AND token = %(token)s
  AND status = 'in_flight'

-- idempotency_release --
-- Forget an in-flight key the owner gave up on, so a retry may run.
DELETE FROM idempotency_keys
WHERE tenant_id = %(tenant_id)s AND key = %(key)s AND token = %(token)s
  AND status = 'in_flight'

-- idempotency_purge --
-- Delete expired keys, a batch at a time, oldest first; SKIP LOCKED.
DELETE FROM idempotency_keys
WHERE (tenant_id, key) IN (
    SELECT tenant_id, key FROM idempotency_keys
    WHERE created_at <= now() - make_interval(secs => %(ttl)s)
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)

-- The console (src/proveniq_core/console): its sessions and the reads behind its pages.

-- console_session_create --
-- A console sign-in: the session id's hash, its API key, CSRF token.
INSERT INTO console_sessions (id_hash, key_id, csrf_token)
VALUES (%(id_hash)s, %(key_id)s, %(csrf_token)s)

-- console_session_touch --
-- The session, if its key is still valid and it was used within the idle timeout; ``touch``
-- marks it used now (a page or an action; a background refresh does not count). The row is
-- rewritten at most every 15 s, not on every photo a page loads.
WITH live AS (
    SELECT s.id_hash, s.key_id, s.csrf_token, k.tenant_id, k.name, k.scopes
    FROM console_sessions s JOIN api_keys k ON k.id = s.key_id
    WHERE s.id_hash = %(id_hash)s AND k.revoked_at IS NULL
      AND s.last_seen_at > now() - make_interval(secs => %(idle)s)
), touched AS (
    UPDATE console_sessions SET last_seen_at = now()
    WHERE id_hash IN (SELECT id_hash FROM live) AND %(touch)s
      AND last_seen_at < now() - interval '15 seconds'
)
SELECT key_id, csrf_token, tenant_id, name, scopes FROM live

-- console_session_delete --
-- Sign out: forget the session.
DELETE FROM console_sessions WHERE id_hash = %(id_hash)s

-- console_session_purge --
-- Forget sessions idle longer than the timeout.
DELETE FROM console_sessions WHERE last_seen_at <= now() - make_interval(secs => %(idle)s)

-- console_review_backlog --
-- The undecided reviews of a tenant: how many, the oldest, the next due, expired and held.
SELECT count(*) AS waiting, min(created_at) AS oldest_at, min(due_at) AS next_due_at,
       count(*) FILTER (WHERE status = 'expired') AS expired,
       count(*) FILTER (WHERE claimed_until > now()) AS held
FROM reviews
WHERE tenant_id = %(tenant_id)s AND status IN ('pending', 'expired')

-- console_reviews_decided_since --
-- How many of the tenant's reviews were approved or rejected since a time.
SELECT count(*) AS n FROM reviews
WHERE tenant_id = %(tenant_id)s AND status IN ('approved', 'rejected')
  AND decided_at >= %(since)s

-- console_review_queue --
-- The undecided reviews in deadline order, with what a reviewer scans for: the asset's
-- name, category and locker, and who holds each.
SELECT r.id, r.asset_id, r.status, r.reasons, r.due_at, r.created_at, r.claimed_by,
       r.claimed_key, r.claimed_until, COALESCE(r.claimed_until > now(), false) AS claim_live,
       a.name, a.category, a.locker_ref
FROM reviews r JOIN assets a ON a.id = r.asset_id
WHERE r.tenant_id = %(tenant_id)s AND r.status IN ('pending', 'expired')
ORDER BY r.due_at, r.id
LIMIT %(limit)s

-- console_review_neighbours --
-- Where a review stands in the deadline-ordered queue: its position, the total, and the
-- next and previous undecided reviews nobody else holds.
WITH me AS (SELECT due_at, id FROM reviews WHERE id = %(id)s AND tenant_id = %(tenant_id)s),
open AS (
    SELECT r.id, r.due_at, r.claimed_key, COALESCE(r.claimed_until > now(), false) AS live
    FROM reviews r
    WHERE r.tenant_id = %(tenant_id)s AND r.status IN ('pending', 'expired')
)
SELECT
    (SELECT count(*) FROM open, me WHERE (open.due_at, open.id) <= (me.due_at, me.id))
        AS position,
    (SELECT count(*) FROM open) AS total,
    (SELECT open.id FROM open, me
     WHERE (open.due_at, open.id) > (me.due_at, me.id)
       AND (NOT open.live OR open.claimed_key = %(key_id)s)
     ORDER BY open.due_at, open.id LIMIT 1) AS next_id,
    (SELECT open.id FROM open, me
     WHERE (open.due_at, open.id) < (me.due_at, me.id)
       AND (NOT open.live OR open.claimed_key = %(key_id)s)
     ORDER BY open.due_at DESC, open.id DESC LIMIT 1) AS previous_id,
    (SELECT open.id FROM open
     WHERE open.id <> %(id)s AND (NOT open.live OR open.claimed_key = %(key_id)s)
     ORDER BY open.due_at, open.id LIMIT 1) AS first_id

-- console_review_of_asset --
-- The tenant's review of an asset; NULL when it has none.
SELECT * FROM reviews WHERE asset_id = %(asset_id)s AND tenant_id = %(tenant_id)s

-- console_verification_of_asset --
-- The tenant's verification of an asset; NULL when it has none.
SELECT * FROM verifications WHERE asset_id = %(asset_id)s AND tenant_id = %(tenant_id)s

-- console_retry_counts --
-- The tenant's retry-queue entries by status: open ones, and closed ones of
-- the last 24 h.
SELECT status, count(*) AS n FROM retry_queue
WHERE tenant_id = %(tenant_id)s
  AND (status IN ('pending', 'retrying', 'exhausted') OR updated_at > now() - interval '24 hours')
GROUP BY status

-- console_held_counts --
-- The tenant's assets held by the failure path (pending_link, link_failed)
-- by status.
SELECT status::text AS status, count(*) AS n FROM assets
WHERE tenant_id = %(tenant_id)s AND status IN ('pending_link', 'link_failed')
GROUP BY status

-- console_alert_counts --
-- Open alerts the tenant sees (its own and system ones) by severity.
SELECT severity, count(*) AS n FROM ops_alerts
WHERE resolved_at IS NULL AND (tenant_id = %(tenant_id)s OR tenant_id IS NULL)
GROUP BY severity

-- console_attention_alerts --
-- Open alerts, the most severe first, then the most recent.
SELECT * FROM ops_alerts
WHERE resolved_at IS NULL AND (tenant_id = %(tenant_id)s OR tenant_id IS NULL)
ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, last_at DESC
LIMIT %(limit)s

-- console_search_assets --
-- Assets newest first, by exact id, locker, name (contains) and status, in pages.
SELECT a.*, v.id AS verification_id, v.status AS verification_status,
       v.reasons AS verification_reasons, v.completed_at AS verification_completed_at
FROM assets a LEFT JOIN verifications v ON v.asset_id = a.id
WHERE a.tenant_id = %(tenant_id)s
  AND (%(status)s::asset_status IS NULL OR a.status = %(status)s::asset_status)
  AND (%(asset_id)s::uuid IS NULL OR a.id = %(asset_id)s::uuid)
  AND (%(locker_ref)s::text IS NULL OR a.locker_ref = %(locker_ref)s)
  AND (%(name)s::text IS NULL OR a.name ILIKE %(name)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (a.created_at, a.id) < (%(before_at)s, %(before_id)s::uuid))
ORDER BY a.created_at DESC, a.id DESC
LIMIT %(limit)s

-- console_held_assets --
-- Assets the failure path holds, the oldest first, with their latest retry-queue entry.
SELECT a.*, q.id AS entry_id, q.status AS entry_status, q.retry_count, q.next_retry_at,
       q.last_error
FROM assets a
LEFT JOIN LATERAL (
    SELECT * FROM retry_queue q WHERE q.asset_id = a.id ORDER BY q.created_at DESC LIMIT 1
) q ON true
WHERE a.tenant_id = %(tenant_id)s AND a.status IN ('pending_link', 'link_failed')
ORDER BY a.updated_at
LIMIT %(limit)s

-- console_entry_reasons --
-- The latest discard reason of each retry-queue entry, from the audit trail.
SELECT DISTINCT ON (entity_id) entity_id, actor, after ->> 'reason' AS reason, at
FROM audit_log
WHERE entity_type = 'retry_entry' AND entity_id = ANY(%(ids)s)
  AND action = 'retry_entry.discarded'
ORDER BY entity_id, id DESC

-- console_asset_audit --
-- The audit rows about an asset: its own, its review's and its retry-queue entries'.
SELECT * FROM audit_log
WHERE (entity_type = 'asset' AND entity_id = %(asset_id)s)
   OR (entity_type = 'review' AND entity_id = ANY(%(review_ids)s))
   OR (entity_type = 'retry_entry' AND entity_id = ANY(%(entry_ids)s))
ORDER BY id

-- console_audit_hashes --
-- The chain hashes at these seqs, to show a row's seal.
SELECT seq, hash FROM audit_log WHERE seq = ANY(%(seqs)s)

-- console_asset_webhooks --
-- The webhook events about an asset, each with its deliveries (none: nobody subscribed).
SELECT e.id AS event_id, e.type, e.created_at AS event_at, d.id AS delivery_id,
       d.endpoint_id, d.status, d.attempts, d.last_status_code, d.last_error,
       d.next_attempt_at, d.finished_at, w.url
FROM webhook_events e
LEFT JOIN webhook_deliveries d ON d.event_id = e.id
LEFT JOIN webhook_endpoints w ON w.id = d.endpoint_id
WHERE e.tenant_id = %(tenant_id)s AND e.data ->> 'assetId' = %(asset_id)s AND e.data ? 'assetId'
ORDER BY e.created_at, d.created_at
LIMIT 200

-- console_evidence_of_asset --
-- The photos of an asset of the tenant: the near-duplicate comparison on a review page.
SELECT e.*, a.name AS asset_name FROM evidence e JOIN assets a ON a.id = e.asset_id
WHERE e.asset_id = %(asset_id)s AND e.tenant_id = %(tenant_id)s
ORDER BY e.created_at, e.sha256

-- asset_trace --
-- The trace context an asset's registration saga started in (``traceparent`` in its data):
-- the work that follows the registration (verification, webhook deliveries) joins its trace.
SELECT s.data->>'traceparent' AS traceparent
FROM assets a JOIN sagas s ON s.id = a.saga_id
WHERE a.id = %(asset_id)s::uuid

-- ask_locker_command --
-- The shadow's asked side: a saga waits on this locker command (recorded when it parks);
-- returns the device's answer when it came first (reply is NULL otherwise).
INSERT INTO locker_commands (command_id, locker_ref, type, asset_id, saga_id, asked_by)
VALUES (%(command_id)s, %(locker_ref)s, %(type)s, %(asset_id)s, %(saga_id)s, %(asked_by)s)
ON CONFLICT (command_id) DO UPDATE
SET type = EXCLUDED.type, asset_id = EXCLUDED.asset_id, saga_id = EXCLUDED.saga_id,
    asked_by = EXCLUDED.asked_by
RETURNING reply

-- report_locker_reply --
-- The shadow's reported side: a device's answer to a command Core recorded, kept once
-- (the first answer wins); returns the saga waiting on it. No row when Core never
-- recorded the command, or already has its answer.
UPDATE locker_commands SET reply = %(reply)s, replied_at = now()
WHERE command_id = %(command_id)s AND locker_ref = %(locker_ref)s AND reply IS NULL
RETURNING saga_id, asset_id, type

-- hand_over_locker_reply --
-- A device's late answer to this process, kept whether or not the park that records the
-- command has committed yet (the first answer wins); returns the saga waiting on it, NULL
-- until a park records one.
INSERT INTO locker_commands (command_id, locker_ref, reply, replied_at)
VALUES (%(command_id)s, %(locker_ref)s, %(reply)s, now())
ON CONFLICT (command_id) DO UPDATE
SET reply = coalesce(locker_commands.reply, EXCLUDED.reply),
    replied_at = coalesce(locker_commands.replied_at, EXCLUDED.replied_at)
WHERE locker_commands.locker_ref = EXCLUDED.locker_ref
RETURNING saga_id, asset_id, type

-- wake_orphaned_asks --
-- Parked sagas waiting on a command whose asking Core process is gone (its answer would go
-- to nobody) fall due now, to ask again from a live process; returns them.
UPDATE sagas s SET run_at = now(), updated_at = now()
FROM locker_commands c
WHERE c.reply IS NULL AND c.asked_by IS NOT NULL AND NOT (c.asked_by = ANY(%(live)s))
  AND c.saga_id = s.id AND s.owner IS NULL AND s.status IN ('running', 'compensating')
  AND s.run_at > now()
RETURNING s.id

-- report_locker_presence --
-- Devices' last reported presence (online/offline), where it changed: two arrays of the same
-- length, one entry per locker (in locker order, so that two writers lock rows alike).
INSERT INTO locker_presence (locker_ref, status)
SELECT * FROM unnest(%(locker_refs)s::text[], %(statuses)s::text[])
ON CONFLICT (locker_ref) DO UPDATE SET status = EXCLUDED.status, reported_at = now()
WHERE locker_presence.status IS DISTINCT FROM EXCLUDED.status

-- locker_presence --
-- The presence a device last reported, and when; no row before its first report.
SELECT status, reported_at FROM locker_presence WHERE locker_ref = %(locker_ref)s

-- locker_shadow_commands --
-- A locker's recorded commands, newest first: what Core asked and what the device answered.
SELECT command_id, type, asset_id, saga_id, asked_at, reply, replied_at FROM locker_commands
WHERE locker_ref = %(locker_ref)s ORDER BY asked_at DESC LIMIT %(limit)s

-- prune_locker_commands --
-- Forget recorded commands asked more than the given number of days ago.
DELETE FROM locker_commands WHERE asked_at < now() - make_interval(days => %(days)s)
