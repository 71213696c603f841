"""The saga/outbox coordinator that applies batches to both stores."""
