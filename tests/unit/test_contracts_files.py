"""Committed artefacts stay in step with the code: JSON Schemas, examples, compose, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

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
    assert env["GPM_GRAPH__URI"].startswith("bolt://neo4j:")


def test_deploy_manifests_parse() -> None:
    """Every YAML document under deploy/ parses and names its kind."""
    documents = [d for p in sorted((ROOT / "deploy").rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert documents
    assert all("kind" in d for d in documents)
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Kustomization"} <= kinds
