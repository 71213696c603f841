"""Issue 16's hostile records, published to a real broker and read by a real `gpm run` process.

Each once made the worker crash-loop, stall its partition or split the stores. Now every
one is dead-lettered with its reason (an oversized one as a shortened letter), the good
events around them are applied, every offset is committed, the worker is still running,
and the consistency check agrees. On ArcadeDB over Bolt and on FalkorDB.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, assert_clean_exits, eventually, stop_workers
from worker.deadletter import ORIGINAL_SIZE_HEADER, PREFIX_BYTES, TRUNCATED_HEADER
from worker.devstack.falkordb import FalkorDBServer
from worker.library import GraphPostgresManager

pytestmark = pytest.mark.integration

MAX_EVENT_BYTES = 100_000
MOD_GRAPH = graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")])
_INTENT = "9f1b7f4e-2b5a-4c3e-9d8e-1a2b3c4d5e6f"


def _event(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "ast-graph.upserted",
        "source_id": "hostile.py",
        "source_version": 1,
        "occurred_at": "2026-12-01T10:00:00Z",
        "producer": "tests",
        "graph": {"nodes": [{"id": "a", "type": "Module"}], "edges": [], "metadata": {}},
    }
    document.update(changes)
    return document


def _deep(depth: int) -> str:
    return '{"d":' * depth + "1" + "}" * depth


def _hostile() -> dict[str, bytes]:
    """Issue 16's cases, by name: the record's bytes."""
    node = {"id": "a", "type": "Module"}
    cases: dict[str, dict[str, Any]] = {
        "metadata 2**70": _event(graph={"nodes": [node], "metadata": {"inode": 2**70}}),
        "property name a`b": _event(graph={"nodes": [{**node, "properties": {"a`b": 1}}]}),
        "property name with NUL": _event(graph={"nodes": [{**node, "properties": {"a\x00b": 1}}]}),
        "NUL in producer": _event(producer="p\x00"),
        "NUL in metadata": _event(graph={"nodes": [node], "metadata": {"s": "a\x00"}}),
        "year 0 in UTC": _event(occurred_at="0001-01-01T00:00:00+14:00"),
        "delete at 2**63": {**_event(event_type="ast-graph.deleted", source_version=2**63), "graph": None},
        "upper-case intent": {
            **_event(event_type="intent-link.upserted", source_id=_INTENT.upper(), ast_nodes=[]),
            "graph": None,
        },
        "version as text": _event(source_version="5"),
        "schema_version true": _event(schema_version=True),
        "mixed list": _event(graph={"nodes": [{**node, "properties": {"l": [True, 1]}}]}),
        "label with newline": _event(graph={"nodes": [{"id": "a", "type": "Module\n"}]}),
    }
    raws = {name: json.dumps({k: v for k, v in doc.items() if v is not None}).encode() for name, doc in cases.items()}
    graph = '{"nodes": [{"id": "a", "type": "Module"}], "metadata": {"deep": %s}}'
    raws["metadata 300 deep"] = (
        json.dumps(_event())
        .encode()
        .replace(
            b'"graph": {"nodes": [{"id": "a", "type": "Module"}], "edges": [], "metadata": {}}',
            (('"graph": ' + graph) % _deep(300)).encode(),
        )
    )
    raws["metadata 1000 deep"] = raws["metadata 300 deep"].replace(_deep(300).encode(), _deep(1000).encode())
    raws["oversized"] = json.dumps(
        _event(producer="x" * 256, graph={"nodes": [node], "metadata": {"pad": "y" * 300_000}})
    ).encode()
    return raws


@pytest.mark.parametrize("backend", ["bolt", "falkordb"])
async def test_hostile_records_are_dead_lettered_and_the_worker_goes_on(
    ns: Namespace, backend: str, request: pytest.FixtureRequest
) -> None:
    """Every hostile record reaches the DLQ with its reason; the good events apply; nothing stops or stalls."""
    if backend == "falkordb":
        falkordb: FalkorDBServer = request.getfixturevalue("falkordb_server")
        ns.use_falkordb(falkordb)
    hostile = _hostile()
    nul_graph = {"nodes": [{"id": "a", "type": "Module", "properties": {"v": "a\x00b"}}]}
    nul_property = json.dumps(_event(source_id="nul.py", graph=nul_graph)).encode()
    await ns.publish(ns.graph_topic, [upsert("first.py", 1, MOD_GRAPH)])
    for name, raw in hostile.items():
        await ns.publish_raw(ns.graph_topic, raw, key=name.encode())
    await ns.publish_raw(ns.graph_topic, nul_property, key=b"nul.py")
    await ns.publish(ns.graph_topic, [upsert("last.py", 1, MOD_GRAPH)])
    total = 1 + len(hostile) + 1 + 1
    process = await ns.spawn_worker(max_event_bytes=str(MAX_EVENT_BYTES))

    async def all_committed() -> bool:
        return sum((await ns.committed(ns.graph_topic)).values()) == total

    await eventually(all_committed, timeout_s=90, what="every hostile record committed past")
    assert process.returncode is None, "the worker must still be running"
    # FalkorDB cannot store a NUL in a string: there that event is refused too ("unstorable").
    letters_expected = len(hostile) + (backend == "falkordb")
    letters = await ns.read_topic(ns.graph_topic + ".dlq", expected=letters_expected)
    output = await stop_workers(process)
    assert_clean_exits([process], output)
    assert len(letters) == letters_expected
    by_key = {letter.key.decode(): letter for letter in letters}
    reasons = {key: dict(letter.headers)["__connect.errors.reason"].decode() for key, letter in by_key.items()}
    assert reasons.pop("oversized") == "oversized"
    assert set(reasons.pop("metadata 1000 deep", "invalid").split()) <= {"invalid", "not-json"}
    if backend == "falkordb":
        assert reasons.pop("nul.py") == "unstorable"
    assert set(reasons.values()) <= {"invalid", "unsupported-version"}, reasons
    shortened = dict(by_key["oversized"].headers)
    assert (shortened[TRUNCATED_HEADER], int(shortened[ORIGINAL_SIZE_HEADER])) == (b"true", len(hostile["oversized"]))
    assert by_key["oversized"].value == hostile["oversized"][:PREFIX_BYTES]
    for name in hostile.keys() - {"oversized"}:
        assert by_key[name].value == hostile[name], f"{name}: the letter carries the original bytes"

    sources = {r["source_id"] for r in await ns.sql("SELECT source_id FROM gpm_sources")}
    assert sources == {"first.py", "last.py"} | ({"nul.py"} if backend == "bolt" else set())
    assert await ns.sql("SELECT state FROM gpm_outbox WHERE state NOT IN ('applied', 'compensated')") == []
    async with GraphPostgresManager(ns.settings) as manager:
        report = await manager.check_data_consistency()
    assert report.consistent, report


async def test_errors_tolerance_none_halts_at_the_record_instead_of_dead_lettering(ns: Namespace) -> None:
    """GPM_WORKER__ERRORS_TOLERANCE=none: the worker stops (exit 1) naming the record; nothing past it is committed."""
    await ns.publish(ns.graph_topic, [upsert("first.py", 1, MOD_GRAPH)])
    await ns.publish_raw(ns.graph_topic, b"{not json", key=b"first.py")  # same partition, after it
    process = await ns.spawn_worker(errors_tolerance="none")
    assert process.stdout is not None
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    text = output.decode()
    assert process.returncode == 1, text
    assert "would be dead-lettered (not-json" in text
    assert "GPM_WORKER__ERRORS_TOLERANCE=none" in text
    assert await ns.records_in(ns.graph_topic + ".dlq") == 0
    # The record before it was applied, but its batch (with the bad record) was not committed.
    assert sum((await ns.committed(ns.graph_topic)).values()) == 0


async def test_a_tombstone_deletes_its_source_and_a_replay_changes_nothing(ns: Namespace) -> None:
    """A value-less record keyed by a source id deletes that source; on the intent topic it is refused."""
    await ns.publish(ns.graph_topic, [upsert("gone.py", 3, MOD_GRAPH), upsert("kept.py", 1, MOD_GRAPH)])
    await ns.publish_raw(ns.graph_topic, None, key=b"gone.py")
    await ns.publish_raw(ns.intent_topic, None, key=b"some-intent")
    process = await ns.spawn_worker()
    await ns.wait_committed(4)
    output = await stop_workers(process)
    assert_clean_exits([process], output)
    rows = {r["source_id"]: r for r in await ns.sql("SELECT * FROM gpm_sources")}
    assert (rows["gone.py"]["deleted"], rows["gone.py"]["source_version"]) == (True, 3)
    assert rows["kept.py"]["deleted"] is False
    graph_store = ns.graph()
    try:
        sources = await graph_store.query("MATCH (n:AstNode) RETURN DISTINCT n.source_id AS s")
    finally:
        await graph_store.close()
    assert sources == [{"s": "kept.py"}]
    letters = await ns.read_topic(ns.intent_topic + ".dlq", expected=1, timeout_s=5)
    assert [dict(r.headers)["__connect.errors.reason"] for r in letters] == [b"empty"]
    # The same records read again by a new group: the tombstone is a duplicate, nothing moves.
    ledger = await ns.sql("SELECT count(*) AS n FROM gpm_processed_events")
    replay = ns.settings.kafka.model_copy(update={"group_id": ns.settings.kafka.group_id + "-again"})
    ns.settings = ns.settings.model_copy(update={"kafka": replay})
    process = await ns.spawn_worker()
    await ns.wait_committed(4)
    await stop_workers(process)
    assert await ns.sql("SELECT count(*) AS n FROM gpm_processed_events") == ledger
    assert {r["source_id"]: r["deleted"] for r in await ns.sql("SELECT * FROM gpm_sources")} == {
        "gone.py": True,
        "kept.py": False,
    }
