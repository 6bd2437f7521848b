-- Verify (docs/architecture.md §5): what each photo showed, and the human review of uncertain outcomes.

-- Per photo: its perceptual hash (64-bit pHash as a signed bigint; NULL if it does not decode),
-- and where and when the device says it was taken. ``content_type`` is detected from the bytes.
ALTER TABLE evidence
    ADD COLUMN phash        bigint,
    ADD COLUMN captured_at  timestamptz,
    ADD COLUMN lat          double precision,
    ADD COLUMN lon          double precision,
    ADD COLUMN accuracy_m   double precision;

-- One review per verification that ended manual_review. 'pending' until a reviewer decides;
-- past ``due_at`` undecided it becomes 'expired' (escalated with an ops alert) and may still
-- be decided. 'approved' and 'rejected' are final.
CREATE TABLE reviews (
    id               uuid PRIMARY KEY,
    verification_id  uuid NOT NULL UNIQUE REFERENCES verifications (id),
    asset_id         uuid NOT NULL REFERENCES assets (id),
    tenant_id        text NOT NULL REFERENCES tenants (id),
    status           text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'expired', 'approved', 'rejected')),
    reasons          jsonb NOT NULL DEFAULT '[]',
    due_at           timestamptz NOT NULL,
    expired_at       timestamptz,
    decided_by       text,
    note             text CHECK (char_length(note) <= 2000),
    decided_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IN ('approved', 'rejected')) = (decided_at IS NOT NULL)),
    CHECK (status <> 'expired' OR expired_at IS NOT NULL)
);
CREATE INDEX reviews_queue ON reviews (tenant_id, created_at, id);
CREATE INDEX reviews_due ON reviews (due_at) WHERE status = 'pending';
