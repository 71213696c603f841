"""A record value to an event: parsing, limits, the unchanged-graph shortcut; encoding for producers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import (
    ValidationError,
)

from worker.errors import EventError
from worker.events.contracts import EVENT_ADAPTER, AstGraphUpserted, Envelope, Event
from worker.events.digest import digest_of, graph_digest, remember_digest
from worker.events.graph import GraphData, LeftBehind
from worker.events.rules import NO_LONG_NUMBERS, SCHEMA_VERSION, EventType

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
        event = EVENT_ADAPTER.validate_python(document, context=context)
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
        if digest_of(_with_properties(nodes), _with_properties(edges)) != known_digest:
            return None
        shell = {**document, "graph": {"nodes": [], "edges": [], "metadata": graph.get("metadata", {})}}
        event = EVENT_ADAPTER.validate_python(shell, context=context)
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
