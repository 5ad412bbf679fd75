-- Sessions, remembered tool calls (idempotency keys) and the hash-chained audit trail.
-- Times are microseconds since the Unix epoch (UTC); JSON is stored as TEXT.

CREATE TABLE sessions (
    id              TEXT    NOT NULL PRIMARY KEY,
    agent           TEXT    NOT NULL,
    user_id         TEXT,
    tenant          TEXT,
    tools           TEXT    NOT NULL, -- JSON array of scope strings
    purpose         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    max_tool_calls  INTEGER NOT NULL CHECK (max_tool_calls >= 0),
    tool_calls_used INTEGER NOT NULL DEFAULT 0 CHECK (tool_calls_used >= 0),
    closed_at       INTEGER
) STRICT;

CREATE INDEX sessions_agent ON sessions (agent);

-- One row per remembered (session, agent, call_id): a retried call replays its first decision.
CREATE TABLE tool_calls (
    session_id       TEXT   NOT NULL,
    agent            TEXT   NOT NULL,
    call_id          TEXT   NOT NULL,
    arguments_digest TEXT   NOT NULL,
    decision         TEXT   NOT NULL, -- JSON of the domain `Decision`
    recorded_at      INTEGER NOT NULL,
    PRIMARY KEY (session_id, agent, call_id)
) STRICT, WITHOUT ROWID;

-- Append-only: the broker never updates or deletes an event; seq is assigned by the writer under the
-- chain lock (1, 2, 3, ...) and each row's hash covers its content, its seq and its predecessor's hash.
CREATE TABLE audit_events (
    seq                INTEGER NOT NULL PRIMARY KEY,
    event_id           TEXT    NOT NULL UNIQUE,
    time               INTEGER NOT NULL,
    kind               TEXT    NOT NULL,
    agent              TEXT    NOT NULL,
    user_id            TEXT,
    session_id         TEXT,
    decision_id        TEXT,
    tool               TEXT,
    call_id            TEXT,
    outcome            TEXT,
    reasons            TEXT    NOT NULL, -- JSON array of the domain `Reason`
    policy_version     TEXT,
    arguments_digest   TEXT,
    arguments_redacted TEXT,
    prev_hash          TEXT    NOT NULL,
    hash               TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_events_session ON audit_events (session_id, seq);
CREATE INDEX audit_events_agent ON audit_events (agent, seq);
CREATE INDEX audit_events_tool ON audit_events (tool, seq);
CREATE INDEX audit_events_time ON audit_events (time);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
