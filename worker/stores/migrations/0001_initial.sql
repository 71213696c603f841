-- The saga log: one row per batch, written 'pending' before the graph import.
CREATE TABLE gpm_outbox (
    batch_id     uuid PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('pending', 'applied', 'compensated', 'failed')),
    positions    jsonb NOT NULL,
    event_ids    uuid[] NOT NULL,
    row_count    integer NOT NULL,
    attempts     integer NOT NULL DEFAULT 1,
    last_error   text,
    graph_stats  jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gpm_outbox_unfinished ON gpm_outbox (state, created_at) WHERE state <> 'applied';

-- Every event id ever processed, and what became of it: the exactly-once ledger.
CREATE TABLE gpm_processed_events (
    event_id      uuid PRIMARY KEY,
    batch_id      uuid NOT NULL,
    outcome       text NOT NULL,
    topic         text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset  bigint NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

-- The source registry: the applied version of each source file (tombstones kept).
CREATE TABLE gpm_sources (
    source_id      text PRIMARY KEY,
    source_version bigint NOT NULL,
    deleted        boolean NOT NULL DEFAULT false,
    node_count     integer NOT NULL DEFAULT 0,
    edge_count     integer NOT NULL DEFAULT 0,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    event_id       uuid NOT NULL,
    producer       text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gpm_intents (
    intent_id      uuid PRIMARY KEY,
    source_version bigint NOT NULL,
    deleted        boolean NOT NULL DEFAULT false,
    link_count     integer NOT NULL DEFAULT 0,
    event_id       uuid NOT NULL,
    occurred_at    timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gpm_intent_links (
    intent_id  uuid NOT NULL REFERENCES gpm_intents (intent_id) ON DELETE CASCADE,
    source_id  text NOT NULL,
    node_id    text NOT NULL,
    PRIMARY KEY (intent_id, source_id, node_id)
);
CREATE INDEX gpm_intent_links_target ON gpm_intent_links (source_id, node_id);
