"""Preflight: the servers' versions and the users' rights, checked before anything is written.

Run at every start (worker and library) before the migrations, so a wrong server or a
missing grant stops the start with one report naming everything that is missing, rather
than a first batch failing on it at 3 a.m. ``gpm preflight`` prints the same report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.errors import PreflightError, StoreRejected
from worker.ports import GraphBackend
from worker.snapshot.dump import TABLES
from worker.stores.postgres import PostgresRelationalStore
from worker.stores.postgres_migrations import bundled_migrations

POSTGRES_MIN_VERSION_NUM = 150000
_NEO4J_VERSION = re.compile(r"Neo4j/(\d+)\.(\d+)")
_FALKORDB_VERSION = re.compile(r"^FalkorDB/(\d+)\.")
FALKORDB_MIN_MAJOR = 4  # range indexes and unique constraints as the adapter uses them
# Neo4j numbers its releases by year since 5.26 (2025.01, ...): those speak the 5.x protocol and Cypher.
_CALVER_FROM = 2025


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class PreflightReport:
    """Every check's outcome."""

    checks: list[Check]

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks)

    def raise_for_failures(self) -> None:
        """Raise PreflightError listing every failed check."""
        failed = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        if failed:
            raise PreflightError("preflight failed: " + "; ".join(failed))


def graph_version_ok(agent: str) -> bool:
    """Neo4j 5.x or a calendar-versioned successor, or FalkorDB 4 and newer.

    Other Bolt servers must say they are Neo4j 5 compatible.
    """
    if falkordb := _FALKORDB_VERSION.match(agent):
        return int(falkordb.group(1)) >= FALKORDB_MIN_MAJOR
    match = _NEO4J_VERSION.search(agent)
    if match is None:
        return False
    major = int(match.group(1))
    return major == 5 or major >= _CALVER_FROM  # noqa: PLR2004 - the supported major


async def run_preflight(relational: PostgresRelationalStore, graph: GraphBackend) -> PreflightReport:
    """Check both stores; a store that cannot be reached raises StoreUnavailable (retried at start)."""
    facts = await relational.preflight_facts([t for t, _ in TABLES], [m.version for m in bundled_migrations()])
    checks = [
        Check(
            "PostgreSQL version",
            facts["version_num"] >= POSTGRES_MIN_VERSION_NUM,
            f"{facts['version']} (15 or newer needed)",
        ),
        Check(
            "PostgreSQL schema rights",
            facts["can_create"] or not facts["pending"],
            f"user {facts['user']} "
            + ("may create tables" if facts["can_create"] else "may not create tables in its schema")
            + (f"; migrations pending: {facts['pending']}" if facts["pending"] else "; no migration pending"),
        ),
        Check(
            "PostgreSQL table rights",
            not facts["denied"],
            f"SELECT, INSERT, UPDATE, DELETE missing on {facts['denied']}" if facts["denied"] else "granted",
        ),
    ]
    agent = await graph.server_agent()
    checks.append(Check("graph server version", graph_version_ok(agent), f"{agent} (Neo4j 5.x or FalkorDB 4+ needed)"))
    try:
        await graph.probe_write()
    except StoreRejected as exc:
        checks.append(Check("graph write rights", ok=False, detail=str(exc)))
    else:
        checks.append(Check("graph write rights", ok=True, detail="a write was made and undone"))
    return PreflightReport(checks)
