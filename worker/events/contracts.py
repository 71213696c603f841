"""The versioned envelope and the four event types (and Kafka tombstones): the source of schemas/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid5

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
)

from worker.errors import EventError
from worker.events.graph import GraphData
from worker.events.rules import (
    CONTROL_CHARACTERS,
    NO_CONTROL_SCHEMA,
    SCHEMA_CANNOT_EXPRESS,
    SCHEMA_VERSION,
    SOURCE_ID_MAX,
    EventId,
    EventType,
    Identifier,
    IntentKey,
    Timestamp,
    Version,
    exact_int,
    no_control_chars,
)


class AstNodeRef(BaseModel):
    """A reference to one AST node by its identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_id: Identifier
    node_id: Identifier


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
    schema_version: Annotated[Literal[1], BeforeValidator(exact_int)] = 1
    source_id: Identifier
    source_version: Version
    occurred_at: Timestamp
    producer: Annotated[
        str,
        Field(min_length=1, max_length=256, json_schema_extra={"pattern": NO_CONTROL_SCHEMA}),
        AfterValidator(no_control_chars),
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
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each event type, keyed by file stem, for schemas/."""
    schemas: dict[str, dict[str, Any]] = {
        f"{event_type.value}.v{SCHEMA_VERSION}": model.model_json_schema() for event_type, model in EVENT_MODELS.items()
    }
    schemas[f"event.v{SCHEMA_VERSION}"] = EVENT_ADAPTER.json_schema()
    return schemas
