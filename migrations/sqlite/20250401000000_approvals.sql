-- Human approvals and their votes. Forward-only: never edit this file once applied.
-- Rows here are state, not audit: every change to them is recorded in the hash-chained audit trail
-- (APPROVAL_* events) in the same transaction.

CREATE TABLE approvals (
    id                 TEXT   NOT NULL PRIMARY KEY,
    -- The seq of its APPROVAL_REQUESTED event: the listing order (newest first) and its page token.
    request_seq        INTEGER NOT NULL UNIQUE,
    status             TEXT   NOT NULL
        CHECK (status IN ('PENDING', 'APPROVED', 'DENIED', 'EXPIRED', 'CANCELLED')),
    session_id         TEXT   NOT NULL,
    agent              TEXT   NOT NULL,
    user_id            TEXT,
    tool               TEXT   NOT NULL,
    call_id            TEXT   NOT NULL,
    decision_id        TEXT   NOT NULL, -- the PENDING_APPROVAL decision that asked
    arguments_redacted TEXT   NOT NULL, -- what approvers see
    arguments_digest   TEXT   NOT NULL, -- SHA-256 of the canonical arguments: the approval covers these only
    -- The canonical unredacted arguments, so the broker can re-check policies when the approved call runs.
    -- Kept only while the approval can still be used: NULL once denied, expired, cancelled or consumed.
    arguments          TEXT,
    requirements       TEXT   NOT NULL, -- JSON array of the domain `Requirement`
    reasons            TEXT   NOT NULL, -- JSON array of the domain `Reason`
    requested_at       INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    consumed_at        INTEGER,
    consumed_by        TEXT,             -- the ALLOW decision that used it
    updated_at         INTEGER NOT NULL,  -- last change, for watchers
    CHECK ((consumed_at IS NULL) = (consumed_by IS NULL)),
    CHECK (consumed_at IS NULL OR status = 'APPROVED'),
    CHECK (arguments IS NULL OR (status IN ('PENDING', 'APPROVED') AND consumed_at IS NULL))
) STRICT;

-- Pending approvals (and any status), oldest first; the expiry sweep.
CREATE INDEX approvals_status ON approvals (status, requested_at);
-- Watchers and waiters polling for changes.
CREATE INDEX approvals_updated ON approvals (updated_at);

-- One row per approver and approval: the same approver counts once.
CREATE TABLE approval_votes (
    approval_id TEXT   NOT NULL REFERENCES approvals (id),
    approver    TEXT   NOT NULL,
    groups      TEXT   NOT NULL, -- JSON array: the groups the approver's token carried when voting
    vote        TEXT   NOT NULL CHECK (vote IN ('APPROVE', 'DENY')),
    comment     TEXT   NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (approval_id, approver)
) STRICT, WITHOUT ROWID;
