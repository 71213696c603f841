"""Query parameters for FalkorDB, which takes them as Cypher literals in a ``CYPHER`` header.

The client library does the same (``falkordb.helpers.stringify_param_value``) but lets an
integer beyond 64 bits through, which FalkorDB silently clamps to the largest one, and
writes ``float('nan')`` as an identifier. Here both are refused, like the Neo4j driver's
packer refuses them, so a bad value is the data's fault (StoreRejected), never a silent change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class UnstorableValue(ValueError):  # noqa: N818 - a ValueError, named for what it says
    """A value FalkorDB cannot store unchanged."""


def _string(value: str) -> str:
    if "\x00" in value:
        msg = "FalkorDB strings cannot contain NUL characters"
        raise UnstorableValue(msg)
    # Inside double quotes FalkorDB reads \\ and \" as escapes and takes every other
    # character as it is (a \uXXXX escape would stay six characters).
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(key: str) -> str:
    if not key or "`" in key or "\x00" in key:
        msg = f"FalkorDB cannot take the property name {key!r}"
        raise UnstorableValue(msg)
    return f"`{key}`"


def _number(value: float) -> str:
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            msg = f"OverflowError: integer {value} does not fit in 64 bits"
            raise UnstorableValue(msg)
        return str(value)
    if not math.isfinite(value):
        msg = f"FalkorDB cannot store the float {value}"
        raise UnstorableValue(msg)
    return repr(value)


def _scalar(value: Any) -> str:  # noqa: ANN401 - any JSON-like value
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    msg = f"FalkorDB cannot store a {type(value).__name__}"
    raise UnstorableValue(msg)


def literal(value: Any) -> str:  # noqa: ANN401 - any JSON-like value
    """``value`` as a Cypher literal; raises UnstorableValue (a ValueError) when it cannot be stored."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(literal, value)) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_key(str(k))}:{literal(v)}" for k, v in value.items()) + "}"
    return _scalar(value)


def with_parameters(query: str, params: Mapping[str, Any]) -> str:
    """The query preceded by its ``CYPHER name=literal ...`` header."""
    if not params:
        return query
    header = " ".join(f"{name}={literal(value)}" for name, value in params.items())
    return f"CYPHER {header} {query}"
