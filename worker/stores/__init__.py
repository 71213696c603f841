"""Store adapters behind the Protocols in :mod:`worker.stores.protocols`."""
