-- When a link's AST node was missing from the graph at apply time: NULL once attached.
-- Links parked longer than the worker's parked_link_ttl_s are reported as unresolved.
ALTER TABLE gpm_intent_links ADD COLUMN parked_since timestamptz;
CREATE INDEX gpm_intent_links_parked ON gpm_intent_links (parked_since) WHERE parked_since IS NOT NULL;
