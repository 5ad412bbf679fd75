-- What a session may retrieve from, and what it has read. Forward-only: never edit this file once applied.
-- Both are JSON arrays of strings, stored as TEXT. `labels` is kept sorted and unique, and only ever
-- grows: the broker writes it as the sorted union of what it held and what a retrieval or a tool result
-- added, in the audit writer's transaction, beside the event that says why (RETRIEVAL_DECIDED,
-- TOOL_RESULT_REPORTED). Sessions opened before this migration have neither: empty arrays.

ALTER TABLE sessions ADD COLUMN collections TEXT NOT NULL DEFAULT '[]';
ALTER TABLE sessions ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
