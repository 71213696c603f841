"""Preflight: the servers' versions and the users' rights, checked before anything is written.

Run at every start (worker and library) before the migrations, so a wrong server or a
missing grant stops the start with one report naming everything that is missing, rather
than a first batch failing on it at 3 a.m. ``gpm preflight`` prints the same report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.broker import check_broker, explained
from worker.broker_rights import NOT_REPORTED, READ, WRITE, topic_rights
from worker.config import DEFAULT_TOPICS, KafkaSettings
from worker.errors import GpmError, PreflightError, StoreRejected
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
    # Server settings that slow ingest (GraphBackend.tuning_advice): logged as a warning.
    advice: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks)

    def raise_for_failures(self) -> None:
        """Raise PreflightError listing every failed check."""
        failed = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        if failed:
            raise PreflightError("preflight failed: " + "; ".join(failed))


async def broker_checks(kafka: KafkaSettings) -> list[Check]:
    """The broker: reachable and authenticated, the topics there, the group's right to commit."""
    try:
        await check_broker(kafka)
    except GpmError as exc:
        return [Check("Kafka broker", ok=False, detail=str(exc))]
    who = f" as {kafka.sasl_username}" if kafka.security_protocol.startswith("SASL") else ""
    checks = [Check("Kafka broker", ok=True, detail=f"{kafka.bootstrap_servers} over {kafka.security_protocol}{who}")]
    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id=f"{kafka.client_id}-preflight")
    try:
        async with explained(kafka):
            await admin.start()
        # Listed, not described: describing a missing topic creates it where auto-create is on.
        visible = set(await admin.list_topics())
        checks.append(_topics_check(kafka, visible))
        checks.append(await _topic_rights_check(kafka, visible))
        checks.append(await _group_rights(admin, kafka.group_id))
    except (KafkaError, GpmError) as exc:
        checks.append(Check("Kafka topics and group", ok=False, detail=f"{type(exc).__name__}: {exc}"))
    finally:
        await admin.close()
    return checks


def _consumed(kafka: KafkaSettings, visible: set[str]) -> list[str]:
    """The visible topics the worker's pattern consumes, sorted."""
    pattern = re.compile(kafka.consumed_pattern())
    return sorted(t for t in visible if pattern.match(t))


def _topics_check(kafka: KafkaSettings, visible: set[str]) -> Check:
    """A topic to consume, and a dead-letter topic beside each (with auto-create off, a missing one stalls)."""
    consumed = _consumed(kafka, visible)
    if not consumed:
        creates = ", ".join(DEFAULT_TOPICS)
        detail = f"no topic visible to this user matches GPM_KAFKA__TOPIC_PATTERN (gpm topics ensure creates {creates})"
        return Check("Kafka topics", ok=False, detail=detail)
    missing = [t + kafka.dlq_suffix for t in consumed if t + kafka.dlq_suffix not in visible]
    if missing:
        detail = f"dead-letter topics missing: {', '.join(missing)} (gpm topics ensure --topic T creates them)"
        return Check("Kafka topics", ok=False, detail=detail)
    return Check("Kafka topics", ok=True, detail=f"{', '.join(consumed)}, each with its dead-letter topic")


async def _topic_rights_check(kafka: KafkaSettings, visible: set[str]) -> Check:
    """READ on each consumed topic and WRITE on each dead-letter topic, where the broker reports rights."""
    consumed = _consumed(kafka, visible)
    letters = [t + kafka.dlq_suffix for t in consumed if t + kafka.dlq_suffix in visible]
    rights = await topic_rights(kafka, consumed + letters)
    if rights is None:
        return Check("Kafka topic rights", ok=True, detail="not reported: the broker did not answer Metadata v8")
    reported = {t: ops for t, ops in rights.items() if ops != NOT_REPORTED}
    if not reported:
        return Check("Kafka topic rights", ok=True, detail="not reported by the broker (no authorizer)")
    missing = [f"READ on {t}" for t in consumed if t in reported and not reported[t] & (1 << READ)]
    missing += [f"WRITE on {t}" for t in letters if t in reported and not reported[t] & (1 << WRITE)]
    detail = (
        "missing: " + ", ".join(missing)
        if missing
        else "READ on the consumed topics, WRITE on their dead-letter topics"
    )
    return Check("Kafka topic rights", ok=not missing, detail=detail)


async def _group_rights(admin: AIOKafkaAdminClient, group_id: str) -> Check:
    """Whether the broker lets this user commit the group's offsets (READ on the group), where it says."""
    responses = await admin.describe_consumer_groups([group_id], include_authorized_operations=True)
    group = responses[0].to_object()["groups"][0]
    # Absent below DescribeGroups v3 (tansu answers v0-v2).
    operations = group.get("authorized_operations", NOT_REPORTED)
    if group["error_code"]:
        return Check("Kafka group rights", ok=False, detail=f"group {group_id}: error code {group['error_code']}")
    if operations == NOT_REPORTED:
        return Check("Kafka group rights", ok=True, detail=f"group {group_id}: rights not reported by the broker")
    may_read = bool(operations & (1 << READ))
    detail = f"group {group_id}: " + (
        "may commit offsets" if may_read else "READ on the group missing: offsets cannot be committed"
    )
    return Check("Kafka group rights", ok=may_read, detail=detail)


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
    # Advice, not a failure: a slow setting still stores everything.
    return PreflightReport(checks, await graph.tuning_advice())
