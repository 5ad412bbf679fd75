-- Tenancy and separation of duties. Forward-only: never edit this file once applied.

-- An approval belongs to its session's tenant (NULL: a session without one), so listings filter in the
-- database. Approvals asked before this migration take their session's.
ALTER TABLE approvals ADD COLUMN tenant TEXT;
UPDATE approvals SET tenant = (SELECT s.tenant FROM sessions s WHERE s.id = approvals.session_id);
-- One tenant's approvals, newest request first (the listing's order and page token).
CREATE INDEX approvals_tenant ON approvals (tenant, request_seq);

-- The person who voted, from the configured person claim, as the token said it (compared normalised by
-- the broker). NULL on votes cast before: the approver's subject was then the only identity.
ALTER TABLE approval_votes ADD COLUMN person TEXT;

-- Audit listings of one tenant read its sessions' events.
CREATE INDEX sessions_tenant ON sessions (tenant);
