"""Complete, order-independent snapshots of the graph and the tables, for comparing runs."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest

from tests.integration.conftest import Namespace, assert_clean_exits, make_namespace, stop_workers
from worker.devstack import DevStack
from worker.events import Envelope

# Columns that legitimately differ between runs (wall-clock times).
_VOLATILE = {"updated_at", "processed_at", "created_at"}


def _canonical(rows: list[dict[str, Any]]) -> list[str]:
    # When a link was parked differs between runs; whether it is parked must not.
    rows = [{**r, "parked_since": r["parked_since"] is not None} if "parked_since" in r else r for r in rows]
    return sorted(
        json.dumps({k: v for k, v in r.items() if k not in _VOLATILE}, sort_keys=True, default=str) for r in rows
    )


async def snapshot(ns: Namespace) -> dict[str, list[str]]:
    """Every node, relationship and relational row that defines the ingested state."""
    graph = ns.graph()
    relational = await ns.relational()
    try:
        nodes = await graph.query("MATCH (n) RETURN labels(n) AS labels, properties(n) AS props")
        edges = await graph.query(
            "MATCH (a)-[e]->(b) RETURN coalesce(a.key, a.id) AS a, type(e) AS type, "
            "coalesce(b.key, b.id) AS b, properties(e) AS props"
        )
        for node in nodes:
            node["labels"] = sorted(node["labels"])
        return {
            "nodes": _canonical(nodes),
            "edges": _canonical(edges),
            "sources": _canonical(await relational.fetch_read_only("SELECT * FROM gpm_sources")),
            "intents": _canonical(await relational.fetch_read_only("SELECT * FROM gpm_intents")),
            "links": _canonical(await relational.fetch_read_only("SELECT * FROM gpm_intent_links")),
            "processed": _canonical(await relational.fetch_read_only("SELECT event_id FROM gpm_processed_events")),
        }
    finally:
        await relational.close()
        await graph.close()


def assert_same_state(
    actual: dict[str, list[str]], reference: dict[str, list[str]], outputs: list[str] | None = None
) -> None:
    """Equal snapshots; otherwise fail naming, per table, the rows missing and extra, and the workers' warnings."""
    if actual == reference:
        return
    lines = []
    for part in sorted(reference.keys() | actual.keys()):
        want, got = set(reference.get(part, [])), set(actual.get(part, []))
        if want != got:
            lines.append(f"{part}: missing {sorted(want - got)[:10]}, extra {sorted(got - want)[:10]}")
    for index, output in enumerate(outputs or []):
        # The workers' own account: anything at warning level or above, as logged.
        noted = [line for line in output.splitlines() if '"level": "warning"' in line or '"level": "error"' in line]
        lines.append(f"worker {index}: {len(noted)} warnings/errors" + "".join(f"\n  {n[:400]}" for n in noted[-15:]))
    pytest.fail("state differs from the reference run:\n" + "\n".join(lines))


async def run_to_completion(ns: Namespace, expected: int) -> str:
    """Run `gpm run` as a process until ``expected`` offsets are committed, then SIGTERM it."""
    proc = await ns.spawn_worker()
    try:
        await ns.wait_committed(expected, timeout_s=120)
    finally:
        outputs = await stop_workers(proc)
    assert_clean_exits([proc], outputs)
    return outputs[0]


_REFERENCES: dict[tuple[UUID, ...], dict[str, list[str]]] = {}


async def reference_state(stack: DevStack, events: tuple[list[Envelope], list[Envelope]]) -> dict[str, list[str]]:
    """The state of one crash-free worker over ``events``, computed once per scenario."""
    # Keyed by the event ids, never by id(events): a module's fixture is freed after the
    # module and a later scenario's tuple can get the same id (a wrong reference in CI).
    key = tuple(e.event_id for part in events for e in part)
    if key not in _REFERENCES:
        ref = await make_namespace(stack)
        graphs, intents = events
        await ref.publish(ref.graph_topic, graphs)
        await ref.publish(ref.intent_topic, intents)
        await run_to_completion(ref, len(graphs) + len(intents))
        _REFERENCES[key] = await snapshot(ref)
    return _REFERENCES[key]
