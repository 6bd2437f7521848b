-- The device shadow (locker/shadow.py): per locker, the commands Core is still waiting on
-- (asked) and what the device answered them (reported), and the device's last reported
-- presence. A command is recorded when a saga parks on it, so an answer that comes after
-- the command's timeout, or to another process, or after a restart, is kept as a fact and
-- its saga adopts it instead of the ledger waiting for the next retry. A late reply may be
-- kept before Core records what it asked (the park is still being written): its type,
-- asset and saga are then filled in by the park.
CREATE TABLE locker_commands (
    command_id  text PRIMARY KEY CHECK (length(command_id) BETWEEN 1 AND 255),
    locker_ref  text NOT NULL,
    type        text,
    asset_id    uuid,
    saga_id     uuid,
    asked_by    text,          -- the Core process whose replyTo the device answers
    asked_at    timestamptz NOT NULL DEFAULT now(),
    reply       jsonb CHECK (reply IS NULL OR jsonb_typeof(reply) = 'object'),
    replied_at  timestamptz,
    CHECK ((reply IS NULL) = (replied_at IS NULL))
);
CREATE INDEX locker_commands_locker ON locker_commands (locker_ref, asked_at DESC);
CREATE INDEX locker_commands_asked ON locker_commands (asked_at);
CREATE INDEX locker_commands_unanswered ON locker_commands (asked_by) WHERE reply IS NULL;

-- The presence each device last reported: telemetry, not a change anyone made, so it is
-- kept beside the audited lockers table rather than in it.
CREATE TABLE locker_presence (
    locker_ref  text PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('online', 'offline')),
    reported_at timestamptz NOT NULL DEFAULT now()
);
