"""The alert rules, their unit tests, the PrometheusRule and the dashboard in deploy/monitoring."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, ProcessCollector

from tests.monitoring import PROMETHEUS_RULE, RULES, prometheus_rule
from tests.prometheus import MONITORING, ROOT, promtool
from worker.telemetry import WorkerMetrics

RUNBOOK = ROOT / "docs" / "operations.md"
RUNBOOK_URL = "https://github.com/graph-postgres-manager/graph-postgres-manager/blob/main/docs/operations.md#"
_METRIC = re.compile(r"\b(?:gpm|process)_[a-z_]+\b")


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def exported_metric_names() -> set[str]:
    """Every sample name the worker's /metrics can carry: its own families and the process collector's."""
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    ProcessCollector(registry=registry)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes.get(family.type, ("",))}


def test_the_rules_file_passes_promtool_check() -> None:
    """`promtool check rules` accepts every rule."""
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in checked.stdout


def test_each_alert_fires_on_its_series_and_stays_quiet_on_healthy_ones() -> None:
    """`promtool test rules` passes, and every alert is tested both firing and quiet."""
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for alert in _alerts():
        assert set(cases.get(alert["alert"], [])) == {True, False}, f"{alert['alert']}: fires and stays quiet"


def test_every_alert_has_a_severity_a_summary_and_its_runbook_section() -> None:
    """Labels and annotations a pager and an operator need; each runbook_url names a section that exists."""
    sections = {_anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("### ")}
    names = [alert["alert"] for alert in _alerts()]
    assert len(names) == len(set(names))
    for alert in _alerts():
        assert alert["labels"]["severity"] in {"warning", "critical"}
        annotations = alert["annotations"]
        assert annotations["summary"].strip()
        assert annotations["description"].strip()
        url = annotations["runbook_url"]
        assert url == RUNBOOK_URL + alert["alert"].lower()
        assert url.rsplit("#", 1)[1] in sections, f"docs/operations.md has no section for {alert['alert']}"


def test_the_alerts_cover_what_operators_must_be_paged_for() -> None:
    """Stalls, lag, dead letters, outbox, parked links, readiness, the group, outages, retention."""
    assert {alert["alert"] for alert in _alerts()} >= {
        "GpmPartitionStalled",
        "GpmConsumerLagHigh",
        "GpmDeadLetters",
        "GpmOutboxPendingTooLong",
        "GpmOutboxFailed",
        "GpmIntentLinksUnresolved",
        "GpmWorkerNotReady",
        "GpmNoWorkerInGroup",
        "GpmStoreOutage",
        "GpmBookkeepingNotPruned",
    }


def test_the_prometheus_rule_is_written_from_the_rules_file() -> None:
    """deploy/monitoring/prometheusrule.yaml holds alerts.yml's groups (run `make monitoring` after an edit)."""
    assert PROMETHEUS_RULE.read_text() == prometheus_rule(), "out of date: run `make monitoring`"
    document = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert document["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_rules_and_dashboard_name_only_metrics_the_worker_exports() -> None:
    """A renamed metric breaks this test, not a silent panel or an alert that can never fire."""
    exported = exported_metric_names()
    used = {name for expr in [a["expr"] for a in _alerts()] + _dashboard_exprs() for name in _METRIC.findall(expr)}
    assert used, "no metric names found in the rules and the dashboard"
    assert used <= exported, f"not exported by the worker: {sorted(used - exported)}"


def test_the_dashboard_shows_what_operators_watch() -> None:
    """Throughput, lag, last applied, batch quantiles, dead letters, outbox, parked links, freshness, memory."""
    exprs = " ".join(_dashboard_exprs())
    for metric in (
        "gpm_events_consumed_total",
        "gpm_graph_nodes_written_total",
        "gpm_graph_edges_written_total",
        "gpm_consumer_lag",
        "gpm_last_applied_timestamp_seconds",
        "gpm_batch_duration_seconds_bucket",
        "gpm_events_dead_lettered_total",
        "gpm_outbox_rows",
        "gpm_intent_links_parked",
        "gpm_event_freshness_seconds_bucket",
        "process_resident_memory_bytes",
    ):
        assert metric in exprs, metric
    quantiles = set(re.findall(r"histogram_quantile\((0\.\d+), sum by \(le\) \(rate\(gpm_batch_duration", exprs))
    assert quantiles == {"0.5", "0.95", "0.99"}
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(t["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] for t in p.get("targets", []))


def test_exported_names_match_what_a_worker_serves() -> None:
    """The name list the checks above rely on: counters end in _total, histograms have buckets."""
    names = exported_metric_names()
    assert {"gpm_events_dead_lettered_total", "gpm_batch_duration_seconds_bucket", "gpm_worker_ready"} <= names
    assert "gpm_events_dead_lettered" not in names
