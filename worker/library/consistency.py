"""The consistency report of both stores, and its repair: what ``gpm check`` runs.

The registry (PostgreSQL) is the system of record: what the graph holds is compared with
it, and a repair brings the graph back to it, or marks a source for the next replay.
"""

from __future__ import annotations

import asyncio

from worker.library.records import ConsistencyReport
from worker.ports import GraphBackend
from worker.stores.postgres import PostgresRelationalStore


async def find_inconsistencies(
    relational: PostgresRelationalStore, graph: GraphBackend, stuck_after_s: float
) -> ConsistencyReport:
    """What differs between the registry and the graph, parked links, and outbox rows stuck 'pending'."""
    graph_rows, graph_intents, registry_rows, registry_intents, parked, stuck = await asyncio.gather(
        graph.query(
            "MATCH (n:AstNode) RETURN n.source_id AS source_id, count(n) AS nodes, "
            "collect(DISTINCT n.source_version) AS versions"
        ),
        graph.query(
            "MATCH (i:Intent) OPTIONAL MATCH (i)-[r:IMPLEMENTED_BY]->(:AstNode) "
            "RETURN i.id AS id, i.source_version AS version, count(r) AS links"
        ),
        relational.registered_sources(),
        relational.registered_intents(),
        relational.parked_links(older_than_s=0, sample=0),
        relational.stuck_batches(older_than_s=stuck_after_s),
    )
    in_graph = {r["source_id"]: r["nodes"] for r in graph_rows}
    graph_versions = {r["source_id"]: sorted(r["versions"]) for r in graph_rows}
    registry = {source: nodes for source, (nodes, _) in registry_rows.items()}
    versions = {source: version for source, (_, version) in registry_rows.items()}
    intents_in_graph = {r["id"]: (r["version"], r["links"]) for r in graph_intents}
    intents_registered = registry_intents
    return ConsistencyReport(
        count_mismatches=sorted((s, n, in_graph[s]) for s, n in registry.items() if s in in_graph and in_graph[s] != n),
        graph_without_registry=sorted(set(in_graph) - set(registry)),
        registry_without_graph=sorted(s for s, n in registry.items() if n and s not in in_graph),
        parked_links=parked.parked,
        stuck_outbox=stuck,
        version_mismatches=sorted(
            (s, v, graph_versions[s]) for s, v in versions.items() if s in graph_versions and graph_versions[s] != [v]
        ),
        intent_mismatches=sorted(
            i
            for i in set(intents_in_graph) | set(intents_registered)
            if intents_in_graph.get(i) != intents_registered.get(i)
        ),
    )


async def repair_inconsistencies(
    relational: PostgresRelationalStore, graph: GraphBackend, report: ConsistencyReport
) -> None:
    """Mend what ``report`` found, adding each action to ``report.repaired``; the caller holds the write fence."""
    rebuild = sorted(
        {s for s, _, _ in report.count_mismatches}
        | {s for s, _, _ in report.version_mismatches}
        | set(report.registry_without_graph)
    )
    if report.graph_without_registry:
        deleted = await graph.delete_sources(report.graph_without_registry)
        orphans = len(report.graph_without_registry)
        report.repaired.append(f"deleted {deleted} graph nodes of {orphans} sources without a registry row")
    live_intents = await relational.live_intents(report.intent_mismatches)
    stray_intents = sorted(set(report.intent_mismatches) - {str(i) for i in live_intents})
    if stray_intents:
        await graph.delete_intents(stray_intents)
        report.repaired.append(f"deleted {len(stray_intents)} intents without a registry row from the graph")
    await relational.repair(report.graph_without_registry, rebuild, report.stuck_outbox, live_intents)
    if rebuild or live_intents:
        marked = rebuild + [str(i) for i in live_intents]
        report.repaired.append(f"marked for re-application by the next replay: {marked}")
    if report.stuck_outbox:
        report.repaired.append(f"closed {len(report.stuck_outbox)} stuck outbox rows as 'abandoned'")
