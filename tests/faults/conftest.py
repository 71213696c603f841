"""Fault tests share the integration fixtures (real services, one namespace per test)."""

from tests.integration.conftest import falkordb_server, ns, stack

__all__ = ["falkordb_server", "ns", "stack"]
