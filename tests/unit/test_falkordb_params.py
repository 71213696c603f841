"""FalkorDB's query parameters as Cypher literals: exact for what it can store, refused otherwise."""

from __future__ import annotations

import math

import pytest

from worker.stores.falkordb_params import UnstorableValue, literal, with_parameters


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('say "hi" \\ bye', '"say \\"hi\\" \\\\ bye"'),
        ("line\nbreak", '"line\nbreak"'),
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (-(2**63), "-9223372036854775808"),
        (0.1, "0.1"),
        (1e-7, "1e-07"),
        ([1, "a", [True]], '[1,"a",[true]]'),
        ({"a b": 1, "ü": None}, "{`a b`:1,`ü`:null}"),
    ],
)
def test_values_become_literals(value: object, expected: str) -> None:
    """Strings escape only backslash and quote (what FalkorDB reads); maps quote their keys in backticks."""
    assert literal(value) == expected


@pytest.mark.parametrize(
    "value",
    [2**63, -(2**63) - 1, math.inf, math.nan, "nul\x00", {"back`tick": 1}, {"": 1}, b"bytes", object()],
    ids=["int64+1", "int64-1", "inf", "nan", "nul", "backtick-key", "empty-key", "bytes", "object"],
)
def test_values_falkordb_would_change_are_refused(value: object) -> None:
    """FalkorDB clamps big integers and cannot read NUL or backticked keys: refuse, never store something else."""
    with pytest.raises(UnstorableValue):
        literal(value)


def test_header_precedes_the_query() -> None:
    """Parameters go in one CYPHER header; no parameters, no header."""
    assert with_parameters("RETURN $a, $b", {"a": 1, "b": "x"}) == 'CYPHER a=1 b="x" RETURN $a, $b'
    assert with_parameters("RETURN 1", {}) == "RETURN 1"


@pytest.mark.parametrize("name", ["a=1 MATCH (n) DETACH DELETE n RETURN 2 AS one //", "1a", "", "a b", "a`", "é"])
def test_parameter_names_that_would_be_query_text_are_refused(name: str) -> None:
    """On FalkorDB a parameter's name is written into the query: only plain identifiers pass (both adapters)."""
    from worker.errors import StoreRejected
    from worker.stores.cypher import checked_parameters

    with pytest.raises(StoreRejected, match="unsafe query parameter name"):
        checked_parameters({name: 1})
    assert checked_parameters({"rows": 1, "_p2": 2}) == {"rows": 1, "_p2": 2}
