"""Builders of valid events for tests (shipped with the tests, like structlog.testing)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from worker.events import (
    AstGraphDeleted,
    AstGraphUpserted,
    EventType,
    GraphData,
    IntentLinkDeleted,
    IntentLinkUpserted,
)
from worker.ports import InboundEvent, Position


def graph(nodes: list[tuple[str, str]], edges: list[tuple[str, str, str]] = (), **props: Any) -> GraphData:  # type: ignore[assignment]
    """A graph from (id, type) nodes and (source, type, target) edges."""
    return GraphData.model_validate(
        {
            "nodes": [{"id": i, "type": t, "properties": {"name": i, **props}} for i, t in nodes],
            "edges": [
                {"source": s, "target": d, "type": t, "properties": {"index": n}} for n, (s, t, d) in enumerate(edges)
            ],
        }
    )


def _envelope(event_type: EventType, source_id: str, version: int) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "event_type": event_type,
        "source_id": source_id,
        "source_version": version,
        "occurred_at": datetime.now(UTC),
        "producer": "tests",
    }


def upsert(source_id: str, version: int, data: GraphData) -> AstGraphUpserted:
    """An ast-graph.upserted event."""
    return AstGraphUpserted.model_validate(
        {**_envelope(EventType.AST_GRAPH_UPSERTED, source_id, version), "graph": data}
    )


def delete(source_id: str, version: int) -> AstGraphDeleted:
    """An ast-graph.deleted event."""
    return AstGraphDeleted.model_validate(_envelope(EventType.AST_GRAPH_DELETED, source_id, version))


def link(intent_id: uuid.UUID, version: int, refs: list[tuple[str, str]]) -> IntentLinkUpserted:
    """An intent-link.upserted event."""
    refs_doc = [{"source_id": s, "node_id": n} for s, n in refs]
    return IntentLinkUpserted.model_validate(
        {**_envelope(EventType.INTENT_LINK_UPSERTED, str(intent_id), version), "ast_nodes": refs_doc}
    )


def unlink(intent_id: uuid.UUID, version: int) -> IntentLinkDeleted:
    """An intent-link.deleted event."""
    return IntentLinkDeleted.model_validate(_envelope(EventType.INTENT_LINK_DELETED, str(intent_id), version))


def inbound(event: Any, offset: int = 0, partition: int = 0, topic: str = "ast-graphs") -> InboundEvent:
    """Wrap an event as if it had been read from Kafka."""
    return InboundEvent(event=event, position=Position(topic, partition, offset), raw=b"{}")
