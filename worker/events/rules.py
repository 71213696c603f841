"""Validation rules every store needs, and the field types that carry them (no models here)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    Strict,
    StrictBool,
    StrictStr,
)

T = TypeVar("T")

SCHEMA_VERSION = 1
# Validation is the contract of every store: an event that validates can be written to
# PostgreSQL and to every graph backend. Each rule below names the store it protects; the
# JSON Schemas in schemas/ carry the same rules (tests/unit/test_contract_agreement.py),
# except the few a schema cannot express (listed in SCHEMA_CANNOT_EXPRESS).
#
# Node types become Cypher labels and edge types relationship types. Neither can be a
# query parameter, so they are spliced into query text: this pattern is the guard, always
# applied with fullmatch (``$`` alone would let a trailing newline through).
CYPHER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# The schemas' patterns end in (?![\s\S]), "no character follows", which means the end
# of input in every regex dialect: a bare $ also matches before a final newline in
# Python's re (which the jsonschema package uses), so "Module\n" would pass.
SCHEMA_END = r"(?![\s\S])"
_CYPHER_NAME_SCHEMA = "^[A-Za-z][A-Za-z0-9_]{0,63}" + SCHEMA_END
# PostgreSQL's text and jsonb cannot hold NUL; the other control characters are refused in
# identifiers because they make keys, logs and operators' tools lie.
NO_CONTROL_SCHEMA = r"^[^\u0000-\u001f\u007f]*" + SCHEMA_END
# Property names: FalkorDB writes them backticked in query text, and cannot take a NUL.
_PROPERTY_NAME_SCHEMA = r"^[^\u0000-\u001f\u007f`]+" + SCHEMA_END
BAD_PROPERTY_NAME = re.compile(r"[\x00-\x1f\x7f`]")
# The canonical spelling only: one intent, one aggregate key (upper case, braces and
# ``urn:uuid:`` spell the same UUID differently).
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_SCHEMA = "^" + _UUID + SCHEMA_END
_CANONICAL_UUID = re.compile(_UUID)
# RFC 3339 with a mandatory offset: what PostgreSQL's timestamptz and every producer agree on.
_TIMESTAMP_FORM = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
_TIMESTAMP_SCHEMA = "^" + _TIMESTAMP_FORM + SCHEMA_END
_TIMESTAMP = re.compile(_TIMESTAMP_FORM)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SOURCE_ID_MAX = 512  # characters
MAX_RELATIONSHIP_TYPES = 1000  # per graph: an AST has a few dozen field names
METADATA_MAX_DEPTH = 32  # jsonb and the decoder's pickling both have recursion limits
# Rules of the models that a JSON Schema cannot state; the agreement test knows them.
SCHEMA_CANNOT_EXPRESS = (
    "node ids unique within a graph",
    "edges name nodes of the same graph",
    "no two edges with the same (source, type, target)",
    "at most 1000 relationship types in one graph",
    "metadata at most 32 levels deep, integers within int64, no NUL in any string",
    "occurred_at within the years 1 to 9999 in UTC",
    "strings are Unicode text: a \\uD800-\\uDFFF escape only as half of a surrogate pair",
)
RESERVED_LABELS = frozenset({"AstNode", "Intent"})
RESERVED_RELATIONSHIPS = frozenset({"IMPLEMENTED_BY"})
# Written by the stores on every node; a producer property with one of these names
# would be silently overwritten, so it is refused instead.
RESERVED_PROPERTIES = frozenset({"key", "source_id", "node_id", "type", "source_version"})
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class EventType(StrEnum):
    """The kinds of event the worker accepts."""

    AST_GRAPH_UPSERTED = "ast-graph.upserted"
    AST_GRAPH_DELETED = "ast-graph.deleted"
    INTENT_LINK_UPSERTED = "intent-link.upserted"
    INTENT_LINK_DELETED = "intent-link.deleted"


def no_control_chars(value: str) -> str:
    """``value``, or ValueError if it holds a control character (a field validator)."""
    if CONTROL_CHARACTERS.search(value):
        msg = "must not contain control characters"
        raise ValueError(msg)
    return value


def no_control_chars_in(value: str, where: str) -> None:
    """ValueError naming ``where`` if ``value`` holds a control character."""
    if CONTROL_CHARACTERS.search(value):
        msg = f"{where} must not contain control characters"
        raise ValueError(msg)


def _cypher_name(kind: str, reserved: frozenset[str]) -> Callable[[str], str]:
    """A validator for names that are spliced into Cypher text as labels or relationship types."""

    def check(value: str) -> str:
        if not CYPHER_NAME.fullmatch(value):
            msg = f"{value!r} is not a safe Cypher {kind} (letters, digits, '_', starting with a letter, max 64)"
            raise ValueError(msg)
        if value in reserved:
            msg = f"{value!r} is reserved"
            raise ValueError(msg)
        return value

    return check


Identifier = Annotated[
    str,
    Field(min_length=1, max_length=SOURCE_ID_MAX, json_schema_extra={"pattern": NO_CONTROL_SCHEMA}),
    AfterValidator(no_control_chars),
]
check_label = _cypher_name("label", RESERVED_LABELS)
check_relationship_type = _cypher_name("relationship type", RESERVED_RELATIONSHIPS)
# Inside a graph, ids, types and property values are checked once per graph by
# GraphData._consistent, in plain Python: a per-field validator costs a Rust-to-Python
# call per node (measured: half of decoding a 133k-node corpus, 5.5 s of 24k nodes/s).
GraphId = Annotated[str, Field(min_length=1, max_length=512, json_schema_extra={"pattern": NO_CONTROL_SCHEMA})]
# Checked once per graph too (GraphData._consistent); the schema states the same rule.
Label = Annotated[
    str, Field(json_schema_extra={"pattern": _CYPHER_NAME_SCHEMA, "not": {"enum": sorted(RESERVED_LABELS)}})
]
RelationshipType = Annotated[
    str, Field(json_schema_extra={"pattern": _CYPHER_NAME_SCHEMA, "not": {"enum": sorted(RESERVED_RELATIONSHIPS)}})
]


# Property values Neo4j can store: scalars or homogeneous lists of scalars. Integers are
# 64-bit in Bolt; a larger one would fail inside the driver, so GraphData refuses it.
# (int before float in the union keeps a large integer an int, to be found and refused.)
INT64 = range(INT64_MIN, INT64_MAX + 1)  # the integers every graph store here can hold


def _int64_problem(properties: Mapping[str, object]) -> str | None:
    for name, value in properties.items():
        values = value if isinstance(value, list) else (value,)
        if any(type(v) is int and v not in INT64 for v in values):
            return f"properties.{name}: integers must fit in 64 bits"
    return None


Scalar = str | int | float | bool
# Strict: "5" stays a string and true a boolean, and a list holds one type (Neo4j stores
# homogeneous lists only): [true, 1] and [1, 2.5] are refused instead of becoming [1, 1]
# and [1.0, 2.5]. An integer is a JSON number written without a fraction or exponent, as
# parsers read it (JSON Schema's own "integer" would also take 1.0; schemas/ says so).
_Int = Annotated[int, Strict(), Field(json_schema_extra={"minimum": INT64_MIN, "maximum": INT64_MAX})]
_FLOAT_SCHEMA: dict[str, Any] = {"not": {"type": "integer"}}
_Float = Annotated[float, Strict(), Field(allow_inf_nan=False, json_schema_extra=_FLOAT_SCHEMA)]


def _not_int(value: object) -> object:
    if type(value) is int:
        msg = "a list of floats cannot hold an integer (write 1.0, or send a list of integers)"
        raise ValueError(msg)
    return value


# In lists only: a scalar integer is matched as one before a float is tried.
_ListFloat = Annotated[float, BeforeValidator(_not_int), Strict(), Field(json_schema_extra=_FLOAT_SCHEMA)]
PropertyValue = (
    StrictStr | _Int | _Float | StrictBool | list[StrictStr] | list[_Int] | list[_ListFloat] | list[StrictBool] | None
)
PropertyName = Annotated[str, Field(min_length=1, max_length=128)]


def _property_names_schema(schema: dict[str, Any]) -> None:
    # pydantic drops a pattern given to a dict's key type, so the rule is added here.
    schema.setdefault("propertyNames", {}).update(
        {"pattern": _PROPERTY_NAME_SCHEMA, "not": {"enum": sorted(RESERVED_PROPERTIES)}}
    )


Properties = Annotated[dict[PropertyName, PropertyValue], Field(json_schema_extra=_property_names_schema)]


def check_properties(properties: Properties, where: str, *, int64: bool = True) -> None:
    """ValueError naming ``where`` and the first property no store can hold (``int64``: check integers too)."""
    clash = RESERVED_PROPERTIES.intersection(properties)
    if clash:
        msg = f"{where}: property names {sorted(clash)} are reserved"
        raise ValueError(msg)
    for name in properties:
        if BAD_PROPERTY_NAME.search(name):
            msg = f"{where}: property name {name!r} holds a control character or a backtick"
            raise ValueError(msg)
    if int64 and (problem := _int64_problem(properties)):
        msg = f"{where}: {problem}"
        raise ValueError(msg)


def _canonical_uuid(value: T) -> T:
    if isinstance(value, str) and not _CANONICAL_UUID.fullmatch(value):
        msg = "must be a UUID in canonical form (lower-case hexadecimal, 8-4-4-4-12)"
        raise ValueError(msg)
    return value


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not _TIMESTAMP.fullmatch(value):
        msg = "must be an RFC 3339 timestamp with an offset, e.g. 2026-01-31T12:00:00Z"
        raise ValueError(msg)
    if not isinstance(value, str | datetime):
        msg = "must be an RFC 3339 timestamp string"
        raise ValueError(msg)  # noqa: TRY004 - pydantic reports ValueErrors; no Unix seconds (a unit mistake passes silently)
    return value


def _storable_instant(value: datetime) -> datetime:
    if value.tzinfo is None:
        msg = "occurred_at must carry a time zone"
        raise ValueError(msg)
    try:
        value.astimezone(UTC)
    except OverflowError:
        msg = "occurred_at is out of range once in UTC (years 1 to 9999)"
        raise ValueError(msg) from None
    return value


def exact_int(value: object) -> object:
    """``value`` if it is an int (not a bool, a float or a string), else ValueError (a before-validator)."""
    if type(value) is not int:  # true, 1.0 and "1" are not the integer 1
        msg = "must be an integer"
        raise ValueError(msg)
    return value


EventId = Annotated[UUID, BeforeValidator(_canonical_uuid), Field(json_schema_extra={"pattern": _UUID_SCHEMA})]
Version = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]  # a bigint in PostgreSQL
Timestamp = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    AfterValidator(_storable_instant),
    Field(json_schema_extra={"pattern": _TIMESTAMP_SCHEMA}),
]
IntentKey = Annotated[
    str,
    Field(min_length=36, max_length=36, json_schema_extra={"pattern": _UUID_SCHEMA}),
    AfterValidator(_canonical_uuid),
]


NO_LONG_NUMBERS = "gpm.no-long-numbers"
