"""Fault tests share the integration fixtures (real services, one namespace per test)."""

from tests.integration.conftest import ns, stack

__all__ = ["ns", "stack"]
