"""Versioned SQL migrations: ``NNNN_name.sql`` files applied in order, each once.

Applied under a PostgreSQL advisory lock so that replicas starting together apply each
file exactly once; every applied file's checksum is recorded and an edited file that
was already applied stops the start with a clear error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from worker.errors import ConfigError

log = structlog.get_logger(__name__)
# What asyncpg hands out: a plain connection, or a pool's proxy for one.
Connection = asyncpg.Connection | PoolConnectionProxy
# Any constant works; it only has to be the same for every replica of this service.
MIGRATION_LOCK_KEY = 0x67706D5F6D6967  # "gpm_mig"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """The migrations shipped in ``worker/stores/migrations``, in order."""
    found = []
    for entry in resources.files("worker.stores").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


async def apply_migrations(conn: Connection, migrations: list[Migration]) -> list[Migration]:
    """Apply what is pending and return it; idempotent and safe under concurrency."""
    # The lock comes first: CREATE TABLE IF NOT EXISTS is not atomic under concurrency.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        # Only when missing: even IF NOT EXISTS needs CREATE on the schema, which a worker
        # running with DML rights only (migrations run by a Job as the owner) does not have.
        if await conn.fetchval("SELECT to_regclass('gpm_schema_migrations') IS NULL"):
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS gpm_schema_migrations (
                       version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        applied = {
            r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM gpm_schema_migrations")
        }
        done: list[Migration] = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    msg = (
                        f"migration {migration.version:04d}_{migration.name}.sql was changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                    raise ConfigError(msg)
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO gpm_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration applied", version=migration.version, name=migration.name)
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
