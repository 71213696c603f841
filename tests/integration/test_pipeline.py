"""End to end on real services: broker → validate → batch → saga (PostgreSQL + graph) → offsets."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.factories import delete, graph, link, upsert
from tests.integration.conftest import Namespace, assert_clean_exits, eventually, probe, stop_workers
from worker.app import Worker
from worker.devstack.arcadedb import ArcadeDBServer
from worker.devstack.falkordb import FalkorDBServer

pytestmark = pytest.mark.integration

MOD = graph([("m", "Module"), ("f", "FunctionDef"), ("x", "Name")], [("m", "BODY", "f"), ("f", "BODY", "x")])


class Running:
    """A worker running in this event loop until the test ends."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run())

    async def started(self) -> None:
        """Wait until the worker has joined its group."""
        await asyncio.wait_for(self.worker.started.wait(), 60)

    async def stop(self) -> None:
        """Stop the worker and wait for its clean exit."""
        self.worker.stop()
        await asyncio.wait_for(self.task, 60)


@pytest.fixture
async def running(ns: Namespace) -> AsyncIterator[Running]:
    """A started worker for the namespace; stopped cleanly afterwards."""
    run = Running(ns.worker())
    await run.started()
    yield run
    if not run.task.done():
        await run.stop()
    run.task.result()


async def _count(ns: Namespace, sql: str, *args: object) -> int:
    return int((await ns.sql(sql, *args))[0]["n"])


async def _graph(ns: Namespace, cypher: str, params: dict[str, object] | None = None) -> list[dict[str, object]]:
    store = ns.graph()
    try:
        return await store.query(cypher, params)  # type: ignore[arg-type]
    finally:
        await store.close()


async def test_events_are_applied_to_both_stores_and_offsets_committed(ns: Namespace, running: Running) -> None:
    """Exact nodes, edges and rows land in both stores, then every offset is committed."""
    events = [upsert(f"pkg/m{i}.py", 1, MOD) for i in range(12)]
    await ns.publish(ns.graph_topic, events)
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 12), what="12 sources")
    assert await _graph(ns, "MATCH (n:AstNode) RETURN count(n) AS n") == [{"n": 36}]
    assert await _graph(ns, "MATCH (:AstNode)-[e]->(:AstNode) RETURN count(e) AS n") == [{"n": 24}]
    assert await _graph(ns, "MATCH (n:FunctionDef {source_id: 'pkg/m3.py'}) RETURN n.node_id AS id") == [{"id": "f"}]
    row = (await ns.sql("SELECT * FROM gpm_sources WHERE source_id = 'pkg/m3.py'"))[0]
    assert (row["source_version"], row["node_count"], row["edge_count"], row["deleted"]) == (1, 3, 2, False)
    assert await _count(ns, "SELECT count(*) AS n FROM gpm_processed_events WHERE outcome = 'applied'") == 12
    assert await _count(ns, "SELECT count(*) AS n FROM gpm_outbox WHERE state <> 'applied'") == 0

    async def all_committed() -> bool:
        return sum((await ns.committed(ns.graph_topic)).values()) == 12

    await eventually(all_committed, what="offsets of all 12 events committed")


async def test_a_worker_process_on_falkordb_applies_events_and_links(
    ns: Namespace, falkordb_server: FalkorDBServer
) -> None:
    """`gpm run` with GPM_GRAPH__BACKEND=falkordb: sources, a replacing version, a delete and links all land."""
    ns.use_falkordb(falkordb_server)
    intent = uuid.uuid4()
    v2 = graph([("m", "Module"), ("g", "ClassDef")], [("m", "BODY", "g")])
    await ns.publish(ns.graph_topic, [upsert(f"pkg/m{i}.py", 1, MOD) for i in range(12)])
    await ns.publish(ns.graph_topic, [upsert("pkg/m0.py", 2, v2), delete("pkg/m1.py", 2)])
    await ns.publish(ns.intent_topic, [link(intent, 1, [("pkg/m2.py", "f"), ("pkg/m0.py", "g")])])
    process = await ns.spawn_worker()
    await ns.wait_committed(15)
    output = await stop_workers(process)
    assert_clean_exits([process], output)
    assert await _graph(ns, "MATCH (n:AstNode) RETURN count(n) AS n") == [{"n": 10 * 3 + 2}]
    assert await _graph(ns, "MATCH (n:AstNode {source_id: 'pkg/m0.py'}) RETURN n.type AS t ORDER BY t") == [
        {"t": "ClassDef"},
        {"t": "Module"},
    ]
    linked = "MATCH (:Intent {id: $i})-[:IMPLEMENTED_BY]->(n) RETURN n.node_id AS id ORDER BY id"
    assert await _graph(ns, linked, {"i": str(intent)}) == [{"id": "f"}, {"id": "g"}]
    assert await _count(ns, "SELECT count(*) AS n FROM gpm_outbox WHERE state <> 'applied'") == 0
    assert "FalkorDB/" in output[0]  # the preflight logged the server it checked


def _lag(text: str, topic: str) -> float:
    pattern = rf'^gpm_consumer_lag\{{[^}}]*topic="{re.escape(topic)}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def _assert_metrics_are_documented(text: str) -> None:
    """Every gpm_ family has HELP text; durations use fitted buckets; no OpenTelemetry scope labels."""
    families = set(re.findall(r"^# TYPE (gpm_\w+) ", text, re.MULTILINE))
    assert {"gpm_batch_duration_seconds", "gpm_outbox_rows", "gpm_last_applied_timestamp_seconds"} <= families
    for family in families:
        assert re.search(rf"^# HELP {family} \S", text, re.MULTILINE), f"{family} has no HELP"
    buckets = re.findall(r'^gpm_batch_duration_seconds_bucket\{le="([^"]+)"\}', text, re.MULTILINE)
    assert buckets[0] == "0.01"
    assert float(buckets[-2]) == 120
    assert "otel_scope" not in text
    # The unfinished outbox states have a series even at zero, for alerts to watch.
    assert re.search(r'^gpm_outbox_rows\{state="compensated"\} ', text, re.MULTILINE)


async def _has(ns: Namespace, sql: str, expected: int) -> bool:
    return await _count(ns, sql) >= expected


async def test_second_version_replaces_the_first_and_old_versions_are_ignored(ns: Namespace, running: Running) -> None:
    """v2 removes what v1 had and v2 lacks; a late v1 changes nothing; a delete removes the graph."""
    v2 = graph([("m", "Module"), ("g", "ClassDef")], [("m", "BODY", "g")])
    await ns.publish(ns.graph_topic, [upsert("a.py", 1, MOD), upsert("keep.py", 1, MOD)])
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 2), what="v1 applied")
    await ns.publish(ns.graph_topic, [upsert("a.py", 2, v2), upsert("a.py", 1, MOD), delete("keep.py", 5)])
    await eventually(
        lambda: _has(ns, "SELECT count(*) AS n FROM gpm_processed_events", 5), what="all 5 events processed"
    )
    nodes = await _graph(ns, "MATCH (n:AstNode {source_id: 'a.py'}) RETURN n.node_id AS id, n.type AS t ORDER BY id")
    assert nodes == [{"id": "g", "t": "ClassDef"}, {"id": "m", "t": "Module"}]
    assert await _graph(ns, "MATCH (n:AstNode {source_id: 'keep.py'}) RETURN count(n) AS n") == [{"n": 0}]
    rows = {r["source_id"]: r for r in await ns.sql("SELECT * FROM gpm_sources")}
    outcomes = await ns.sql("SELECT outcome, count(*) AS n FROM gpm_processed_events GROUP BY outcome ORDER BY outcome")
    assert (rows["a.py"]["source_version"], rows["a.py"]["node_count"]) == (2, 2)
    assert (rows["keep.py"]["deleted"], rows["keep.py"]["source_version"]) == (True, 5)
    assert {r["outcome"]: r["n"] for r in outcomes} == {"applied": 4, "superseded": 1}


async def test_invalid_event_is_dead_lettered_and_its_neighbours_applied(ns: Namespace, running: Running) -> None:
    """A bad record goes to <topic>.dlq with its reason and original bytes; the rest is applied."""
    bad = b'{"event_type": "ast-graph.upserted", "graph": {"nodes": [{"id": "a", "type": "X) DETACH DELETE n //"}]}}'
    await ns.publish(ns.graph_topic, [upsert("before.py", 1, MOD)])
    await ns.publish_raw(ns.graph_topic, bad, key=b"before.py")  # same key: same partition, between the two
    await ns.publish(ns.graph_topic, [upsert("before.py", 2, MOD), upsert("after.py", 1, MOD)])
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_processed_events", 3), what="good events applied")
    letters = await ns.read_topic(ns.graph_topic + ".dlq", expected=1)
    assert len(letters) == 1
    assert await ns.records_in(ns.graph_topic + ".dlq") == 1  # as the rebalance tests count it
    headers = dict(letters[0].headers)
    assert letters[0].value == bad
    assert headers["__connect.errors.reason"] == b"invalid"
    assert b"event_id" in headers["__connect.errors.exception.message"]
    assert headers["__connect.errors.topic"] == ns.graph_topic.encode()

    async def all_committed() -> bool:
        return sum((await ns.committed(ns.graph_topic)).values()) == 4

    await eventually(all_committed, what="offsets committed past the dead-lettered record")


async def test_intent_links_are_stored_and_attached(ns: Namespace, running: Running) -> None:
    """An intent link maps to AST nodes in PostgreSQL and in the graph."""
    intent = uuid.uuid4()
    await ns.publish(ns.graph_topic, [upsert("a.py", 1, MOD)])
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 1), what="graph applied")
    await ns.publish(ns.intent_topic, [link(intent, 1, [("a.py", "f"), ("a.py", "x")])])
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_intent_links", 2), what="links stored")
    linked = await _graph(
        ns, "MATCH (:Intent {id: $i})-[:IMPLEMENTED_BY]->(n) RETURN n.node_id AS id ORDER BY id", {"i": str(intent)}
    )
    assert linked == [{"id": "f"}, {"id": "x"}]
    await ns.publish(ns.graph_topic, [upsert("a.py", 2, MOD)])  # rewrite: links must survive
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_processed_events", 3), what="v2 applied")
    assert len(await _graph(ns, "MATCH (:Intent)-[r:IMPLEMENTED_BY]->() RETURN r")) == 2


async def test_links_to_missing_nodes_are_parked_reported_and_attached_when_they_arrive(ns: Namespace) -> None:
    """A link naming nodes not ingested yet waits in PostgreSQL, is reported past the bound, then attached."""
    run = Running(
        ns.worker(
            worker=ns.settings.worker.model_copy(update={"parked_link_ttl_s": 0.5, "parked_report_interval_s": 0.2})
        )
    )
    await run.started()
    intent = uuid.uuid4()
    parked = "SELECT count(*) AS n FROM gpm_intent_links WHERE parked_since IS NOT NULL"
    edges = "MATCH (:Intent {id: $i})-[r:IMPLEMENTED_BY]->() RETURN r"
    await ns.publish(ns.graph_topic, [upsert("a.py", 1, MOD)])
    await ns.wait_committed(1)
    await ns.publish(ns.intent_topic, [link(intent, 1, [("a.py", "f"), ("later.py", "f"), ("later.py", "x")])])
    await ns.wait_committed(2)
    assert await _count(ns, parked) == 2
    assert len(await _graph(ns, edges, {"i": str(intent)})) == 1
    assert run.worker.health is not None

    async def unresolved_gauge() -> bool:
        text = str((await probe(run.worker.health.port, "/metrics"))[1])  # type: ignore[union-attr]
        return all(
            re.search(rf"^gpm_intent_links_{name}(\{{[^}}]*\}})? 2\.0$", text, re.MULTILINE)
            for name in ("unresolved", "parked")
        )

    await eventually(unresolved_gauge, what="the unresolved-links gauge at 2")
    # The source arrives, without one of the two nodes: one link attaches, the other keeps waiting.
    await ns.publish(ns.graph_topic, [upsert("later.py", 1, graph([("m", "Module"), ("f", "FunctionDef")], []))])
    await ns.wait_committed(3)
    assert await ns.sql("SELECT node_id FROM gpm_intent_links WHERE parked_since IS NOT NULL") == [{"node_id": "x"}]
    assert len(await _graph(ns, edges, {"i": str(intent)})) == 2
    # Deleting a source parks the links into it again.
    await ns.publish(ns.graph_topic, [delete("a.py", 2)])
    await ns.wait_committed(4)
    assert await _count(ns, parked) == 2
    assert len(await _graph(ns, edges, {"i": str(intent)})) == 1
    await run.stop()
    run.task.result()


async def test_offsets_are_not_committed_while_the_graph_store_is_down(ns: Namespace, tmp_path: Path) -> None:
    """Graph server stopped mid-flow: nothing past the applied events is committed.

    The outbox records the failed attempts; once the server is back all is applied and committed.
    """
    server = ArcadeDBServer(tmp_path, heap="512m")
    await asyncio.to_thread(server.start)
    try:
        settings = ns.on_graph_server(server)
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"parked_report_interval_s": 0.5})}
        )
        run = Running(Worker(settings, handle_signals=False))
        await run.started()
        await ns.publish(ns.graph_topic, [upsert(f"s{i}.py", 1, MOD) for i in range(2)])
        await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 2), what="first events applied")

        async def committed_total() -> int:
            return sum((await ns.committed(ns.graph_topic)).values())

        await eventually(lambda: _equals(committed_total(), 2), what="first offsets committed")
        assert run.worker.health is not None
        port = run.worker.health.port
        assert await probe(port, "/readyz") == (
            200,
            {"ok": True, "checks": {"group": "joined", "postgres": "ok", "graph": "ok"}},
        )
        metrics = str((await probe(port, "/metrics"))[1])
        for name in ("gpm_events_consumed", "gpm_events_applied", "gpm_event_freshness", "gpm_consumer_lag"):
            assert name in metrics, name
        _assert_metrics_are_documented(metrics)
        await asyncio.to_thread(server.stop)
        await ns.publish(ns.graph_topic, [upsert(f"s{i}.py", 1, MOD) for i in range(2, 5)])

        async def lag_shows_the_outage() -> bool:
            text = str((await probe(port, "/metrics"))[1])
            return _lag(text, ns.graph_topic) >= 3

        await eventually(lag_shows_the_outage, what="the lag gauge counting the events stuck behind the outage")
        await eventually(
            lambda: _has(
                ns,
                "SELECT count(*) AS n FROM gpm_outbox WHERE state = 'compensated' AND last_error LIKE '%unavailable%'",
                1,
            ),
            what="a compensated outbox row naming the outage",
        )
        await asyncio.sleep(2)
        assert await committed_total() == 2
        status, body = await probe(port, "/readyz")
        assert (status, body["checks"]["postgres"]) == (503, "ok")
        assert body["checks"]["graph"].startswith("unavailable")
        assert (await probe(port, "/livez"))[0] == 200  # an outage is not a reason to restart

        async def compensated_gauge() -> bool:
            return (
                "gpm_outbox_rows{" in (text := str((await probe(port, "/metrics"))[1]))
                and 'state="compensated"' in text
            )

        await eventually(compensated_gauge, what="compensated outbox rows in the outbox gauge")
        assert await _count(ns, "SELECT count(*) AS n FROM gpm_sources") == 2
        await asyncio.to_thread(server.start)
        await eventually(
            lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 5), what="all applied after recovery"
        )
        await eventually(lambda: _equals(committed_total(), 5), what="all offsets committed after recovery")
        assert (await probe(port, "/readyz"))[0] == 200
        await run.stop()
        run.task.result()
    finally:
        await asyncio.to_thread(server.stop)


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_worker_restarts_cleanly_without_reapplying(ns: Namespace) -> None:
    """Stop and start the worker: committed events are not re-applied, new ones are."""
    first = Running(ns.worker())
    await first.started()
    await ns.publish(ns.graph_topic, [upsert(f"r{i}.py", 1, MOD) for i in range(5)])
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 5), what="first run applied")

    async def five_committed() -> bool:
        return sum((await ns.committed(ns.graph_topic)).values()) == 5

    await eventually(five_committed, what="first run committed")
    await first.stop()
    batches_before = await _count(ns, "SELECT count(*) AS n FROM gpm_outbox")
    second = Running(ns.worker())
    await second.started()
    await ns.publish(ns.graph_topic, [upsert("r9.py", 1, MOD)])
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 6), what="second run applied")
    await second.stop()
    assert await _count(ns, "SELECT count(*) AS n FROM gpm_processed_events") == 6
    assert await _count(ns, "SELECT count(*) AS n FROM gpm_outbox") == batches_before + 1
    assert await _graph(ns, "MATCH (n:AstNode) RETURN count(n) AS n") == [{"n": 18}]


def test_settings_never_show_secrets(ns: Namespace) -> None:
    """The DSN and graph password of a real configuration stay out of repr()."""
    text = repr(ns.settings)
    assert ns.settings.graph.password.get_secret_value() not in text
    assert isinstance(ns.settings.postgres.dsn, SecretStr)


async def test_event_rejected_by_the_store_is_isolated_and_dead_lettered(ns: Namespace) -> None:
    """A constraint an operator added in the graph rejects one event: only it is dead-lettered."""
    graph_store = ns.graph()
    try:
        await graph_store.migrate()
        await graph_store.query("CREATE CONSTRAINT marker_name IF NOT EXISTS FOR (n:Marker) REQUIRE n.name IS UNIQUE")
    finally:
        await graph_store.close()
    events = [upsert(f"ok{i}.py", 1, MOD) for i in range(3)]
    events.insert(1, upsert("first.py", 1, graph([("m", "Marker")])))
    events.insert(3, upsert("clash.py", 1, graph([("m", "Marker")])))  # same name 'm': one of the two must fail
    run = Running(ns.worker())
    await run.started()
    try:
        await ns.publish(ns.graph_topic, events)
        await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 4), what="the good events applied")
        letters = await ns.read_topic(ns.graph_topic + ".dlq", expected=1)

        async def all_committed() -> bool:
            return sum((await ns.committed(ns.graph_topic)).values()) == len(events)

        await eventually(all_committed, what="offsets committed past the rejected event")
    finally:
        await run.stop()
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert headers["__connect.errors.reason"] == b"store-rejected"
    assert b"rejected" in headers["__connect.errors.exception.message"]
    # The two sources may sit in different partitions: whichever is applied second clashes.
    rejected = letters[0].key.decode()
    assert rejected in {"first.py", "clash.py"}
    sources = {r["source_id"] for r in await ns.sql("SELECT source_id FROM gpm_sources")}
    assert sources == {"ok0.py", "ok1.py", "ok2.py", "first.py", "clash.py"} - {rejected}


async def test_a_new_version_of_an_unchanged_graph_moves_only_the_registry(ns: Namespace, running: Running) -> None:
    """The re-ingest case: checked against the applied graph's digest, nothing is rewritten; a changed graph is."""
    changed = graph([("m", "Module"), ("g", "ClassDef")], [("m", "BODY", "g")])
    await ns.publish(ns.graph_topic, [upsert("same.py", 1, MOD), upsert("changed.py", 1, MOD)])
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_sources", 2), what="v1 applied")
    await _graph(ns, "MATCH (n:AstNode) SET n.marker = 1")
    same = MOD.model_copy(update={"metadata": {"commit": "abc"}})
    await ns.publish(ns.graph_topic, [upsert("same.py", 2, same), upsert("changed.py", 2, changed)])
    await eventually(lambda: _has(ns, "SELECT count(*) AS n FROM gpm_processed_events", 4), what="v2 applied")
    marked = await _graph(ns, "MATCH (n:AstNode) RETURN n.source_id AS s, count(n.marker) AS n ORDER BY s")
    assert marked == [{"s": "changed.py", "n": 0}, {"s": "same.py", "n": 3}]
    rows = {
        r["source_id"]: (r["source_version"], r["graph_version"], r["node_count"], json.loads(r["metadata"]))
        for r in await ns.sql("SELECT source_id, source_version, graph_version, node_count, metadata FROM gpm_sources")
    }
    assert rows == {"same.py": (2, 1, 3, {"commit": "abc"}), "changed.py": (2, 2, 2, {})}
