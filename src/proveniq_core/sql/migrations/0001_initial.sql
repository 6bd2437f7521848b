-- Tenants, API keys, lockers, assets, audit, sagas, verifications, evidence.

CREATE TABLE tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL REFERENCES tenants (id),
    name         text NOT NULL DEFAULT '',
    secret_hash  bytea NOT NULL,
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE TABLE lockers (
    id          uuid PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    locker_ref  text NOT NULL UNIQUE CHECK (locker_ref ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    site_lat    double precision NOT NULL CHECK (site_lat BETWEEN -90 AND 90),
    site_lon    double precision NOT NULL CHECK (site_lon BETWEEN -180 AND 180),
    geofence_m  double precision NOT NULL CHECK (geofence_m > 0 AND geofence_m <= 100000),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lockers_tenant ON lockers (tenant_id, locker_ref);

CREATE TYPE asset_status AS ENUM (
    'pending', 'pending_link', 'link_failed', 'linked',
    'verified', 'rejected', 'manual_review', 'compensated'
);

-- The legal transitions of the asset state machine; a trigger refuses the rest.
CREATE TABLE asset_transitions (
    from_status  asset_status NOT NULL,
    to_status    asset_status NOT NULL,
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO asset_transitions (from_status, to_status) VALUES
    ('pending', 'linked'), ('pending', 'pending_link'), ('pending', 'link_failed'),
    ('pending', 'compensated'),
    ('pending_link', 'linked'), ('pending_link', 'link_failed'), ('pending_link', 'compensated'),
    ('link_failed', 'pending_link'), ('link_failed', 'linked'), ('link_failed', 'compensated'),
    ('linked', 'verified'), ('linked', 'rejected'), ('linked', 'manual_review'),
    ('linked', 'pending'),
    ('manual_review', 'verified'), ('manual_review', 'rejected');

CREATE TABLE assets (
    id          uuid PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    category    text NOT NULL CHECK (category ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    locker_ref  text NOT NULL REFERENCES lockers (locker_ref),
    locker_id   text,
    status      asset_status NOT NULL DEFAULT 'pending',
    version     integer NOT NULL DEFAULT 1,
    saga_id     uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assets_tenant_page ON assets (tenant_id, created_at DESC, id DESC);
CREATE INDEX assets_tenant_status ON assets (tenant_id, status, created_at DESC, id DESC);

CREATE FUNCTION assets_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM asset_transitions
        WHERE from_status = OLD.status AND to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'illegal asset transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'asset_transition';
    END IF;
    IF NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id THEN
        RAISE EXCEPTION 'asset identity is immutable' USING ERRCODE = 'check_violation';
    END IF;
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER assets_guard_transition BEFORE UPDATE ON assets
    FOR EACH ROW EXECUTE FUNCTION assets_guard_transition();

-- Audit: append-only, hash-chained. Rows are inserted unsealed (seq, prev_hash, hash NULL)
-- in the transaction of the state change; the sealer assigns seq and the chain hash once.
-- The only UPDATE allowed is that sealing; DELETE and TRUNCATE are refused.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    tenant_id    text,
    actor        text NOT NULL,
    action       text NOT NULL,
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    before       jsonb,
    after        jsonb,
    request_id   text,
    saga_id      uuid,
    seq          bigint UNIQUE,
    prev_hash    text,
    hash         text
);
CREATE INDEX audit_unsealed ON audit_log (id) WHERE seq IS NULL;
CREATE INDEX audit_entity ON audit_log (entity_type, entity_id, id);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.seq IS NULL AND NEW.seq IS NOT NULL AND NEW.hash IS NOT NULL
       AND (to_jsonb(NEW) - 'seq' - 'prev_hash' - 'hash')
           = (to_jsonb(OLD) - 'seq' - 'prev_hash' - 'hash') THEN
        RETURN NEW;  -- sealing, once
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- Sagas and their step checkpoints, keyed (saga_id, step_index, phase).
CREATE TABLE sagas (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    tenant_id    text,
    status       text NOT NULL CHECK (status IN
                    ('running', 'completed', 'compensating', 'compensated',
                     'compensation_failed', 'failed')),
    input        jsonb NOT NULL,
    data         jsonb NOT NULL DEFAULT '{}',
    error        jsonb,
    owner        text,
    lease_until  timestamptz,
    run_at       timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX sagas_recent ON sagas (created_at DESC);
CREATE INDEX sagas_claimable ON sagas (lease_until) WHERE status IN ('running', 'compensating');

CREATE TABLE saga_steps (
    saga_id      uuid NOT NULL REFERENCES sagas (id),
    step_index   integer NOT NULL,
    phase        text NOT NULL CHECK (phase IN ('execute', 'compensate')),
    name         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    attempts     integer NOT NULL DEFAULT 1,
    output       jsonb,
    error        jsonb,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    PRIMARY KEY (saga_id, step_index, phase)
);

CREATE TABLE verifications (
    id            uuid PRIMARY KEY,
    asset_id      uuid NOT NULL UNIQUE REFERENCES assets (id),
    tenant_id     text NOT NULL REFERENCES tenants (id),
    status        text NOT NULL CHECK (status IN
                     ('queued', 'collecting', 'verified', 'rejected', 'manual_review',
                      'cancelled', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    run_at        timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    reasons       jsonb NOT NULL DEFAULT '[]',
    checks        jsonb NOT NULL DEFAULT '{}',
    evidence      jsonb,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);
CREATE INDEX verifications_due ON verifications (run_at) WHERE status IN ('queued', 'collecting');

CREATE TABLE evidence (
    id               uuid PRIMARY KEY,
    verification_id  uuid NOT NULL REFERENCES verifications (id),
    asset_id         uuid NOT NULL REFERENCES assets (id),
    tenant_id        text NOT NULL REFERENCES tenants (id),
    kind             text NOT NULL CHECK (kind IN ('photo')),
    sha256           text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content_type     text NOT NULL,
    size_bytes       integer NOT NULL CHECK (size_bytes >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (verification_id, sha256)
);
CREATE INDEX evidence_asset ON evidence (asset_id);
CREATE INDEX evidence_sha ON evidence (sha256);

-- Wake workers when work becomes due; polling covers a missed notification.
CREATE FUNCTION notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('proveniq_work', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER verifications_notify AFTER INSERT ON verifications
    FOR EACH ROW EXECUTE FUNCTION notify_work();
