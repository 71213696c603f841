"""`gpm run` as operators run it: a real process, settings from GPM_* variables, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, eventually
from worker.errors import StoreRejected

pytestmark = pytest.mark.integration


def _env(ns: Namespace) -> dict[str, str]:
    s = ns.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPM_")}
    env.update(
        GPM_KAFKA__BOOTSTRAP_SERVERS=s.kafka.bootstrap_servers,
        GPM_KAFKA__GROUP_ID=s.kafka.group_id,
        GPM_KAFKA__TOPIC_PATTERN=s.kafka.topic_pattern,
        GPM_KAFKA__SESSION_TIMEOUT_MS="6000",
        GPM_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
        GPM_POSTGRES__DSN=s.postgres.dsn.get_secret_value(),
        GPM_GRAPH__URI=s.graph.uri,
        GPM_GRAPH__USER=s.graph.user,
        GPM_GRAPH__PASSWORD=s.graph.password.get_secret_value(),
        GPM_GRAPH__DATABASE=s.graph.database,
        GPM_WORKER__LINGER_MS="50",
    )
    return env


async def test_sigterm_drains_and_exits_zero_without_leaking_secrets(ns: Namespace) -> None:
    """The worker process applies events, exits 0 on SIGTERM, and its logs hold no secret."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=_env(ns),
        cwd=str(ns.stack.workdir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await ns.publish(ns.graph_topic, [upsert(f"p{i}.py", 1, graph([("m", "Module")])) for i in range(3)])

        async def applied() -> bool:
            store = await ns.relational()
            try:
                return (await store.fetch("SELECT count(*) AS n FROM gpm_sources"))[0]["n"] == 3
            except StoreRejected:
                return False  # the worker process has not created its tables yet
            finally:
                await store.close()

        await eventually(applied, what="events applied by the worker process")
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


async def test_bad_setting_fails_at_start_naming_it(ns: Namespace) -> None:
    """An invalid variable stops `gpm run` with exit 2 and the variable's name."""
    env = _env(ns) | {"GPM_WORKER__TRANSACTION_SIZE": "-5"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=env,
        cwd=str(ns.stack.workdir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "GPM_WORKER__TRANSACTION_SIZE" in output.decode()
    assert ns.settings.graph.password.get_secret_value() not in output.decode()
