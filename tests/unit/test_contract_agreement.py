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
import os
import uuid
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings

from tests.hostile import documents
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


def _model_accepts(raw: bytes) -> bool:
    try:
        decode_event(raw, **LIMITS)
    except EventError:
        return False
    return True


@settings(
    max_examples=max(400, int(os.environ.get("GPM_TEST_FUZZ_EXAMPLES", "0"))),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
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
