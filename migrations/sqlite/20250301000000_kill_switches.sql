-- Kill switches, and a `detail` column on audit events (what else an event is about, as JSON text:
-- e.g. the kill switch engaged). Forward-only: never edit this file once applied.

-- One row per switch ever engaged. Released switches stay (with who released them, when and why), so the
-- table is their history; the audit trail holds the hash-chained record of every change.
CREATE TABLE kill_switches (
    id             TEXT    NOT NULL PRIMARY KEY,
    scope          TEXT    NOT NULL, -- GLOBAL, TENANT, AGENT, USER, TOOL, SESSION
    target         TEXT    NOT NULL, -- empty for GLOBAL
    reason         TEXT    NOT NULL,
    engaged_by     TEXT    NOT NULL,
    engaged_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    released_at    INTEGER,
    released_by    TEXT,
    release_reason TEXT,
    -- A release is all three columns or none.
    CHECK ((released_at IS NULL) = (released_by IS NULL)
       AND (released_at IS NULL) = (release_reason IS NULL))
) STRICT;

-- The switches in force (and those due to expire): every broker reads these on each refresh.
CREATE INDEX kill_switches_active ON kill_switches (expires_at) WHERE released_at IS NULL;
-- Listing, newest first.
CREATE INDEX kill_switches_engaged ON kill_switches (engaged_at, id);

-- Nullable: events written before this migration have none, and their hashes do not cover it.
ALTER TABLE audit_events ADD COLUMN detail TEXT;
