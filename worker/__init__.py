"""graph-postgres-manager: Kafka ingestion of AST graphs into a graph store and PostgreSQL."""
