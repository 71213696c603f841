"""Event contracts: the versioned envelope and the four event types; source of schemas/.

Node identity: a node ``id`` is unique within its source (one source file), so the
store key of a node is ``(source_id, id)``. Edges join nodes of the same event only.
Intent links name AST nodes by ``(source_id, node_id)``.

Versions: every event carries ``source_version``, an integer that grows with each
change of its aggregate (a source file, or an intent). The stores never let a lower
version overwrite a higher one, so out-of-order delivery and replays are harmless.

A package by concern, re-exported here: ``rules`` (what every store can hold, and the field
types carrying it), ``graph`` (nodes, edges, whole-graph checks), ``digest``, ``contracts``
(the envelope and event types, the schemas' source) and ``decoding`` (record value to event).
"""

from __future__ import annotations

from worker.events.contracts import (
    EVENT_MODELS,
    TOMBSTONE_PRODUCER,
    AstGraphDeleted,
    AstGraphUpserted,
    AstNodeRef,
    Envelope,
    Event,
    IntentLinkDeleted,
    IntentLinkUpserted,
    Tombstone,
    is_source_id,
    json_schemas,
    tombstone,
)
from worker.events.decoding import (
    StoreNames,
    decode_event,
    describe_errors,
    encode_event,
    has_long_number,
    parse_document,
    restore_graph,
)
from worker.events.digest import graph_digest, remember_digest
from worker.events.graph import Edge, GraphData, LeftBehind, Node
from worker.events.rules import (
    CONTROL_CHARACTERS,
    CYPHER_NAME,
    INT64,
    INT64_MAX,
    INT64_MIN,
    MAX_RELATIONSHIP_TYPES,
    METADATA_MAX_DEPTH,
    NO_LONG_NUMBERS,
    RESERVED_LABELS,
    RESERVED_PROPERTIES,
    RESERVED_RELATIONSHIPS,
    SCHEMA_CANNOT_EXPRESS,
    SCHEMA_VERSION,
    SOURCE_ID_MAX,
    EventId,
    EventType,
    GraphId,
    Identifier,
    IntentKey,
    Label,
    Properties,
    PropertyName,
    PropertyValue,
    RelationshipType,
    Scalar,
    Timestamp,
    Version,
)

__all__ = [
    "CONTROL_CHARACTERS",
    "CYPHER_NAME",
    "EVENT_MODELS",
    "INT64",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_RELATIONSHIP_TYPES",
    "METADATA_MAX_DEPTH",
    "NO_LONG_NUMBERS",
    "RESERVED_LABELS",
    "RESERVED_PROPERTIES",
    "RESERVED_RELATIONSHIPS",
    "SCHEMA_CANNOT_EXPRESS",
    "SCHEMA_VERSION",
    "SOURCE_ID_MAX",
    "TOMBSTONE_PRODUCER",
    "AstGraphDeleted",
    "AstGraphUpserted",
    "AstNodeRef",
    "Edge",
    "Envelope",
    "Event",
    "EventId",
    "EventType",
    "GraphData",
    "GraphId",
    "Identifier",
    "IntentKey",
    "IntentLinkDeleted",
    "IntentLinkUpserted",
    "Label",
    "LeftBehind",
    "Node",
    "Properties",
    "PropertyName",
    "PropertyValue",
    "RelationshipType",
    "Scalar",
    "StoreNames",
    "Timestamp",
    "Tombstone",
    "Version",
    "decode_event",
    "describe_errors",
    "encode_event",
    "graph_digest",
    "has_long_number",
    "is_source_id",
    "json_schemas",
    "parse_document",
    "remember_digest",
    "restore_graph",
    "tombstone",
]
