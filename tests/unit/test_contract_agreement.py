"""The pydantic models and the published JSON Schemas accept exactly the same events.

Documents are generated at the edges of the contract (names, values, sizes, versions,
UUID spellings, timestamps) and judged by both: the worker's ``decode_event`` and the
committed ``schemas/event.v1.schema.json``. The rules a schema cannot state
(``SCHEMA_CANNOT_EXPRESS``) hold by construction here and are tested in test_events.py.
An integer is what a JSON parser reads as one (no fraction, no exponent), as the
schemas' ``$comment`` says; the validator's type checker is set to match.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import EventError
from worker.events import decode_event

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "event.v1.schema.json").read_text())
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
    {
        "integer": lambda _, value: type(value) is int,
        "number": lambda _, value: type(value) in {int, float},
    }
)
VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)(SCHEMA)
LIMITS = {"max_bytes": 10_000_000, "max_nodes": 10_000}

_EDGE_TEXT = ["", "Module\n", "x" * 64, "x" * 65, "a`b", "a\x00b", "tab\there", "ünï", "\x7f", " ", "1x", "a-b"]
edge_text = st.one_of(st.sampled_from(_EDGE_TEXT), st.text(max_size=8))
plain_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True)
big_ints = st.sampled_from([0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**30])
finite = st.floats(allow_nan=False, allow_infinity=False)
valid_scalars = st.one_of(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1), finite, st.booleans())
valid_values = st.one_of(
    valid_scalars,
    st.none(),
    st.lists(st.text(max_size=3), max_size=3),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
    st.lists(finite, max_size=3),
    st.lists(st.booleans(), max_size=3),
)
edge_values = st.one_of(big_ints, st.lists(st.one_of(big_ints, finite, st.booleans(), st.text(max_size=2)), max_size=4))
FIELDS = (
    "event_id",
    "source_id",
    "source_version",
    "occurred_at",
    "producer",
    "schema_version",
    "label",
    "rel_type",
    "node_id",
    "prop_name",
    "prop_value",
    "metadata",
)
EDGES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.uuids().flatmap(
        lambda u: st.sampled_from([str(u).upper(), "{" + str(u) + "}", u.urn, u.hex, "not-a-uuid", str(u) + "\n"])
    ),
    "source_id": edge_text,
    "source_version": st.sampled_from([-1, "5", 5.0, True, None, 2**63 - 1, 2**63]),
    "occurred_at": st.sampled_from(
        [
            "2026-12-01T10:00:00.123456+14:00",
            "2026-12-01T10:00:00.1234567Z",
            "2026-12-01T10:00:00",
            "2026-12-01 10:00:00Z",
            "2026-12-01",
            "2026-12-01T10:00:00Z\n",
            1_764_583_200,
        ]
    ),
    "producer": st.sampled_from(["", "line\nbreak", "nul\x00", "x" * 256, "x" * 257]),
    "schema_version": st.sampled_from([1, True, 1.0, 2]),
    "label": st.one_of(st.sampled_from(["AstNode", "Intent", "IMPLEMENTED_BY"]), edge_text),
    "rel_type": st.one_of(st.sampled_from(["AstNode", "Intent", "IMPLEMENTED_BY"]), edge_text),
    "node_id": edge_text,
    "prop_name": st.one_of(st.sampled_from(["key", "type", "name", "x" * 128, "x" * 129]), edge_text),
    "prop_value": edge_values,
    "metadata": st.dictionaries(st.sampled_from(["a\x00", "lang"]), st.text(max_size=4), max_size=2),
}
VALID: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.uuids().map(str),
    "source_id": plain_names,
    "source_version": st.integers(0, 2**63 - 1),
    "occurred_at": st.just("2026-12-01T10:00:00Z"),
    "producer": st.just("tests"),
    "schema_version": st.just(1),
    "label": plain_names,
    "rel_type": plain_names,
    "node_id": plain_names,
    "prop_name": plain_names.filter(lambda n: n not in {"key", "type", "source_id", "node_id", "source_version"}),
    "prop_value": valid_values,
    "metadata": st.dictionaries(plain_names, st.text(max_size=4), max_size=2),
}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event of any type with up to two kinds of field drawn from the edge values."""
    hostile = draw(st.sets(st.sampled_from(FIELDS), max_size=2))

    def pick(field: str) -> Any:
        return draw(EDGES[field] if field in hostile and draw(st.booleans()) else VALID[field])

    event_type = draw(
        st.sampled_from(["ast-graph.upserted", "ast-graph.deleted", "intent-link.upserted", "intent-link.deleted"])
    )
    intent = event_type.startswith("intent")
    document: dict[str, Any] = {
        "event_id": pick("event_id"),
        "event_type": event_type,
        "source_id": pick("event_id") if intent else pick("source_id"),
        "source_version": pick("source_version"),
        "occurred_at": pick("occurred_at"),
        "producer": pick("producer"),
    }
    if draw(st.booleans()):
        document["schema_version"] = pick("schema_version")
    if event_type == "ast-graph.upserted":
        # Unique node ids and edges between them: the rules a schema cannot express hold.
        ids = draw(
            st.lists(
                st.deferred(
                    lambda: (
                        VALID["node_id"] if "node_id" not in hostile else st.one_of(VALID["node_id"], EDGES["node_id"])
                    )
                ),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
        nodes = [{"id": i, "type": pick("label"), "properties": {pick("prop_name"): pick("prop_value")}} for i in ids]
        pairs = draw(st.lists(st.tuples(st.sampled_from(ids), st.sampled_from(ids)), max_size=3, unique=True))
        edges = [{"source": s, "target": t, "type": pick("rel_type")} for s, t in pairs]
        edges = list({(e["source"], e["type"], e["target"]): e for e in edges}.values())
        document["graph"] = {"nodes": nodes, "edges": edges, "metadata": pick("metadata")}
    if event_type == "intent-link.upserted":
        document["ast_nodes"] = [{"source_id": pick("source_id"), "node_id": pick("node_id")}]
    return document


def _model_accepts(raw: bytes) -> bool:
    try:
        decode_event(raw, **LIMITS)
    except EventError:
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_models_and_schemas_agree_on_every_generated_event(document: dict[str, Any]) -> None:
    """An event the worker accepts is valid by the published schema, and the other way round."""
    raw = json.dumps(document).encode()
    schema_errors = [e.message for e in VALIDATOR.iter_errors(document)][:3]
    assert _model_accepts(raw) == (not schema_errors), f"schema says {schema_errors or 'valid'} for {raw[:300]!r}"


def test_the_generator_reaches_both_verdicts() -> None:
    """The agreement test is not vacuous: a plain event is valid by both, a broken one by neither."""
    valid = {
        "event_id": str(uuid.uuid4()),
        "event_type": "ast-graph.upserted",
        "source_id": "a.py",
        "source_version": 1,
        "occurred_at": "2026-12-01T10:00:00Z",
        "producer": "tests",
        "graph": {"nodes": [{"id": "n", "type": "Module", "properties": {"xs": [1.5, 2.0]}}]},
    }
    assert _model_accepts(json.dumps(valid).encode())
    assert VALIDATOR.is_valid(valid)
    broken = {**valid, "graph": {"nodes": [{"id": "n", "type": "Module\n"}]}}
    assert not _model_accepts(json.dumps(broken).encode())
    assert not VALIDATOR.is_valid(broken)
