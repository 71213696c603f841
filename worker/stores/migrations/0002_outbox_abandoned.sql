-- 'abandoned': a batch interrupted by a crash or a lost partition. Its offsets were never
-- committed, so its events are re-read and applied (idempotently) under a new batch.
ALTER TABLE gpm_outbox DROP CONSTRAINT gpm_outbox_state_check;
ALTER TABLE gpm_outbox ADD CONSTRAINT gpm_outbox_state_check
    CHECK (state IN ('pending', 'applied', 'compensated', 'failed', 'abandoned'));
