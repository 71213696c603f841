"""Event contracts: the versioned envelope and the four event types; source of schemas/.

Node identity: a node ``id`` is unique within its source (one source file), so the
store key of a node is ``(source_id, id)``. Edges join nodes of the same event only.
Intent links name AST nodes by ``(source_id, node_id)``.

Versions: every event carries ``source_version``, an integer that grows with each
change of its aggregate (a source file, or an intent). The stores never let a lower
version overwrite a higher one, so out-of-order delivery and replays are harmless.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired, TypeVar
from uuid import UUID, uuid5

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from worker.errors import EventError

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
_END = r"(?![\s\S])"
_CYPHER_NAME_SCHEMA = "^[A-Za-z][A-Za-z0-9_]{0,63}" + _END
# PostgreSQL's text and jsonb cannot hold NUL; the other control characters are refused in
# identifiers because they make keys, logs and operators' tools lie.
_NO_CONTROL_SCHEMA = r"^[^\u0000-\u001f\u007f]*" + _END
# Property names: FalkorDB writes them backticked in query text, and cannot take a NUL.
_PROPERTY_NAME_SCHEMA = r"^[^\u0000-\u001f\u007f`]+" + _END
_BAD_PROPERTY_NAME = re.compile(r"[\x00-\x1f\x7f`]")
# The canonical spelling only: one intent, one aggregate key (upper case, braces and
# ``urn:uuid:`` spell the same UUID differently).
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_SCHEMA = "^" + _UUID + _END
_CANONICAL_UUID = re.compile(_UUID)
# RFC 3339 with a mandatory offset: what PostgreSQL's timestamptz and every producer agree on.
_TIMESTAMP_FORM = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
_TIMESTAMP_SCHEMA = "^" + _TIMESTAMP_FORM + _END
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


def _no_control_chars(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        msg = "must not contain control characters"
        raise ValueError(msg)
    return value


def _no_control_chars_in(value: str, where: str) -> None:
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
    Field(min_length=1, max_length=SOURCE_ID_MAX, json_schema_extra={"pattern": _NO_CONTROL_SCHEMA}),
    AfterValidator(_no_control_chars),
]
_check_label = _cypher_name("label", RESERVED_LABELS)
_check_relationship_type = _cypher_name("relationship type", RESERVED_RELATIONSHIPS)
# Inside a graph, ids, types and property values are checked once per graph by
# GraphData._consistent, in plain Python: a per-field validator costs a Rust-to-Python
# call per node (measured: half of decoding a 133k-node corpus, 5.5 s of 24k nodes/s).
GraphId = Annotated[str, Field(min_length=1, max_length=512, json_schema_extra={"pattern": _NO_CONTROL_SCHEMA})]
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


def _check_properties(properties: Properties, where: str, *, int64: bool = True) -> None:
    clash = RESERVED_PROPERTIES.intersection(properties)
    if clash:
        msg = f"{where}: property names {sorted(clash)} are reserved"
        raise ValueError(msg)
    for name in properties:
        if _BAD_PROPERTY_NAME.search(name):
            msg = f"{where}: property name {name!r} holds a control character or a backtick"
            raise ValueError(msg)
    if int64 and (problem := _int64_problem(properties)):
        msg = f"{where}: {problem}"
        raise ValueError(msg)


# Nodes and edges are TypedDicts, not models: pydantic builds a model instance per node
# at about 9 us, a TypedDict at about 2 (measured on 215k stdlib nodes), and decoding
# was the worker's largest CPU cost. They are plain dicts after validation: treat them
# as read-only. ``properties`` is always present (an empty dict when the event has none).
@with_config(ConfigDict(extra="forbid"))
class Node(TypedDict):
    """One graph node: an AST node of the source file."""

    id: GraphId
    type: Label
    properties: NotRequired[Annotated[Properties, Field(default_factory=dict)]]


@with_config(ConfigDict(extra="forbid"))
class Edge(TypedDict):
    """A directed, typed edge between two nodes of the same graph."""

    source: GraphId
    target: GraphId
    type: RelationshipType
    properties: NotRequired[Annotated[Properties, Field(default_factory=dict)]]


class GraphData(BaseModel):
    """The seed format: nodes, edges and free-form metadata of one source's graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: list[Node]
    edges: list[Edge] = Field(default_factory=list)
    metadata: Annotated[
        dict[str, Any],
        Field(
            default_factory=dict,
            description="Free-form JSON, stored in PostgreSQL (jsonb): at most 32 levels deep, "
            "integers within int64, no NUL character in any key or string.",
            json_schema_extra={"propertyNames": {"pattern": r"^[^\u0000]*" + _END}},
        ),
    ]

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        if metadata and (problem := _json_problem(metadata, "metadata", METADATA_MAX_DEPTH)):
            raise ValueError(problem)
        return metadata

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> GraphData:
        # decode_event knows from the raw bytes whether any number is long enough to
        # exceed 64 bits; the per-value check was half of decoding (py-spy).
        int64 = not (info.context and info.context.get(NO_LONG_NUMBERS))
        if int64 or not self._plausible():
            self._raise_first_problem(int64=int64)
        for label in {node["type"] for node in self.nodes}:
            _check_label(label)
        rel_types = {edge["type"] for edge in self.edges}
        if len(rel_types) > MAX_RELATIONSHIP_TYPES:
            # Each new type is a query plan on Neo4j (about 8 ms; dynamic types are wrong in
            # 5.26.0): 15,000 in one event held its partition for minutes.
            msg = f"{len(rel_types)} relationship types in one graph; at most {MAX_RELATIONSHIP_TYPES}"
            raise ValueError(msg)
        for rel_type in rel_types:
            _check_relationship_type(rel_type)
        return self

    def _plausible(self) -> bool:
        """Every check but labels and int64 in whole-graph set operations (no Python call per node).

        A check per node was the largest part of decoding once nodes were TypedDicts; the
        exact reason for a failure comes from ``_raise_first_problem``.
        """
        nodes, edges = self.nodes, self.edges
        ids = {node["id"] for node in nodes}
        ends = {edge["source"] for edge in edges} | {edge["target"] for edge in edges}
        names = set().union(*(node["properties"] for node in nodes), *(edge["properties"] for edge in edges))
        return (
            len(ids) == len(nodes)
            and ends <= ids
            and len({(edge["source"], edge["type"], edge["target"]) for edge in edges}) == len(edges)
            and RESERVED_PROPERTIES.isdisjoint(names)
            and not CONTROL_CHARACTERS.search("".join(ids))
            and not _BAD_PROPERTY_NAME.search("".join(names))
        )

    def _raise_first_problem(self, *, int64: bool) -> None:
        """Check node by node and raise ValueError naming the first problem found."""
        ids: set[str] = set()
        for node in self.nodes:
            node_id = node["id"]
            if node_id in ids:
                msg = f"duplicate node id {node_id!r}"
                raise ValueError(msg)
            ids.add(node_id)
            _check_properties(node["properties"], f"node {node_id!r}", int64=int64)
        for node_id in ids:
            _no_control_chars_in(node_id, f"node id {node_id!r}")
        seen: set[tuple[str, str, str]] = set()
        for edge in self.edges:
            source, target, rel_type = edge["source"], edge["target"], edge["type"]
            for end in (source, target):
                if end not in ids:
                    msg = f"edge {source!r}-[{rel_type}]->{target!r} names unknown node {end!r}"
                    raise ValueError(msg)
            identity = (source, rel_type, target)
            if identity in seen:
                msg = f"duplicate edge {source!r}-[{rel_type}]->{target!r}"
                raise ValueError(msg)
            seen.add(identity)
            _check_properties(edge["properties"], f"edge {source!r}->{target!r}", int64=int64)

    @property
    def rows(self) -> int:
        """Graph rows this graph writes: the unit ``transaction_size`` counts."""
        return len(self.nodes) + len(self.edges)

    @property
    def left_behind(self) -> bool:
        """Whether this graph came again unchanged and was left in its record (see ``LeftBehind``)."""
        return isinstance(self.nodes, LeftBehind)


def _json_problem(value: object, where: str, depth: int) -> str | None:
    """Why a free-form JSON value cannot be stored in jsonb unchanged, or None."""
    if depth < 0:
        return f"{where}: nested deeper than {METADATA_MAX_DEPTH} levels"
    if isinstance(value, list | dict):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and (not isinstance(key, str) or "\x00" in key):
                return f"{where}: keys must be strings without NUL characters"
            if inner := _json_problem(item, f"{where}.{key}", depth - 1):
                return inner
        return None
    problem: str | None = None
    if isinstance(value, str) and "\x00" in value:
        problem = f"{where}: strings cannot contain NUL characters"
    elif type(value) is int and value not in INT64:
        problem = f"{where}: integers must fit in 64 bits"
    elif isinstance(value, float) and not math.isfinite(value):
        problem = f"{where}: numbers must be finite"
    elif not (value is None or isinstance(value, str | int | float | bool)):
        problem = f"{where}: {type(value).__name__} is not a JSON value"
    return problem


_LEFT_BEHIND = "this graph came again unchanged and was left in its record (restore_graph reads it)"


class LeftBehind(Sequence[Any]):
    """The nodes (or edges) of a graph that came again unchanged, kept as their number only.

    Nothing of such a graph is written, so the worker does not carry it from the decoder
    process (pickling it cost as much as checking it); reading one is a bug, and raises.
    ``restore_graph`` reads it back from the record when it is needed after all.
    """

    __slots__ = ("_count",)

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int | slice) -> Any:  # noqa: ANN401 - a Sequence of anything
        raise LookupError(_LEFT_BEHIND)

    def __iter__(self) -> Iterator[Any]:
        raise LookupError(_LEFT_BEHIND)

    def __reduce__(self) -> tuple[type[LeftBehind], tuple[int]]:
        return LeftBehind, (self._count,)


# Digests computed where a graph was decoded (a decoder process), for the graph objects the
# worker holds: plan_batch asks for each upsert's digest, and computing it again cost the
# consume loop half a second per 133k nodes. Weak: an entry goes with its graph.
_digests: dict[int, tuple[weakref.ref[GraphData], bytes]] = {}


def remember_digest(graph: GraphData, digest: bytes) -> None:
    """Tell ``graph_digest`` what ``graph``'s digest is (computed elsewhere from the same content)."""
    key = id(graph)
    _digests[key] = (weakref.ref(graph, lambda _: _digests.pop(key, None)), digest)


def graph_digest(graph: GraphData) -> bytes:
    """A digest of the graph's nodes and edges (metadata aside: PostgreSQL keeps it in every version).

    Node and edge order and property order do not matter: the same graph, re-published in
    another order, has the same digest.
    """
    known = _digests.get(id(graph))
    if known is not None and known[0]() is graph:
        return known[1]
    return _digest_of(graph.nodes, graph.edges)


def _digest_of(nodes: list[Any], edges: list[Any]) -> bytes:
    """``graph_digest`` of node and edge lists (raises on lists that are no graph: see _unchanged_upsert)."""
    in_order = sorted(nodes, key=lambda node: node["id"])
    edges_in_order = sorted(edges, key=lambda edge: (edge["source"], edge["type"], edge["target"]))
    return hashlib.blake2b(
        orjson.dumps([in_order, edges_in_order], option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()


class AstNodeRef(BaseModel):
    """A reference to one AST node by its identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_id: Identifier
    node_id: Identifier


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


def _exact_int(value: object) -> object:
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


class Envelope(BaseModel):
    """Fields every event carries. ``source_id`` is also the Kafka key."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "$comment": "An integer is a JSON number written without a fraction or exponent, as JSON parsers "
            "read it: 1.0 is a float here, where JSON Schema's own 'integer' would take it. Not expressed here: "
            + "; ".join(SCHEMA_CANNOT_EXPRESS)
            + "."
        },
    )

    event_id: EventId
    schema_version: Annotated[Literal[1], BeforeValidator(_exact_int)] = 1
    source_id: Identifier
    source_version: Version
    occurred_at: Timestamp
    producer: Annotated[
        str,
        Field(min_length=1, max_length=256, json_schema_extra={"pattern": _NO_CONTROL_SCHEMA}),
        AfterValidator(_no_control_chars),
    ]

    @property
    def rows(self) -> int:
        """Graph rows this event writes (at least 1: every event costs a write)."""
        return 1


class AstGraphUpserted(Envelope):
    """A source file's whole graph; replaces any earlier version of that source."""

    event_type: Literal[EventType.AST_GRAPH_UPSERTED]
    graph: GraphData

    @property
    def rows(self) -> int:
        """Nodes plus edges."""
        return max(1, self.graph.rows)


class AstGraphDeleted(Envelope):
    """The source file is gone: remove its graph (a tombstone keeps its version)."""

    event_type: Literal[EventType.AST_GRAPH_DELETED]


class Tombstone(AstGraphDeleted):
    """A record without a value, keyed by a source id: that source is deleted as of its offset.

    The convention of compacted topics (and of Kafka Connect sinks): replaying a compacted
    ``ast-graphs`` rebuilds the stores. Not a published event type: the consumer makes it
    from the record. It carries no version of its own; ``plan_batch`` gives it the version
    it deletes (the applied one, or the newest before it in its batch), so an older event
    replayed later stays superseded and the source's next version still applies.
    """


TOMBSTONE_PRODUCER = "kafka-tombstone"
_TOMBSTONE_IDS = UUID("6c0b1f0e-2d1e-4d57-9a5e-7b1c9e0f3a10")  # namespace of tombstones' event ids


def is_source_id(text: str) -> bool:
    """Whether ``text`` can be an event's ``source_id`` as a Kafka key names it (Identifier's rules)."""
    return 0 < len(text) <= SOURCE_ID_MAX and not CONTROL_CHARACTERS.search(text)


def tombstone(key: bytes | None, topic: str, partition: int, offset: int, timestamp_ms: int) -> Tombstone:
    """The deletion a value-less record keyed ``key`` asks for, or EventError if the key is no source id.

    Its event id is derived from the record's position, so a replayed tombstone is a duplicate.
    """
    try:
        source_id = (key or b"").decode()
    except UnicodeDecodeError:
        source_id = ""
    if not is_source_id(source_id):
        raise EventError("invalid", "a record without a value (a tombstone) must be keyed by a source id")
    try:
        occurred_at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        # The producer sets CreateTime: any int64. A tombstone's time is its record's.
        msg = f"a tombstone's record timestamp {timestamp_ms} ms is outside the years 1 to 9999"
        raise EventError("invalid", msg) from None
    return Tombstone.model_construct(
        event_id=uuid5(_TOMBSTONE_IDS, f"{topic}:{partition}:{offset}"),
        event_type=EventType.AST_GRAPH_DELETED,
        schema_version=1,
        source_id=source_id,
        source_version=-1,  # set by plan_batch
        occurred_at=occurred_at,
        producer=TOMBSTONE_PRODUCER,
    )


class IntentLinkUpserted(Envelope):
    """The intent ``source_id`` (a UUID) maps to exactly these AST nodes now."""

    event_type: Literal[EventType.INTENT_LINK_UPSERTED]
    source_id: IntentKey
    ast_nodes: list[AstNodeRef] = Field(max_length=100_000)

    @property
    def intent_id(self) -> UUID:
        """The intent this event is about."""
        return UUID(self.source_id)

    @property
    def rows(self) -> int:
        """One row per link."""
        return max(1, len(self.ast_nodes))


class IntentLinkDeleted(Envelope):
    """The intent ``source_id`` is gone, with all its links."""

    event_type: Literal[EventType.INTENT_LINK_DELETED]
    source_id: IntentKey

    @property
    def intent_id(self) -> UUID:
        """The intent this event is about."""
        return UUID(self.source_id)


Event = Annotated[
    AstGraphUpserted | AstGraphDeleted | IntentLinkUpserted | IntentLinkDeleted,
    Field(discriminator="event_type"),
]
EVENT_MODELS: dict[EventType, type[Envelope]] = {
    EventType.AST_GRAPH_UPSERTED: AstGraphUpserted,
    EventType.AST_GRAPH_DELETED: AstGraphDeleted,
    EventType.INTENT_LINK_UPSERTED: IntentLinkUpserted,
    EventType.INTENT_LINK_DELETED: IntentLinkDeleted,
}
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


NO_LONG_NUMBERS = "gpm.no-long-numbers"
# Every digit becomes "0" and every other byte a space, so a run of 19 digits is a plain
# substring search: about ten times cheaper than the regex ``\d{19}`` on graph-sized bytes.
_DIGITS_AS_ZEROS = bytes(ord("0") if chr(b) in "0123456789" else ord(" ") for b in range(256))
_NINETEEN_DIGITS = b"0" * 19


def has_long_number(data: bytes, digits: int = 19) -> bool:
    """Whether ``data`` holds a run of ``digits`` or more ASCII digits (19: a number that may not fit in int64)."""
    return b"0" * digits in data.translate(_DIGITS_AS_ZEROS)


@dataclass(frozen=True, slots=True)
class StoreNames:
    """Names a graph server refuses beyond the contract's own rules (ArcadeDB's, say)."""

    server: str
    properties: frozenset[str] = frozenset()
    # Labels and relationship types in one namespace: no name may be both.
    shared_namespace: bool = False

    def refusal(self, graph: GraphData) -> str | None:
        """Why the server cannot store ``graph``'s names, or None."""
        labels = {node["type"] for node in graph.nodes}
        types = {edge["type"] for edge in graph.edges}
        if self.shared_namespace and (both := sorted(labels & types)):
            return f"{both[0]!r} is a label and a relationship type: {self.server} keeps one namespace for both"
        names = set().union(
            *(node["properties"] for node in graph.nodes), *(edge["properties"] for edge in graph.edges)
        )
        if taken := sorted(names & self.properties):
            return f"property name {taken[0]!r}: {self.server} reserves the name"
        return None


def decode_event(
    raw: bytes | None,
    *,
    max_bytes: int,
    max_nodes: int,
    strings_may_hold_nul: bool = True,
    store_names: StoreNames | None = None,
    known_digest: bytes | None = None,
) -> Event:
    """Parse and validate one record value, or raise EventError with a clear reason.

    ``strings_may_hold_nul=False`` is for a graph backend that cannot store a NUL in a
    string property (FalkorDB), and ``store_names`` for one that refuses names the
    contract allows (ArcadeDB): such an event is refused here, with the reason
    ``unstorable``, rather than by the store later (as a compensated batch).

    ``known_digest`` is the digest of the graph applied for the record's source, as
    PostgreSQL keeps it. An upsert whose parsed nodes and edges have that digest holds the
    very nodes and edges of a graph that was validated (and stored) before: only the rest
    of the event is validated, and the graph comes back left behind (``LeftBehind``: its
    counts, its metadata and its digest, no nodes). Validation was most of a re-ingest's
    cost, where most graphs come again unchanged. Anything else, or any doubt, is
    validated whole.
    """
    document, context = _parse(raw, max_bytes=max_bytes, max_nodes=max_nodes)
    if known_digest is not None and (unchanged := _unchanged_upsert(document, context, known_digest)):
        return unchanged
    try:
        event = _EVENT_ADAPTER.validate_python(document, context=context)
    except ValidationError as exc:
        raise EventError("invalid", describe_errors(exc)) from None
    # JSON writes a NUL only as the escape \u0000: without those bytes there is none.
    nul = not strings_may_hold_nul and b"\\u0000" in (raw or b"") and isinstance(event, AstGraphUpserted)
    if nul and (where := _nul_string(event.graph)):  # type: ignore[union-attr]  # an upsert, checked above
        raise EventError("unstorable", f"{where}: the graph store (FalkorDB) cannot store NUL characters")
    if store_names is not None and isinstance(event, AstGraphUpserted) and (why := store_names.refusal(event.graph)):
        raise EventError("unstorable", why)
    return event


def _unchanged_upsert(
    document: dict[str, Any], context: dict[str, bool] | None, known_digest: bytes
) -> AstGraphUpserted | None:
    """The upsert with its graph taken as parsed, if that graph has ``known_digest``; else None."""
    graph = document.get("graph")
    if document.get("event_type") != EventType.AST_GRAPH_UPSERTED or not isinstance(graph, dict):
        return None
    nodes, edges = graph.get("nodes"), graph.get("edges", [])
    if not isinstance(nodes, list) or not isinstance(edges, list) or not graph.keys() <= {"nodes", "edges", "metadata"}:
        return None
    try:
        if _digest_of(_with_properties(nodes), _with_properties(edges)) != known_digest:
            return None
        shell = {**document, "graph": {"nodes": [], "edges": [], "metadata": graph.get("metadata", {})}}
        event = _EVENT_ADAPTER.validate_python(shell, context=context)
    except (TypeError, KeyError, orjson.JSONEncodeError, ValidationError):
        return None  # not a graph, or not a valid event: validated whole, which says why
    if not isinstance(event, AstGraphUpserted):
        return None
    # Counted lists where the model says lists: what reads them gets their length only.
    left: dict[str, Any] = {"nodes": LeftBehind(len(nodes)), "edges": LeftBehind(len(edges))}
    graph = GraphData.model_construct(**left, metadata=event.graph.metadata)
    remember_digest(graph, known_digest)
    return event.model_copy(update={"graph": graph})


def _with_properties(items: list[Any]) -> list[Any]:
    """Nodes or edges as validation leaves them: ``properties`` present, ``{}`` where the producer left it out."""
    if all(type(item) is dict and "properties" in item for item in items):
        return items
    return [{**item, "properties": {}} if type(item) is dict and "properties" not in item else item for item in items]


def restore_graph(event: AstGraphUpserted, raw: bytes) -> AstGraphUpserted:
    """``event`` with the graph it left behind read back from its record ``raw`` (no validation: see decode_event)."""
    if not event.graph.left_behind:
        return event
    document = parse_document(raw)["graph"]
    graph = GraphData.model_construct(
        nodes=_with_properties(document["nodes"]),
        edges=_with_properties(document.get("edges", [])),
        metadata=event.graph.metadata,
    )
    remember_digest(graph, graph_digest(event.graph))
    return event.model_copy(update={"graph": graph})


def parse_document(raw: bytes) -> dict[str, Any]:
    """The JSON document of a record ``decode_event`` accepted, parsed as it did (no checks)."""
    return json.loads(raw) if has_long_number(raw) else orjson.loads(raw)  # type: ignore[no-any-return]


def _parse(raw: bytes | None, *, max_bytes: int, max_nodes: int) -> tuple[dict[str, Any], dict[str, bool] | None]:
    """The JSON document and the validation context, or EventError for what needs no validation."""
    if raw is None:
        raise EventError("empty", "record has no value (a tombstone deletes a source on a graph topic only)")
    if len(raw) > max_bytes:
        raise EventError("oversized", f"{len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError("not-json", str(exc)) from None
    if not isinstance(document, dict):
        raise EventError("invalid", "an event must be a JSON object")
    version = document.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        raise EventError(
            "unsupported-version", f"schema_version {version!r} is not supported (supported: {SCHEMA_VERSION})"
        )
    # Checked before full validation so a huge graph is refused without building models.
    graph = document.get("graph")
    if isinstance(graph, dict) and isinstance(graph.get("nodes"), list) and len(graph["nodes"]) > max_nodes:
        raise EventError("oversized", f"{len(graph['nodes'])} nodes exceeds the limit of {max_nodes}")
    # An integer beyond 64 bits has at least 19 digits; without such a run in the bytes
    # (strings included, so this errs on the side of checking), none can be present.
    context: dict[str, bool] | None = {NO_LONG_NUMBERS: True}
    if has_long_number(raw):
        context = None
        # orjson turns an integer past 64 bits into a float without a word (2**64 becomes
        # 1.8446744073709552e+19): the stdlib parser keeps it exact, so the int64 check
        # refuses it instead of the graph storing another number. orjson has already
        # vetted the bytes (UTF-8, no NaN), so the two parsers agree on everything else.
        document = json.loads(raw)
    return document, context


def _nul_string(graph: GraphData) -> str | None:
    """Where the first string property holding a NUL is, or None."""
    for kind, items in (("node", graph.nodes), ("edge", graph.edges)):
        for n, item in enumerate(items):
            for name, value in item["properties"].items():
                values = value if isinstance(value, list) else (value,)
                if any(isinstance(v, str) and "\x00" in v for v in values):
                    return f"graph.{kind}s.{n}.properties.{name}"
    return None


def describe_errors(exc: ValidationError, limit: int = 5) -> str:
    """A short, readable summary of the first few validation errors."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(str(p) for p in err['loc']) or '<event>'}: {err['msg']}" for err in errors[:limit]]
    if len(errors) > limit:
        parts.append(f"... and {len(errors) - limit} more")
    return "; ".join(parts)


def encode_event(event: Envelope) -> bytes:
    """Serialise an event as producers do (JSON, UTF-8)."""
    return orjson.dumps(event.model_dump(mode="json"))


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each event type, keyed by file stem, for schemas/."""
    schemas: dict[str, dict[str, Any]] = {
        f"{event_type.value}.v{SCHEMA_VERSION}": model.model_json_schema() for event_type, model in EVENT_MODELS.items()
    }
    schemas[f"event.v{SCHEMA_VERSION}"] = _EVENT_ADAPTER.json_schema()
    return schemas
