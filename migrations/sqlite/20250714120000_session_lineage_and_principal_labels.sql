-- Session lineage, and taint labels that follow an agent's principal from session to session.
-- Forward-only: never edit this file once applied.

-- The sessions this one descends from, nearest first (its parent, the parent's parent, ...), as a JSON
-- array of ids: a SESSION kill switch on any of them stops this session too. Fixed at opening. Sessions
-- opened before this migration have none.
ALTER TABLE sessions ADD COLUMN ancestors TEXT NOT NULL DEFAULT '[]';

-- The open sessions of one (agent, user): where a label one of them gains is copied at once.
CREATE INDEX sessions_open_by_principal ON sessions (agent, user_id, expires_at) WHERE closed_at IS NULL;

-- The labels an (agent, user, tenant) has held in any of its sessions: what was read is in the agent's
-- context, whichever session it opens next. A new session of the principal starts with every label
-- whose held_until is less than `session.taint_carry_over` ago. held_until only grows: the latest
-- expiry (or later report time) of a session that held the label. Rows are state, not audit: the
-- labels' events are in the trail.
CREATE TABLE principal_labels (
    agent      TEXT   NOT NULL,
    user_id    TEXT   NOT NULL, -- '' for sessions acting for no user
    tenant     TEXT   NOT NULL, -- '' for tokens naming no tenant
    label      TEXT   NOT NULL,
    held_until INTEGER NOT NULL,
    PRIMARY KEY (agent, user_id, tenant, label)
) STRICT, WITHOUT ROWID;

-- What sessions opened before this migration read is carried too.
INSERT INTO principal_labels (agent, user_id, tenant, label, held_until)
SELECT s.agent, COALESCE(s.user_id, ''), COALESCE(s.tenant, ''), l.value, MAX(s.expires_at)
FROM sessions s, json_each(s.labels) l
GROUP BY s.agent, COALESCE(s.user_id, ''), COALESCE(s.tenant, ''), l.value;
