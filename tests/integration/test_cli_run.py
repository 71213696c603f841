"""`gpm run` as operators run it: a real process, settings from GPM_* variables, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

import pytest
from aiohttp import web

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, assert_clean_exits, eventually, stop_workers
from worker.errors import StoreRejected

pytestmark = pytest.mark.integration


async def test_sigterm_drains_and_exits_zero_without_leaking_secrets(ns: Namespace) -> None:
    """The worker process applies events, dumps its stacks on SIGUSR1/2, exits 0 on SIGTERM, leaks no secret."""
    proc = await ns.spawn_worker()
    try:
        await ns.publish(ns.graph_topic, [upsert(f"p{i}.py", 1, graph([("m", "Module")])) for i in range(3)])

        async def applied() -> bool:
            store = await ns.relational()
            try:
                return (await store.fetch_read_only("SELECT count(*) AS n FROM gpm_sources"))[0]["n"] == 3
            except StoreRejected:
                return False  # the worker process has not created its tables yet
            finally:
                await store.close()

        await eventually(applied, what="events applied by the worker process")
        # An operator's stack dumps of a live worker: tasks (SIGUSR1) and threads (SIGUSR2).
        proc.send_signal(signal.SIGUSR1)
        proc.send_signal(signal.SIGUSR2)
        await asyncio.sleep(1)
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = output.decode()
    assert proc.returncode == 0, text
    assert '"event": "worker stopped"' in text
    assert ns.settings.graph.password.get_secret_value() not in text
    assert '"task": "ingest"' in text  # SIGUSR1 logged the consume loop's stack
    assert "Current thread" in text  # SIGUSR2: faulthandler's dump of every thread


async def _gpm_run(ns: Namespace, env: dict[str, str], *, stderr_apart: bool = False) -> asyncio.subprocess.Process:
    """`gpm run` with exactly ``env``; stderr piped on its own, or merged into stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr_apart else asyncio.subprocess.STDOUT,
    )
    ns.processes.append(proc)
    return proc


async def test_bad_setting_fails_at_start_naming_it(ns: Namespace) -> None:
    """An invalid variable stops `gpm run` with exit 2 and the variable's name."""
    proc = await ns.spawn_worker(transaction_size="-5")
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "GPM_WORKER__TRANSACTION_SIZE" in output.decode()
    assert ns.settings.graph.password.get_secret_value() not in output.decode()


async def test_a_health_address_it_cannot_listen_on_stops_the_start_naming_it(ns: Namespace) -> None:
    """A health port in use, or a host that is no address: exit 1 in one line naming the settings."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for host, port in (("127.0.0.1", str(busy.getsockname()[1])), ("999.1.1.1", "8080")):
            env = {**ns.env(), "GPM_HEALTH__HOST": host, "GPM_HEALTH__PORT": port}
            proc = await _gpm_run(ns, env, stderr_apart=True)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 1, err.decode()
            (line,) = err.decode().strip().splitlines()
            assert line.startswith(
                f"worker failed: GPM_HEALTH__HOST / GPM_HEALTH__PORT: cannot listen on {host}:{port}"
            )
    finally:
        busy.close()


async def test_missing_graph_database_fails_the_start_naming_it(ns: Namespace) -> None:
    """A misspelt database is waited for a bounded time, then the start fails saying which setting."""
    env = ns.env(database_wait_s="2", retry_max_s="0.5")
    env["GPM_GRAPH__DATABASE"] = "no_such_database"
    proc = await _gpm_run(ns, env)
    output, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = output.decode()
    assert proc.returncode != 0, text
    assert "GPM_GRAPH__DATABASE" in text
    assert ns.settings.graph.password.get_secret_value() not in text


async def test_traces_reach_an_otlp_collector(ns: Namespace) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, the worker exports its batch, saga and statement spans over OTLP/HTTP."""
    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        env = {**ns.env(), "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "200"}
        proc = await _gpm_run(ns, env)
        await ns.publish(ns.graph_topic, [upsert("traced.py", 1, graph([("m", "Module")]))])
        await ns.wait_committed(1)
        await eventually(lambda: _spans_arrived(received), what="spans at the collector")
        assert_clean_exits([proc], await stop_workers(proc))
    finally:
        await runner.cleanup()
    body = b"".join(received)
    for name in (b"process batch", b"saga batch", b"saga graph import", b"graph statement", b"saga outbox applied"):
        assert name in body, name
    assert b"graph-postgres-manager" in body  # the service name


async def _spans_arrived(received: list[bytes]) -> bool:
    return any(b"saga outbox applied" in body for body in received)


async def test_gpm_dev_runs_the_main_job_and_says_where_its_metrics_are() -> None:
    """`gpm dev` (what `make dev` runs) starts its own stack, ingests, shows the graph and where the metrics were."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "dev",
        "--files",
        "5",
        "--graph-backend",
        "falkordb",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    text = output.decode()
    assert process.returncode == 0, text
    assert re.search(r"metrics of this run, while it ingests: http://127\.0\.0\.1:\d+/metrics", text), text
    consumed = re.search(r"gpm_events_consumed_total=(\d+)", text)
    assert consumed is not None, text
    assert int(consumed.group(1)) >= 5  # the five files (and the sample intent link)
    assert "first functions in the graph:" in text
    assert "deploy/monitoring" in text
