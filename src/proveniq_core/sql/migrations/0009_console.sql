-- The console (docs/console.md): review claims and reason codes, alert acknowledgement,
-- and the console's server-side sessions.

-- A reviewer holds a review while working it: claimed_key (the API key) until claimed_until;
-- another key may not claim or decide it meanwhile. An expired claim is nobody's.
-- ``reason`` is the decision's reason code (one of the configured list for its outcome).
ALTER TABLE reviews
    ADD COLUMN claimed_key    text,
    ADD COLUMN claimed_by     text,
    ADD COLUMN claimed_until  timestamptz,
    ADD COLUMN reason         text CHECK (char_length(reason) <= 64),
    ADD CONSTRAINT reviews_claim CHECK ((claimed_key IS NULL) = (claimed_until IS NULL));

-- An operator says "I have seen it" (acknowledged) or "it is dealt with" (resolved). Core
-- itself resolves an alert when what raised it is settled (resolved_by NULL then).
ALTER TABLE ops_alerts
    ADD COLUMN acknowledged_at  timestamptz,
    ADD COLUMN acknowledged_by  text,
    ADD COLUMN resolved_by      text;
CREATE INDEX ops_alerts_open_severity ON ops_alerts (severity) WHERE resolved_at IS NULL;

-- A signed-in person: the key they signed in with, the CSRF token of their forms, and when
-- they last did something (idle sessions end). Only a SHA-256 of the cookie is stored.
CREATE TABLE console_sessions (
    id_hash       bytea PRIMARY KEY,
    key_id        text NOT NULL REFERENCES api_keys (id),
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_sessions_seen ON console_sessions (last_seen_at);

-- The asset page lists the webhook events about one asset.
CREATE INDEX webhook_events_asset ON webhook_events (tenant_id, (data ->> 'assetId'))
    WHERE data ? 'assetId';
-- The review queue's counts per tenant (backlog, oldest) without scanning decided reviews.
CREATE INDEX reviews_open ON reviews (tenant_id, due_at) WHERE status IN ('pending', 'expired');
