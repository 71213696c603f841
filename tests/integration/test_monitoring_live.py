"""The dashboard and the alert rules against a real Prometheus scraping a real `gpm run` process."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import yaml

from tests.factories import graph, link, upsert
from tests.integration.conftest import Namespace, assert_clean_exits, eventually, stop_workers
from tests.prometheus import MONITORING, Prometheus
from worker.devstack.process import free_port

MOD = graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")])
# Grafana fills it in from the panel's width and the scrape interval; any window over 2 scrapes serves here.
RATE_INTERVAL = "1m"


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


async def test_every_panel_and_rule_works_on_a_live_worker(ns: Namespace, tmp_path: Path) -> None:
    """Each dashboard query returns series; each rule evaluates; a dead letter fires its alert, nothing else does."""
    await ns.publish(ns.graph_topic, [upsert(f"pkg/m{i}.py", 1, MOD) for i in range(6)])
    await ns.publish(ns.intent_topic, [link(uuid.uuid4(), 1, [("pkg/not-yet.py", "f")])])  # parked
    await ns.publish_raw(ns.graph_topic, b"{not json")  # dead-lettered
    port = free_port()
    process = await ns.spawn_worker(env={"GPM_HEALTH__PORT": str(port)}, parked_report_interval_s="1")
    prometheus = await asyncio.to_thread(Prometheus(tmp_path, [f"127.0.0.1:{port}"]).start)
    try:
        await ns.wait_committed(8)

        async def scraped_since_applied() -> bool:
            # Rates need two samples in their window: wait for three scrapes that saw everything applied.
            seen = await asyncio.to_thread(
                prometheus.query,
                "count_over_time(gpm_graph_nodes_written_total[1m]) >= 3 and gpm_graph_nodes_written_total >= 12",
            )
            return bool(seen)

        await eventually(scraped_since_applied, timeout_s=60, what="three scrapes of the worker after the drain")
        empty = [
            (title, expr) for title, expr in _panel_queries() if not await asyncio.to_thread(prometheus.query, expr)
        ]
        assert not empty, f"panels whose query returns no series: {empty}"

        rules = await asyncio.to_thread(prometheus.api, "rules")
        evaluated = {r["name"]: r for g in rules["groups"] for r in g["rules"]}
        expected = {
            r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]
        }
        assert set(evaluated) == expected
        assert all(r["health"] == "ok" for r in evaluated.values()), {
            n: r.get("lastError") for n, r in evaluated.items()
        }

        async def dead_letter_alert_fires() -> bool:
            alerts = (await asyncio.to_thread(prometheus.api, "alerts"))["alerts"]
            return any(a["labels"]["alertname"] == "GpmDeadLetters" and a["state"] == "firing" for a in alerts)

        await eventually(dead_letter_alert_fires, timeout_s=30, what="GpmDeadLetters firing for the invalid record")
        alerts = (await asyncio.to_thread(prometheus.api, "alerts"))["alerts"]
        assert {a["labels"]["alertname"] for a in alerts} == {"GpmDeadLetters"}, alerts
        # The healthy worker's series make the other conditions false now, not only not yet past their `for`.
        for rule in evaluated.values():
            if rule["name"] != "GpmDeadLetters":
                assert not await asyncio.to_thread(prometheus.query, rule["query"]), rule["name"]
    finally:
        prometheus.stop()
        output = await stop_workers(process)
    assert_clean_exits([process], output)
