"""Store adapters behind the protocols in :mod:`worker.ports`."""
