-- Idempotency keys (docs/architecture.md §3, Stripe semantics): one row per (tenant, Idempotency-Key).
--
-- A row is claimed 'in_flight' by the request that runs the handler, under a lease
-- (``locked_until``) that its owner renews while the handler runs; a request finding an
-- expired lease may take the row over. ``token`` fences the owner: completing, renewing or
-- releasing the row names the token it was claimed with, so a request whose row was taken
-- over cannot overwrite the new owner's result. A 'completed' row holds the response to
-- replay. Rows older than 24 h count as absent; they are taken over in place or purged.
--
-- No foreign key to tenants: the tenant comes from an authenticated key, and a foreign key
-- would take a KEY SHARE lock on the tenant's row on every keyed POST.
CREATE TABLE idempotency_keys (
    tenant_id         text NOT NULL,
    key               text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    route             text NOT NULL,   -- "POST /api/assets": the key is bound to one route
    request_hash      bytea NOT NULL CHECK (octet_length(request_hash) = 32),  -- SHA-256
    token             uuid NOT NULL,
    status            text NOT NULL DEFAULT 'in_flight',
    locked_until      timestamptz,
    response_status   integer,
    response_headers  jsonb,           -- only the headers a replay must repeat
    response_body     bytea,           -- the bytes sent, so a replay is byte-identical
    created_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    PRIMARY KEY (tenant_id, key),
    CONSTRAINT idempotency_keys_state CHECK (
        (status = 'in_flight' AND locked_until IS NOT NULL AND response_status IS NULL)
        OR (status = 'completed' AND locked_until IS NULL AND response_status IS NOT NULL
            AND response_headers IS NOT NULL AND response_body IS NOT NULL)
    )
) WITH (fillfactor = 80);  -- room for the in_flight -> completed update to stay HOT

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
