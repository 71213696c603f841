"""SQL migrations on a real PostgreSQL: once each, safe under concurrency, edits refused."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.integration.conftest import Namespace
from worker.errors import ConfigError
from worker.stores.postgres_migrations import Migration, apply_migrations, bundled_migrations

pytestmark = pytest.mark.integration


async def _connect(ns: Namespace) -> asyncpg.Connection:
    return await asyncpg.connect(ns.settings.postgres.dsn.get_secret_value())


async def test_bundled_migrations_apply_once(ns: Namespace) -> None:
    """A second run applies nothing and the tables exist."""
    conn = await _connect(ns)
    try:
        first = await apply_migrations(conn, bundled_migrations())
        second = await apply_migrations(conn, bundled_migrations())
        tables = {
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    finally:
        await conn.close()
    assert [m.version for m in first] == [m.version for m in bundled_migrations()]
    assert second == []
    assert {"gpm_outbox", "gpm_processed_events", "gpm_sources", "gpm_intents", "gpm_intent_links"} <= tables


async def test_concurrent_runners_apply_each_file_once(ns: Namespace) -> None:
    """Replicas starting together: the advisory lock lets exactly one apply each file."""
    conns = [await _connect(ns) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, bundled_migrations()) for c in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM gpm_schema_migrations")
    finally:
        for conn in conns:
            await conn.close()
    assert sorted(len(r) for r in results) == [0, 0, len(bundled_migrations())]
    assert count == len(bundled_migrations())


async def test_an_edited_applied_migration_stops_the_start(ns: Namespace) -> None:
    """Changing an applied file is refused with a message naming it."""
    conn = await _connect(ns)
    try:
        await apply_migrations(conn, [Migration(1, "first", "CREATE TABLE t_first (id int)")])
        with pytest.raises(ConfigError, match=r"0001_first\.sql was changed"):
            await apply_migrations(conn, [Migration(1, "first", "CREATE TABLE t_first (id bigint)")])
    finally:
        await conn.close()
