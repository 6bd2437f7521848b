-- Signed audit checkpoints: each one Core signed (ledger/checkpoints.py). The copies that
-- prove anything live outside the database (the checkpoint files and the audit.checkpoint
-- webhook event); these rows let the workers take one checkpoint per interval between them
-- and resume verifying the chain from the last one instead of from its start.
CREATE TABLE audit_checkpoints (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq        bigint NOT NULL CHECK (seq > 0),
    head_hash  text NOT NULL,
    key_id     text NOT NULL,
    signed_at  timestamptz NOT NULL,
    signature  text NOT NULL
);
