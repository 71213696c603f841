r"""Query parameters for FalkorDB, which takes them as Cypher literals in a ``CYPHER`` header.

The client library does the same (``falkordb.helpers.stringify_param_value``) but lets an
integer beyond 64 bits through, which FalkorDB silently clamps to the largest one, and
writes ``float('nan')`` as an identifier. Here both are refused, like the Neo4j driver's
packer refuses them, so a bad value is the data's fault (StoreRejected), never a silent change.

Speed: a batch's parameters are hundreds of thousands of values, and a Python call per
value was half of the worker's CPU on FalkorDB (py-spy). Lists without maps are written by
orjson instead: JSON arrays, numbers, booleans and strings are Cypher literals as
FalkorDB reads them, except four cases that send the value down the exact path:
``\u`` escapes (FalkorDB keeps them verbatim), ``null`` (orjson's NaN and infinity),
19-digit numbers (maybe past int64) and ``":`` (an object key). A string merely
containing one of these only costs the slower path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

from worker.events import INT64, has_long_number


class UnstorableValue(ValueError):  # noqa: N818 - a ValueError, named for what it says
    """A value FalkorDB cannot store unchanged."""


def _string(value: str) -> str:
    if "\x00" in value:
        msg = f"FalkorDB strings cannot contain NUL characters: {value[:40]!r}"
        raise UnstorableValue(msg)
    # Inside double quotes FalkorDB reads \\ and \" as escapes and takes every other
    # character as it is (a \uXXXX escape would stay six characters).
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cypher_key(key: str) -> str:
    """A property name as a backticked identifier, or UnstorableValue."""
    if not key or "`" in key or "\x00" in key:
        msg = f"FalkorDB cannot take the property name {key!r}"
        raise UnstorableValue(msg)
    return f"`{key}`"


def _number(value: float) -> str:
    if isinstance(value, int):
        if value not in INT64:
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
        return "{" + ",".join(f"{cypher_key(str(k))}:{literal(v)}" for k, v in value.items()) + "}"
    return _scalar(value)


def _plain_json(encoded: bytes) -> bool:
    # Substring searches, not one regex: the regex was two thirds of this function's time.
    return not (b"\\u" in encoded or b"null" in encoded or b'":' in encoded or has_long_number(encoded))


def fast_literal(value: Any) -> str:  # noqa: ANN401 - any JSON-like value
    """The same as :func:`literal`, written by orjson when that is exact (see the module doc)."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:  # beyond 64 bits, or not JSON at all: the exact path says why
        return literal(value)
    if not _plain_json(encoded):
        return literal(value)
    return encoded.decode()


def with_parameters(query: str, params: Mapping[str, Any]) -> str:
    """The query preceded by its ``CYPHER name=literal ...`` header."""
    if not params:
        return query
    header = " ".join(f"{name}={fast_literal(value)}" for name, value in params.items())
    return f"CYPHER {header} {query}"
