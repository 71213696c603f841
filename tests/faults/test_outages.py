"""Store outages while events flow: nothing is lost or committed early, and the worker resumes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from pydantic import SecretStr

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, eventually, probe
from worker.app import Worker
from worker.devstack.arcadedb import ArcadeDBServer
from worker.devstack.broker import TansuBroker
from worker.devstack.postgres import EmbeddedPostgres

pytestmark = pytest.mark.integration
MOD = graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")])
OUTAGE_S = 20  # several retry windows and rewinds; longer proved nothing more and cost the suite 25 s


async def test_postgres_outage_pauses_and_resumes_without_loss(ns: Namespace, tmp_path: Path) -> None:
    """PostgreSQL stopped mid-flow: offsets stay put and the worker keeps running; restarted, all is applied."""
    postgres = EmbeddedPostgres(tmp_path)
    await asyncio.to_thread(postgres.start)
    try:
        settings = ns.settings.model_copy(
            update={"postgres": ns.settings.postgres.model_copy(update={"dsn": SecretStr(postgres.dsn)})}
        )
        ns.settings = settings
        worker = Worker(settings, handle_signals=False)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started.wait(), 60)
        await ns.publish(ns.graph_topic, [upsert(f"a{i}.py", 1, MOD) for i in range(2)])
        await ns.wait_committed(2)

        await asyncio.to_thread(postgres.stop)
        await ns.publish(ns.graph_topic, [upsert(f"b{i}.py", 1, MOD) for i in range(3)])
        # 20 s down: five retry windows (3 s each in these tests) and rewinds.
        cpu_before, paused_seen = time.process_time(), False
        for tick in range(OUTAGE_S * 10):
            # Sampled often: a pause lasts about a second of each ~5 s retry cycle.
            await asyncio.sleep(0.1)
            assert worker.runner is not None
            paused_seen = paused_seen or bool(worker.runner.paused())
            if tick % 50 == 49:
                assert await ns.committed_total() == 2
                assert not task.done(), "the worker must ride out the outage, not crash"
        # Fetching is paused between attempts (memory stays bounded) and nothing spins.
        assert paused_seen, "the worker never paused its partitions while PostgreSQL was down"
        cpu = time.process_time() - cpu_before
        assert cpu < 0.15 * OUTAGE_S, f"{cpu:.1f}s of CPU in a {OUTAGE_S}s outage: a busy loop"

        await asyncio.to_thread(postgres.start)
        await ns.wait_committed(5, timeout_s=90)
        assert (await ns.sql("SELECT count(*) AS n FROM gpm_sources"))[0]["n"] == 5
        graph_store = ns.graph()
        try:
            nodes = await graph_store.query("MATCH (n:AstNode) RETURN count(n) AS n")
        finally:
            await graph_store.close()
        assert nodes == [{"n": 10}]
        worker.stop()
        await asyncio.wait_for(task, 60)
    finally:
        await asyncio.to_thread(postgres.stop)


async def test_broker_vanishing_and_returning_loses_nothing(ns: Namespace, tmp_path: Path) -> None:
    """A frozen broker (SIGSTOP for longer than the session timeout) and its return: all is applied once."""
    broker = TansuBroker(tmp_path)
    await asyncio.to_thread(broker.start)
    try:
        kafka = ns.settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        ns.settings = ns.settings.model_copy(update={"kafka": kafka})
        await broker.create_topics([ns.graph_topic, ns.intent_topic, ns.graph_topic + ".dlq"], partitions=3)
        worker = Worker(ns.settings, handle_signals=False)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started.wait(), 60)
        await ns.publish(ns.graph_topic, [upsert(f"a{i}.py", 1, MOD) for i in range(3)])
        await ns.wait_committed(3)

        broker.pause()
        await asyncio.sleep(10)  # past the 6 s session timeout: the group forgets the member
        broker.resume()
        assert not task.done(), "the worker must ride out a broker outage"
        await ns.publish(ns.graph_topic, [upsert(f"b{i}.py", 1, MOD) for i in range(3)])
        await ns.wait_committed(6, timeout_s=120)
        assert (await ns.sql("SELECT count(*) AS n FROM gpm_processed_events"))[0]["n"] == 6
        worker.stop()
        await asyncio.wait_for(task, 60)
    finally:
        broker.resume()
        await asyncio.to_thread(broker.stop)


async def test_worker_waits_for_an_unreachable_store_at_start(ns: Namespace, tmp_path: Path) -> None:
    """Graph server down at start: not ready (naming it), alive, no crash; it starts once the server is up."""
    server = ArcadeDBServer(tmp_path, heap="512m")  # ports chosen, not started yet
    worker = Worker(ns.on_graph_server(server), handle_signals=False)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: _listening(worker), what="the health server")
        assert worker.health is not None
        await asyncio.sleep(2)
        status, body = await probe(worker.health.port, "/readyz")
        assert status == 503
        assert body["checks"]["graph"].startswith("unavailable")
        assert (await probe(worker.health.port, "/livez"))[0] == 200
        assert not task.done()
        await ns.publish(ns.graph_topic, [upsert(f"w{i}.py", 1, MOD) for i in range(2)])
        await asyncio.to_thread(server.start)
        await ns.wait_committed(2, timeout_s=90)
        worker.stop()
        await asyncio.wait_for(task, 60)
    finally:
        worker.stop()
        await asyncio.to_thread(server.stop)


async def test_worker_waits_for_a_broker_that_is_not_up_yet(ns: Namespace, tmp_path: Path) -> None:
    """Broker down at start: the worker waits (alive, not ready) and consumes once the broker is up."""
    broker = TansuBroker(tmp_path)  # port chosen, not started yet: connections are refused
    kafka = ns.settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
    ns.settings = ns.settings.model_copy(update={"kafka": kafka})
    worker = Worker(ns.settings, handle_signals=False)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: _listening(worker), what="the health server")
        assert worker.health is not None
        await asyncio.sleep(5)  # the stores are open by now; several tries at the broker failed
        assert not task.done(), "the worker must wait for the broker, not exit"
        assert (await probe(worker.health.port, "/readyz"))[0] == 503
        assert (await probe(worker.health.port, "/livez"))[0] == 200
        await asyncio.to_thread(broker.start)
        await broker.create_topics([ns.graph_topic, ns.intent_topic, ns.graph_topic + ".dlq"], partitions=3)
        await ns.publish(ns.graph_topic, [upsert(f"k{i}.py", 1, MOD) for i in range(2)])
        await ns.wait_committed(2, timeout_s=90)
        assert worker.started.is_set()
        worker.stop()
        await asyncio.wait_for(task, 60)
    finally:
        worker.stop()
        await asyncio.to_thread(broker.stop)


async def test_stop_while_waiting_for_stores_exits_promptly(ns: Namespace) -> None:
    """SIGTERM during the wait for an unreachable store ends the worker cleanly."""
    closed = ns.settings.graph.model_copy(update={"uri": "bolt://127.0.0.1:9", "connection_timeout_s": 0.5})
    worker = Worker(ns.settings.model_copy(update={"graph": closed}), handle_signals=False)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(2)
    assert not task.done()
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert not worker.started.is_set()


async def _listening(worker: Worker) -> bool:
    return worker.health is not None and worker.health.port != 0


async def test_stop_while_the_broker_does_not_answer_at_start_exits_promptly(ns: Namespace, tmp_path: Path) -> None:
    """SIGTERM while the Kafka clients start against a frozen broker ends the worker within seconds."""
    broker = TansuBroker(tmp_path)
    await asyncio.to_thread(broker.start)
    try:
        kafka = ns.settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        worker = Worker(ns.settings.model_copy(update={"kafka": kafka}), handle_signals=False)
        broker.pause()  # connections are accepted (by the kernel), requests never answered
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(5)  # the stores are open by now; the Kafka client waits on the broker
        assert not task.done()
        stopped = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, 30)
        assert time.monotonic() - stopped < 15, "the stop waited for the broker"
        assert not worker.started.is_set()
    finally:
        broker.resume()
        await asyncio.to_thread(broker.stop)


class _StuckInRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """A member finishing a long batch on revoke, as a worker does: the group cannot settle meanwhile."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        if revoked:
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: object) -> None:
        if assigned:
            self.assigned.set()


async def test_stop_while_the_group_cannot_settle_exits_promptly(ns: Namespace, tmp_path: Path) -> None:
    """SIGTERM while start-up waits for its first assignment (a member stuck in its revoke) ends the worker.

    On a tansu of its own, whatever broker the suite runs on: Apache Kafka drops a member
    whose revoke callback blocks once its session times out (aiokafka does not heartbeat
    meanwhile), so there the group settles and cannot be held stuck this way.
    """
    broker = TansuBroker(tmp_path)
    await asyncio.to_thread(broker.start)
    kafka = ns.settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
    ns.settings = ns.settings.model_copy(update={"kafka": kafka})
    await broker.create_topics([ns.graph_topic, ns.intent_topic, ns.graph_topic + ".dlq"], partitions=3)
    release = asyncio.Event()
    listener = _StuckInRevoke(release)
    kafka = ns.settings.kafka
    member = AIOKafkaConsumer(
        **kafka.client_options(),
        group_id=kafka.group_id,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
    )
    member.subscribe(pattern=kafka.topic_pattern, listener=listener)
    await member.start()
    try:
        await asyncio.wait_for(listener.assigned.wait(), 30)
        worker = Worker(ns.settings, handle_signals=False)
        task = asyncio.create_task(worker.run())
        # Its consumer exists once the stores are open; a few seconds more and it has asked
        # to join, and the rebalance waits for the stuck member.
        await eventually(_has_runner(worker), timeout_s=30, what="the worker's consumer")
        await asyncio.sleep(3)
        assert not worker.started.is_set(), "the group settled: this test needs it stuck"
        stopped = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, 40)
        assert time.monotonic() - stopped < 20, "the stop waited for the group"
    finally:
        release.set()
        await member.stop()
        await asyncio.to_thread(broker.stop)


def _has_runner(worker: Worker) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return worker.runner is not None

    return check
