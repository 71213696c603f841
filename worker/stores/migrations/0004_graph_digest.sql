-- Re-ingest skips what did not change: the digest of the graph a source's nodes hold, and
-- the version that wrote them (a newer version with the same digest moves source_version only).
ALTER TABLE gpm_sources ADD COLUMN graph_digest bytea;
ALTER TABLE gpm_sources ADD COLUMN graph_version bigint;
UPDATE gpm_sources SET graph_version = source_version;
