"""Store errors map to retry (StoreUnavailable) or isolate (StoreRejected): never the other way round."""

from __future__ import annotations

import pytest
from neo4j.exceptions import Neo4jError, ServiceUnavailable

from worker.errors import DatabaseMissing, StoreRejected, StoreUnavailable
from worker.stores.neo4j import _map_error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # Concurrent replicas: a deadlock is retried, never dead-letters an event.
        (
            Neo4jError._hydrate_neo4j(code="Neo.TransientError.Transaction.DeadlockDetected", message="x"),
            StoreUnavailable,
        ),
        (ServiceUnavailable("gone"), StoreUnavailable),
        (OSError("reset"), StoreUnavailable),
        (Neo4jError._hydrate_neo4j(code="Neo.ClientError.Statement.SyntaxError", message="x"), StoreRejected),
        (
            Neo4jError._hydrate_neo4j(code="Neo.ClientError.Schema.ConstraintValidationFailed", message="x"),
            StoreRejected,
        ),
        # A missing database is the operator's problem, not the data's: retried, never dead-lettered.
        (
            Neo4jError._hydrate_neo4j(code="Neo.ClientError.Database.DatabaseNotFound", message="x"),
            DatabaseMissing,
        ),
    ],
    ids=["deadlock", "service-unavailable", "socket", "syntax", "constraint", "database-missing"],
)
def test_graph_errors_are_classified(error: Exception, expected: type[Exception]) -> None:
    """Transient classes retry; the data's own faults are rejected (and isolated by the saga)."""
    assert isinstance(_map_error(error), expected)


def test_a_missing_database_is_transient() -> None:
    """The saga retries StoreUnavailable; a missing database must be one, or every event is dead-lettered."""
    assert issubclass(DatabaseMissing, StoreUnavailable)
    assert not issubclass(DatabaseMissing, StoreRejected)


def test_a_value_asyncpg_cannot_encode_is_a_rejection_not_an_outage() -> None:
    """Asyncpg's client-side DataError (e.g. an integer past bigint) is the data's fault: retrying never helps."""
    import asyncpg

    from worker.errors import StoreRejected
    from worker.stores.postgres_errors import map_error

    data_error = asyncpg.exceptions._base.DataError("invalid input for query argument $2: 9223372036854775808")
    assert isinstance(map_error(data_error), StoreRejected)
