-- The failure path: the retry queue (the DLQ) and locker maintenance.

-- One entry per deferred hardware operation. It is written in the transaction that parks
-- the saga (the partial commit); the saga's run_at is the timer, next_retry_at mirrors it.
CREATE TABLE retry_queue (
    id              uuid PRIMARY KEY,
    asset_id        uuid NOT NULL REFERENCES assets (id),
    tenant_id       text NOT NULL REFERENCES tenants (id),
    locker_ref      text NOT NULL,
    operation       text NOT NULL CHECK (operation IN ('link')),
    saga_id         uuid NOT NULL REFERENCES sagas (id),
    retry_count     integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    next_retry_at   timestamptz,
    last_error      jsonb,
    status          text NOT NULL CHECK (status IN
                       ('pending', 'retrying', 'exhausted', 'resolved', 'discarded')),
    first_error_at  timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz
);
CREATE UNIQUE INDEX retry_queue_open ON retry_queue (asset_id, operation)
    WHERE status IN ('pending', 'retrying', 'exhausted');
CREATE INDEX retry_queue_due ON retry_queue (next_retry_at) WHERE status = 'pending';
CREATE INDEX retry_queue_locker ON retry_queue (locker_ref) WHERE status = 'pending';
CREATE INDEX retry_queue_recent ON retry_queue (created_at DESC, id DESC);

-- A locker in maintenance: links to it are deferred until then, without counting as failures.
ALTER TABLE lockers ADD COLUMN maintenance_until timestamptz;
