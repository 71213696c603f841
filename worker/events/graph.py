"""A source's graph: nodes, edges and metadata, validated a whole graph at a time."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from worker.events.rules import (
    BAD_PROPERTY_NAME,
    CONTROL_CHARACTERS,
    INT64,
    MAX_RELATIONSHIP_TYPES,
    METADATA_MAX_DEPTH,
    NO_LONG_NUMBERS,
    RESERVED_PROPERTIES,
    SCHEMA_END,
    GraphId,
    Label,
    Properties,
    RelationshipType,
    check_label,
    check_properties,
    check_relationship_type,
    no_control_chars_in,
)


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
            json_schema_extra={"propertyNames": {"pattern": r"^[^\u0000]*" + SCHEMA_END}},
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
            check_label(label)
        rel_types = {edge["type"] for edge in self.edges}
        if len(rel_types) > MAX_RELATIONSHIP_TYPES:
            # Each new type is a query plan on Neo4j (about 8 ms; dynamic types are wrong in
            # 5.26.0): 15,000 in one event held its partition for minutes.
            msg = f"{len(rel_types)} relationship types in one graph; at most {MAX_RELATIONSHIP_TYPES}"
            raise ValueError(msg)
        for rel_type in rel_types:
            check_relationship_type(rel_type)
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
            and not BAD_PROPERTY_NAME.search("".join(names))
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
            check_properties(node["properties"], f"node {node_id!r}", int64=int64)
        for node_id in ids:
            no_control_chars_in(node_id, f"node id {node_id!r}")
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
            check_properties(edge["properties"], f"edge {source!r}->{target!r}", int64=int64)

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
