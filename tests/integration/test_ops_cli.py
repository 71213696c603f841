"""The operator commands (status, replay, dlq, check, stats, backup, restore, export) as operators run them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, assert_clean_exits, eventually, make_namespace, stop_workers
from worker.devstack import DevStack
from worker.devstack.falkordb import FalkorDBServer
from worker.library import GraphPostgresManager

pytestmark = pytest.mark.integration
GPM = (sys.executable, "-m", "worker")


async def gpm(ns: Namespace, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m worker <args>` with the namespace's settings (and ``env``): (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *GPM,
        *args,
        env={**ns.env(), "COLUMNS": "200", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _status(ns: Namespace) -> dict[str, object]:
    code, out, err = await gpm(ns, "status", "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    assert_clean_exits([proc], await stop_workers(proc))


async def test_status_replay_and_dead_letter_redrive(ns: Namespace) -> None:
    """Status shows the lag; replay refuses a live group, then rewinds; dead letters are listed and re-driven."""
    worker = await ns.spawn_worker()
    await ns.publish(ns.graph_topic, [upsert(f"o{i}.py", 1, graph([("m", "Module")])) for i in range(3)])
    await ns.publish_raw(ns.graph_topic, b"{not json")
    await ns.wait_committed(4)

    # Read-only commands, side by side.
    status, (code, _, err), (list_code, out, _) = await asyncio.gather(
        _status(ns), gpm(ns, "replay", "--to", "earliest"), gpm(ns, "dlq", "list")
    )
    assert status["lag"] == 0, json.dumps(status)
    assert len(status["members"]) == 1  # type: ignore[arg-type]
    assert status["outbox"] == {}  # unfinished states only: nothing pending, failed or compensated
    graph_partitions = [p for p in status["partitions"] if p["topic"] == ns.graph_topic]  # type: ignore[attr-defined]
    assert sum(p["end"] for p in graph_partitions) == 4
    assert sum(1 for p in graph_partitions if p["last_applied_at"]) >= 1

    assert code == 1
    assert "live member" in err

    assert list_code == 0
    assert "1 dead letter(s)" in out
    assert "not-json" in out
    position = next(line.split("│")[1].strip() for line in out.splitlines() if ".dlq:" in line)
    code, out, _ = await gpm(ns, "dlq", "show", position)
    assert code == 0
    letter = json.loads(out)
    assert letter["value"] == "{not json"
    assert letter["headers"]["__connect.errors.reason"] == "not-json"

    # Re-drive: the original bytes go back to their topic; still invalid, they come back as a
    # second letter that says where it was re-driven from.
    code, _, err = await gpm(ns, "dlq", "redrive", "--reason", "not-json")
    assert code == 0, err
    assert "re-drove 1 dead letter(s)" in err
    await ns.wait_committed(5)
    letters = await ns.read_topic(ns.graph_topic + ".dlq", 2)
    assert dict(letters[-1].headers)["gpm.redriven-from"] == position.encode()

    await _stop(worker)
    # --force: the local broker (Tansu) keeps listing a member after it left the group.
    # --wait: the command stays, showing progress, until the restarted worker caught up.
    replay = await asyncio.create_subprocess_exec(
        *GPM,
        "replay",
        "--to",
        "earliest",
        "--topic",
        ns.graph_topic,
        "--force",
        "--wait",
        env=ns.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await eventually(lambda: _graph_committed_is(ns, {0}), what="the reset to earliest")
    # At least 4 of the 5 records: Tansu may report a partition's end one short.
    assert (await _status(ns))["lag"] >= 4  # type: ignore[operator]
    applied_before = await ns.sql("SELECT count(*) AS n FROM gpm_processed_events")

    worker = await ns.spawn_worker()
    try:
        out, err = await asyncio.wait_for(replay.communicate(), 120)
    finally:
        await _stop(worker)
    assert replay.returncode == 0, err.decode()
    assert "moved group" in out.decode()
    assert "reprocessing" in err.decode()
    assert (await _status(ns))["lag"] == 0
    # Reprocessing changed nothing: every event was already in the ledger.
    assert await ns.sql("SELECT count(*) AS n FROM gpm_processed_events") == applied_before


async def _graph_committed_is(ns: Namespace, expected: set[int]) -> bool:
    partitions = (await _status(ns))["partitions"]
    return {p["committed"] for p in partitions if p["topic"] == ns.graph_topic} == expected  # type: ignore[attr-defined]


async def test_preflight_warns_of_a_slow_falkordb_setting_and_still_passes(ns: Namespace, tmp_path: Path) -> None:
    """A FalkorDB at its default NODE_CREATION_BUFFER: preflight passes (exit 0) with one warning naming the fix."""
    server = FalkorDBServer(tmp_path, node_creation_buffer=16384)
    server.start()
    try:
        falkordb = {
            "GPM_GRAPH__BACKEND": "falkordb",
            "GPM_GRAPH__URI": server.uri,
            "GPM_GRAPH__USER": "default",
            "GPM_GRAPH__PASSWORD": "",
            "GPM_GRAPH__DATABASE": ns.name,
        }
        code, out, err = await gpm(ns, "preflight", env=falkordb)
    finally:
        server.stop()
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warn")]
    expected = (
        "warn graph server settings: FalkorDB NODE_CREATION_BUFFER is 16,384: bulk writes slow down as the "
        "graph grows; load the module with NODE_CREATION_BUFFER 1048576 (docs/benchmark.md)"
    )
    assert warnings == [expected]
    code, out, _ = await gpm(ns, "preflight")  # the local stack's graph server: nothing to tune
    assert (code, "warn" in out) == (0, False)


async def test_replay_rejects_a_malformed_offset(ns: Namespace) -> None:
    """A bad --offset is a clear message, not a traceback."""
    code, _, err = await gpm(ns, "replay", "--offset", "nonsense")
    assert code == 1
    assert "TOPIC:PARTITION=OFFSET" in err


async def test_check_and_stats_commands(ns: Namespace) -> None:
    """`gpm check` exits 0 on agreeing stores and 1 when the graph lost a source; `gpm stats` prints JSON."""
    async with GraphPostgresManager(ns.settings) as manager:
        await manager.store_ast_graph({"nodes": [{"id": "m", "type": "Module"}]}, "c.py")
    code, out, err = await gpm(ns, "check")
    assert (code, "consistent" in out) == (0, True), err
    for topic in (ns.graph_topic, ns.intent_topic):
        assert (await gpm(ns, "topics", "ensure", "--topic", topic, "--partitions", "1"))[0] == 0
    code, out, err = await gpm(ns, "preflight")
    assert code == 0, err
    assert f"ok   Kafka broker: {ns.settings.kafka.bootstrap_servers} over PLAINTEXT" in out
    assert "ok   Kafka topics: " in out
    assert "ok   Kafka group rights: " in out
    assert "ok   Kafka topic rights: not reported by the broker (no authorizer)" in out  # tansu
    assert "ok   graph write rights" in out
    assert "ok   PostgreSQL version" in out
    code, out, _ = await gpm(ns, "stats")
    assert code == 0
    stats = json.loads(out)
    assert stats["sources"] == 1
    assert [b["table"] for b in stats["bookkeeping"]] == ["gpm_processed_events", "gpm_outbox"]
    assert stats["bookkeeping"][0]["oldest"]  # the library's event, not yet past the retention
    graph = ns.graph()
    try:
        await graph.query("MATCH (n:AstNode {source_id: 'c.py'}) DETACH DELETE n")
    finally:
        await graph.close()
    code, out, _ = await gpm(ns, "check")
    assert code == 1
    assert "['c.py']" in out


async def test_backup_restore_and_export_commands(ns: Namespace, stack: DevStack, tmp_path: Path) -> None:
    """`gpm backup` → `gpm restore` elsewhere → `gpm check` agrees; a second restore refuses; `gpm export` writes."""
    async with GraphPostgresManager(ns.settings) as manager:
        await manager.store_ast_graph({"nodes": [{"id": "m", "type": "Module"}]}, "c.py")
    snap = tmp_path / "nightly.gpmsnap"
    code, out, err = await gpm(ns, "backup", str(snap))
    assert code == 0, err
    assert "{'AstNode': 1, 'Intent': 0} nodes" in out
    assert "postgres tables" in err  # the progress bars

    target = await make_namespace(stack)
    code, out, err = await gpm(target, "restore", str(snap))
    assert (code, "verified" in out) == (0, True), err
    code, out, err = await gpm(target, "check")
    assert (code, "consistent" in out) == (0, True), err
    code, _, err = await gpm(target, "restore", str(snap))
    assert code == 1
    assert "not empty" in err
    assert "Traceback" not in err

    code, out, err = await gpm(target, "export", str(tmp_path / "graph.json"), "--format", "node-link")
    assert code == 0, err
    assert json.loads((tmp_path / "graph.json").read_text())["nodes"][0]["properties"]["source_id"] == "c.py"


async def test_replay_into_empty_stores(ns: Namespace, stack: DevStack) -> None:
    """A new group over fresh databases reprocesses the topic from the start; stores with data are refused."""
    await ns.publish(ns.graph_topic, [upsert(f"r{i}.py", 1, graph([("m", "Module")])) for i in range(3)])
    target = await make_namespace(stack)
    kafka = ns.settings.kafka.model_copy(update={"group_id": f"rebuild-{ns.name}"})
    fresh = Namespace(stack, target.name, target.settings.model_copy(update={"kafka": kafka}))

    code, out, err = await gpm(fresh, "replay", "--to", "earliest", "--topic", ns.graph_topic, "--into-empty-stores")
    assert code == 0, err
    assert f"moved group rebuild-{ns.name}" in out
    worker = fresh.worker()
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.started.wait(), 60)  # migrated by then

        async def rebuilt() -> bool:
            return len(await fresh.sql("SELECT 1 FROM gpm_sources")) == 3

        await eventually(rebuilt, what="the fresh stores rebuilt from the topic")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 60)

    code, _, err = await gpm(fresh, "replay", "--to", "earliest", "--topic", ns.graph_topic, "--into-empty-stores")
    assert code == 1
    assert "not empty: PostgreSQL table gpm_sources" in err
    assert "graph database" in err


async def test_dlq_list_shows_every_letter_every_time_while_a_worker_runs(ns: Namespace) -> None:
    """Five letters in the DLQ, a worker running and writing: `dlq list` says exactly five, six times out of six."""
    for n in range(5):
        await ns.publish_raw(ns.graph_topic, b"{broken %d" % n, key=b"k%d" % n)
    worker = await ns.spawn_worker()
    try:
        await ns.wait_committed(5)
        counts = []
        for round_ in range(6):
            # The worker keeps writing meanwhile, as it would in production.
            await ns.publish(ns.graph_topic, [upsert(f"busy{round_}.py", 1, graph([("m", "Module")]))])
            code, out, err = await gpm(ns, "dlq", "list", "--json")
            assert code == 0, err
            counts.append(len(out.splitlines()))
        assert counts == [5] * 6
    finally:
        await _stop(worker)


async def test_commands_with_the_broker_down_fail_in_one_message(ns: Namespace) -> None:
    """status, dlq list, dlq redrive, replay and publish name the unreachable broker in one line; no traceback."""
    env = {"GPM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    event = str(Path(__file__).parents[2] / "schemas" / "examples" / "ast-graph.upserted.json")
    commands = (["status"], ["dlq", "list"], ["dlq", "redrive"], ["replay", "--to", "earliest"], ["publish", event])
    for command, (code, out, err) in zip(
        commands, await asyncio.gather(*(gpm(ns, *command, env=env) for command in commands)), strict=True
    ):
        assert code == 1, command
        assert err.strip().splitlines() == [
            "the Kafka broker at 127.0.0.1:1 is unreachable: Connect call failed ('127.0.0.1', 1)"
        ], (command, err)
        assert "Traceback" not in out + err


async def test_topics_ensure_creates_what_is_missing_and_changes_nothing_else(ns: Namespace) -> None:
    """A new topic and its DLQ are created with the partitions asked for; existing ones are left; a rerun is a no-op."""
    from aiokafka.admin import AIOKafkaAdminClient

    fresh = f"ast-graphs.{ns.name}-new"
    args = ("topics", "ensure", "--topic", ns.graph_topic, "--topic", fresh, "--partitions", "4")
    code, _, err = await gpm(ns, *args)
    assert code == 0, err
    assert f"created {fresh}: 4 partitions" in err
    assert f"created {fresh}.dlq: 4 partitions" in err
    assert f"exists, left as it is: {ns.graph_topic}" in err
    admin = AIOKafkaAdminClient(bootstrap_servers=ns.settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics([fresh, ns.graph_topic])}
    finally:
        await admin.close()
    assert described == {fresh: 4, ns.graph_topic: 3}  # the existing topic kept its 3 partitions
    code, _, err = await gpm(ns, *args)
    assert (code, "created" in err) == (0, False), err
