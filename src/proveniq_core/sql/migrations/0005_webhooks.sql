-- Webhooks (docs/architecture.md §7): endpoints, the transactional outbox, deliveries and their log.
--
-- An event is written by ``webhooks.outbox.emit`` in the transaction of the state change it
-- reports, together with one delivery per active endpoint of the tenant subscribed to its
-- type; nothing is written when no endpoint listens. Workers claim due deliveries with
-- FOR UPDATE SKIP LOCKED under a lease; ``attempts`` (the attempt being made) fences the
-- worker that records the outcome. Every attempt appends one row to ``webhook_attempts``.

CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    url              text NOT NULL CHECK (url ~ '^https?://' AND char_length(url) <= 2083),
    events           text[] NOT NULL CHECK (cardinality(events) > 0),
    secret           text NOT NULL CHECK (secret LIKE 'whsec\_%'),  -- needed to sign: not hashed
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_reason  text,
    disabled_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'disabled') = (disabled_at IS NOT NULL))
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at DESC, id DESC);

-- The outbox. Its id is the message id every receiver sees as ``webhook-id``. No foreign key
-- to tenants: it would take a KEY SHARE lock on the tenant's row in every state change.
CREATE TABLE webhook_events (
    id          uuid PRIMARY KEY,
    tenant_id   text NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One message to one endpoint, with its retry state. A manual redelivery is a new row for the
-- same event and endpoint (``redelivery_of`` names the one it repeats).
CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY,
    event_id          uuid NOT NULL REFERENCES webhook_events (id),
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    lease_until       timestamptz,
    last_status_code  integer,
    last_error        text,
    redelivery_of     uuid REFERENCES webhook_deliveries (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CHECK ((status = 'delivering') = (lease_until IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (lease_until)
    WHERE status = 'delivering';
CREATE INDEX webhook_deliveries_endpoint
    ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

-- The delivery log: one row per HTTP attempt.
CREATE TABLE webhook_attempts (
    id            uuid PRIMARY KEY,
    delivery_id   uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL CHECK (attempt >= 1),
    attempted_at  timestamptz NOT NULL,
    duration_ms   double precision NOT NULL CHECK (duration_ms >= 0),
    status_code   integer,         -- null: no HTTP answer (connection error, timeout)
    error         text,            -- null: delivered
    UNIQUE (delivery_id, attempt)
);
