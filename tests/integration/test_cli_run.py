"""`gpm run` as operators run it: a real process, settings from GPM_* variables, SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, eventually
from worker.errors import StoreRejected

pytestmark = pytest.mark.integration


async def test_sigterm_drains_and_exits_zero_without_leaking_secrets(ns: Namespace) -> None:
    """The worker process applies events, exits 0 on SIGTERM, and its logs hold no secret."""
    proc = await ns.spawn_worker()
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
    proc = await ns.spawn_worker(transaction_size="-5")
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "GPM_WORKER__TRANSACTION_SIZE" in output.decode()
    assert ns.settings.graph.password.get_secret_value() not in output.decode()
