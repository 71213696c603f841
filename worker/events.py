"""Event contracts: the versioned envelope and the four event types; source of schemas/.

Node identity: a node ``id`` is unique within its source (one source file), so the
store key of a node is ``(source_id, id)``. Edges join nodes of the same event only.
Intent links name AST nodes by ``(source_id, node_id)``.

Versions: every event carries ``source_version``, an integer that grows with each
change of its aggregate (a source file, or an intent). The stores never let a lower
version overwrite a higher one, so out-of-order delivery and replays are harmless.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from worker.errors import EventError

SCHEMA_VERSION = 1
# Node types become Cypher labels and edge types relationship types. Neither can be a
# query parameter, so they are spliced into query text: this pattern is the guard.
CYPHER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
RESERVED_LABELS = frozenset({"AstNode", "Intent"})
RESERVED_RELATIONSHIPS = frozenset({"IMPLEMENTED_BY"})
# Written by the stores on every node; a producer property with one of these names
# would be silently overwritten, so it is refused instead.
RESERVED_PROPERTIES = frozenset({"key", "source_id", "node_id", "type", "source_version"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EventType(StrEnum):
    """The kinds of event the worker accepts."""

    AST_GRAPH_UPSERTED = "ast-graph.upserted"
    AST_GRAPH_DELETED = "ast-graph.deleted"
    INTENT_LINK_UPSERTED = "intent-link.upserted"
    INTENT_LINK_DELETED = "intent-link.deleted"


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        msg = "must not contain control characters"
        raise ValueError(msg)
    return value


def _no_control_chars_in(value: str, where: str) -> None:
    if _CONTROL.search(value):
        msg = f"{where} must not contain control characters"
        raise ValueError(msg)


def _cypher_name(kind: str, reserved: frozenset[str]) -> Callable[[str], str]:
    """A validator for names that are spliced into Cypher text as labels or relationship types."""

    def check(value: str) -> str:
        if not CYPHER_NAME.match(value):
            msg = f"{value!r} is not a safe Cypher {kind} (letters, digits, '_', starting with a letter, max 64)"
            raise ValueError(msg)
        if value in reserved:
            msg = f"{value!r} is reserved"
            raise ValueError(msg)
        return value

    return check


Identifier = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_no_control_chars)]
_check_label = _cypher_name("label", RESERVED_LABELS)
_check_relationship_type = _cypher_name("relationship type", RESERVED_RELATIONSHIPS)
# Inside a graph, ids, types and property values are checked once per graph by
# GraphData._consistent, in plain Python: a per-field validator costs a Rust-to-Python
# call per node (measured: half of decoding a 133k-node corpus, 5.5 s of 24k nodes/s).
GraphId = Annotated[str, Field(min_length=1, max_length=512)]


# Property values Neo4j can store: scalars or homogeneous lists of scalars. Integers are
# 64-bit in Bolt; a larger one would fail inside the driver, so GraphData refuses it.
# (int before float in the union keeps a large integer an int, to be found and refused.)
INT64 = range(-(2**63), 2**63)  # the integers every graph store here can hold


def _int64_problem(properties: Mapping[str, object]) -> str | None:
    for name, value in properties.items():
        values = value if isinstance(value, list) else (value,)
        if any(type(v) is int and v not in INT64 for v in values):
            return f"properties.{name}: integers must fit in 64 bits"
    return None


Scalar = str | int | float | bool
PropertyValue = Scalar | list[str] | list[int] | list[float] | list[bool] | None
Properties = dict[Annotated[str, Field(min_length=1, max_length=128)], PropertyValue]


def _check_properties(properties: Properties, where: str, *, int64: bool = True) -> None:
    clash = RESERVED_PROPERTIES.intersection(properties)
    if clash:
        msg = f"{where}: property names {sorted(clash)} are reserved"
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
    type: str
    properties: NotRequired[Annotated[Properties, Field(default_factory=dict)]]


@with_config(ConfigDict(extra="forbid"))
class Edge(TypedDict):
    """A directed, typed edge between two nodes of the same graph."""

    source: GraphId
    target: GraphId
    type: str
    properties: NotRequired[Annotated[Properties, Field(default_factory=dict)]]


class GraphData(BaseModel):
    """The seed format: nodes, edges and free-form metadata of one source's graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: list[Node]
    edges: list[Edge] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> GraphData:
        # decode_event knows from the raw bytes whether any number is long enough to
        # exceed 64 bits; the per-value check was half of decoding (py-spy).
        int64 = not (info.context and info.context.get(NO_LONG_NUMBERS))
        if int64 or not self._plausible():
            self._raise_first_problem(int64=int64)
        for label in {node["type"] for node in self.nodes}:
            _check_label(label)
        for rel_type in {edge["type"] for edge in self.edges}:
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
            and not _CONTROL.search("".join(ids))
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


class AstNodeRef(BaseModel):
    """A reference to one AST node by its identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_id: Identifier
    node_id: Identifier


class Envelope(BaseModel):
    """Fields every event carries. ``source_id`` is also the Kafka key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: UUID
    schema_version: Literal[1] = 1
    source_id: Identifier
    source_version: int = Field(ge=0)
    occurred_at: datetime
    producer: Annotated[str, Field(min_length=1, max_length=256)]

    @model_validator(mode="after")
    def _aware(self) -> Envelope:
        if self.occurred_at.tzinfo is None:
            msg = "occurred_at must carry a time zone"
            raise ValueError(msg)
        return self

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


class IntentLinkUpserted(Envelope):
    """The intent ``source_id`` (a UUID) maps to exactly these AST nodes now."""

    event_type: Literal[EventType.INTENT_LINK_UPSERTED]
    ast_nodes: list[AstNodeRef] = Field(max_length=100_000)

    @model_validator(mode="after")
    def _intent_uuid(self) -> IntentLinkUpserted:
        UUID(self.source_id)
        return self

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

    @model_validator(mode="after")
    def _intent_uuid(self) -> IntentLinkDeleted:
        UUID(self.source_id)
        return self

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


def has_long_number(data: bytes) -> bool:
    """Whether ``data`` holds a run of 19 or more ASCII digits: a number that may not fit in int64."""
    return _NINETEEN_DIGITS in data.translate(_DIGITS_AS_ZEROS)


def decode_event(raw: bytes | None, *, max_bytes: int, max_nodes: int) -> Event:
    """Parse and validate one record value, or raise EventError with a clear reason."""
    if raw is None:
        raise EventError("empty", "record has no value (tombstones are not events here)")
    if len(raw) > max_bytes:
        raise EventError("oversized", f"{len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError("not-json", str(exc)) from None
    if not isinstance(document, dict):
        raise EventError("invalid", "an event must be a JSON object")
    version = document.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
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
    try:
        return _EVENT_ADAPTER.validate_python(document, context=context)
    except ValidationError as exc:
        raise EventError("invalid", _describe(exc)) from None


def _describe(exc: ValidationError, limit: int = 5) -> str:
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
