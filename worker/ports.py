"""The ports: the protocols between the layers, and the records they carry.

The ground floor of the package. Every layer above (stores, saga, consume, the library,
the CLI) imports these; this module imports only the event contracts (worker.events).
Store adapters implement the protocols; the saga coordinator and the consumer know
nothing else of the stores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable
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
    # The digest of the graph each live source's nodes hold now (see graph_digest).
    source_digests: dict[str, bytes] = field(default_factory=dict)


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
    # Per applied upsert, the digest of its graph; and the sources whose graph is already
    # in the store as it is (same digest): only their registry version moves.
    digests: dict[str, bytes] = field(default_factory=dict)
    unchanged: frozenset[str] = frozenset()

    @property
    def winners(self) -> tuple[InboundEvent, ...]:
        """The events that take effect."""
        return tuple(item for item, outcome in self.outcomes if outcome is Outcome.APPLIED)


@dataclass(frozen=True, slots=True)
class GraphWriteStats:
    """Counters reported by the graph store for one batch."""

    nodes_written: int = 0
    edges_written: int = 0
    nodes_deleted: int = 0
    relationships_deleted: int = 0
    statements: int = 0
    # Intent links whose AST node is not in the graph yet: kept in PostgreSQL ("parked")
    # and attached when the node's source arrives.
    unresolved_links: tuple[LinkRow, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What the outbox row of a batch says before it is applied."""

    batch_id: UUID
    positions: tuple[Position, ...]
    event_ids: tuple[UUID, ...]
    source_ids: tuple[str, ...]
    intent_ids: tuple[UUID, ...]
    rows: int


@dataclass(frozen=True, slots=True)
class ParkedLinks:
    """Intent links waiting for their AST node, and those waiting longer than the bound."""

    parked: int
    expired: int
    oldest_expired: tuple[LinkRow, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistryTotals:
    """What the registry holds: live sources with their nodes and edges, intents and links."""

    sources: int
    nodes: int
    edges: int
    intents: int
    links: int
    parked: int


@dataclass(frozen=True, slots=True)
class Bookkeeping:
    """One bookkeeping table: rows (the planner's estimate: counting them would cost O(history)), bytes, oldest row."""

    table: str
    rows_estimate: int
    bytes: int
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One unfinished outbox row as an operator reads it: what the batch held and what went wrong."""

    batch_id: UUID
    state: str
    attempts: int
    rows: int
    positions: tuple[Position, ...]
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@runtime_checkable
class GraphStore(Protocol):
    """The graph side: applies a batch's changes atomically and idempotently."""

    async def migrate(self) -> None:
        """Create constraints and indexes (idempotent)."""

    async def apply(self, changes: GraphChanges) -> GraphWriteStats:
        """Write all changes in one transaction: all or nothing.

        Raises StoreUnavailable (retry) or StoreRejected (the data was refused).
        """

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers a query."""

    async def close(self) -> None:
        """Release connections."""


@runtime_checkable
class BatchCompletion(Protocol):
    """Saga step 3 under way: the relational rows are written, not yet committed."""

    async def finish(self, stats: GraphWriteStats) -> None:
        """Record what the graph write reported, mark the outbox row 'applied' and commit."""


@runtime_checkable
class RelationalStore(Protocol):
    """PostgreSQL: the outbox (saga log), the processed events and the relational rows."""

    async def migrate(self) -> None:
        """Apply pending SQL migrations under an advisory lock."""

    async def begin_batch(self, record: BatchRecord) -> AppliedState:
        """Saga step 1: write the outbox row 'pending' and read the applied state."""

    async def links_for_sources(self, source_ids: tuple[str, ...]) -> tuple[LinkRow, ...]:
        """Existing intent links that point into these sources."""

    async def graph_digests(self, source_ids: tuple[str, ...]) -> dict[str, bytes]:
        """The digest of each live source's applied graph (``graph_digest``), where one is kept."""

    def completing(self, batch_id: UUID, plan: BatchPlan) -> AbstractAsyncContextManager[BatchCompletion]:
        """Saga step 3, opened before the graph write and committed by ``finish`` after it.

        The registry, link and ledger rows are written in a transaction that stays open while
        the graph is written, so PostgreSQL refuses a batch (StoreRejected) before the graph
        has changed. Leaving the block without ``finish`` rolls everything back.
        """

    async def fail_batch(self, batch_id: UUID, state: str, error: str) -> None:
        """Record a failed attempt ('compensated' or 'failed') with its error."""

    async def abandon_pending(self, partitions: tuple[tuple[str, int], ...]) -> int:
        """Mark 'abandoned' the rows left 'pending' on these partitions; return how many."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""

    async def close(self) -> None:
        """Release connections."""


@runtime_checkable
class SnapshotGraph(Protocol):
    """What backup, restore and export need of a graph store, besides migrate and close."""

    def nodes(self, label: str, key: str, page_size: int) -> AsyncIterator[list[dict[str, Any]]]:
        """All nodes of ``label`` in ``key`` order, a page at a time: {"labels", "props"} rows."""

    async def edges_from(self, label: str, key: str, ids: list[str]) -> list[dict[str, Any]]:
        """Relationships from these nodes to AST nodes: {"start", "type", "end", "props"} rows."""

    async def count(self, label: str) -> int:
        """How many nodes carry ``label``."""

    async def is_empty(self) -> bool:
        """True when the database holds no node."""

    async def create_nodes(self, labels: list[str], rows: list[dict[str, Any]]) -> int:
        """Create nodes with these labels and properties in one transaction; return how many."""

    async def create_edges(self, start: str, key: str, rel_type: str, rows: list[dict[str, Any]]) -> int:
        """Create relationships {"start", "end", "props"} in one transaction; return how many."""

    async def server_agent(self) -> str:
        """The server's name and version."""

    async def migrate(self) -> None:
        """Create constraints and indexes (idempotent)."""


@runtime_checkable
class GraphBackend(GraphStore, SnapshotGraph, Protocol):
    """A whole graph backend: what the worker, the library, the CLI and snapshots use of it."""

    async def parallel_batches(self) -> int:
        """How many batches on disjoint sources this server writes fastest side by side (measured per server)."""

    async def query(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a Cypher query; rows as plain dicts."""

    async def read_query(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a Cypher query that may only read (OperationRefused if it writes; nothing is kept)."""

    async def delete_sources(self, source_ids: list[str]) -> int:
        """Delete these sources' AST nodes with their relationships; return how many nodes."""

    async def delete_intents(self, intent_ids: list[str]) -> int:
        """Delete these intents' nodes with their links; return how many nodes."""

    async def probe_write(self) -> None:
        """Make a write and undo it: raise StoreRejected unless writes are allowed."""

    async def tuning_advice(self) -> tuple[str, ...]:
        """Server settings known to slow this workload, each with the value to use; empty if none."""
