-- 'resolved': a compensated or failed batch an operator has dealt with (`gpm outbox resolve`).
-- The row keeps its error, gains the operator's note, and is then pruned by retention like
-- an applied one: without it, every rewound batch's row stayed for ever.
ALTER TABLE gpm_outbox DROP CONSTRAINT gpm_outbox_state_check;
ALTER TABLE gpm_outbox ADD CONSTRAINT gpm_outbox_state_check
    CHECK (state IN ('pending', 'applied', 'compensated', 'failed', 'abandoned', 'resolved'));
ALTER TABLE gpm_outbox ADD COLUMN resolution text;

-- Resolved rows are history, not work: out of the unfinished rows' index (what `gpm status`
-- and /metrics count), into the finished rows' one (what retention walks).
DROP INDEX gpm_outbox_unfinished;
CREATE INDEX gpm_outbox_unfinished ON gpm_outbox (state, created_at) WHERE state NOT IN ('applied', 'resolved');
DROP INDEX gpm_outbox_finished_age;
CREATE INDEX gpm_outbox_finished_age ON gpm_outbox (updated_at) WHERE state IN ('applied', 'abandoned', 'resolved');
