"""Turn a batch of events into the changes to apply, given what was already applied.

Pure logic, no I/O: the coordinator loads the applied state, calls :func:`plan_batch`
and hands the result to the stores. Within a batch only the newest event of each
aggregate (a source file or an intent) takes effect; older ones, and any version at or
below what is already applied, are recorded as superseded, so replays and
out-of-order deliveries change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from uuid import UUID

from worker.events import (
    AstGraphDeleted,
    AstGraphUpserted,
    Event,
    IntentLinkDeleted,
    IntentLinkUpserted,
)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record sits in Kafka."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """A validated event with the record it came from (kept for the dead-letter topic)."""

    event: Event
    position: Position
    raw: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def rows(self) -> int:
        """Graph rows the event writes."""
        return self.event.rows


class Outcome(StrEnum):
    """What became of one event."""

    APPLIED = "applied"
    SUPERSEDED = "superseded"  # a newer version of its aggregate was applied or is applied
    DUPLICATE = "duplicate"  # the same event id was processed before
    DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True, slots=True)
class LinkRow:
    """One intent → AST node mapping."""

    intent_id: UUID
    source_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class AppliedState:
    """What PostgreSQL says is applied for the aggregates of a batch."""

    source_versions: dict[str, int] = field(default_factory=dict)
    intent_versions: dict[UUID, int] = field(default_factory=dict)
    processed_event_ids: frozenset[UUID] = frozenset()


@dataclass(frozen=True, slots=True)
class GraphChanges:
    """The graph side of a batch; applied atomically by the graph store."""

    upserts: tuple[AstGraphUpserted, ...] = ()
    deletes: tuple[AstGraphDeleted, ...] = ()
    intent_upserts: tuple[IntentLinkUpserted, ...] = ()
    intent_deletes: tuple[IntentLinkDeleted, ...] = ()
    # Existing links that point into upserted sources: re-attached after the new
    # version's nodes are written, so links survive a delete/re-create of the source.
    relinks: tuple[LinkRow, ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing is to be written to the graph."""
        return not (self.upserts or self.deletes or self.intent_upserts or self.intent_deletes)


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """The changes and every event's outcome."""

    changes: GraphChanges
    outcomes: tuple[tuple[InboundEvent, Outcome], ...]

    @property
    def winners(self) -> tuple[InboundEvent, ...]:
        """The events that take effect."""
        return tuple(item for item, outcome in self.outcomes if outcome is Outcome.APPLIED)


def _aggregate(event: Event) -> tuple[str, str]:
    kind = "intent" if isinstance(event, IntentLinkUpserted | IntentLinkDeleted) else "source"
    return kind, event.source_id


def _applied_version(event: Event, state: AppliedState) -> int:
    if isinstance(event, IntentLinkUpserted | IntentLinkDeleted):
        return state.intent_versions.get(event.intent_id, -1)
    return state.source_versions.get(event.source_id, -1)


def plan_batch(events: list[InboundEvent], state: AppliedState) -> BatchPlan:
    """Pick the newest new event per aggregate; everything else is superseded or duplicate."""
    winners: dict[tuple[str, str], InboundEvent] = {}
    seen_ids: set[UUID] = set()
    outcomes: dict[int, Outcome] = {}
    for index, item in enumerate(events):
        event = item.event
        if event.event_id in state.processed_event_ids or event.event_id in seen_ids:
            outcomes[index] = Outcome.DUPLICATE
            continue
        seen_ids.add(event.event_id)
        outcomes[index] = Outcome.SUPERSEDED
        if event.source_version <= _applied_version(event, state):
            continue
        aggregate = _aggregate(event)
        current = winners.get(aggregate)
        # A version is immutable: of two events with the same version the first one wins,
        # inside a batch exactly as across batches, so batch boundaries never change results.
        if current is None or event.source_version > current.event.source_version:
            winners[aggregate] = item
    winner_ids = {id(item) for item in winners.values()}
    for index, item in enumerate(events):
        if id(item) in winner_ids:
            outcomes[index] = Outcome.APPLIED
    chosen = [item.event for item in winners.values()]
    changes = GraphChanges(
        upserts=tuple(e for e in chosen if isinstance(e, AstGraphUpserted)),
        deletes=tuple(e for e in chosen if isinstance(e, AstGraphDeleted)),
        intent_upserts=tuple(e for e in chosen if isinstance(e, IntentLinkUpserted)),
        intent_deletes=tuple(e for e in chosen if isinstance(e, IntentLinkDeleted)),
    )
    return BatchPlan(changes=changes, outcomes=tuple((item, outcomes[i]) for i, item in enumerate(events)))
