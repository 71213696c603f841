-- When each (topic, partition) last had an event applied, one row a partition: what
-- `gpm status` and the last-applied gauge read, instead of a scan of the whole ledger.
CREATE TABLE gpm_partition_progress (
    topic            text NOT NULL,
    kafka_partition  integer NOT NULL,
    last_applied_at  timestamptz NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);
INSERT INTO gpm_partition_progress (topic, kafka_partition, last_applied_at)
    SELECT topic, kafka_partition, max(processed_at) FROM gpm_processed_events GROUP BY 1, 2;

-- Retention removes the oldest rows first, a chunk at a time, through these.
CREATE INDEX gpm_processed_events_age ON gpm_processed_events (processed_at);
CREATE INDEX gpm_outbox_finished_age ON gpm_outbox (updated_at) WHERE state IN ('applied', 'abandoned');
