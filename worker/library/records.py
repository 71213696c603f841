"""What the library face returns: results, reports, stats and snapshots (plain records)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

from worker.ports import Bookkeeping, Outcome


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What became of one stored graph or intent link."""

    source_id: str
    version: int
    outcome: Outcome
    nodes_written: int = 0
    edges_written: int = 0


@dataclass(frozen=True, slots=True)
class BatchImportResult:
    """A batch import's totals."""

    graphs: int
    nodes_written: int
    edges_written: int
    seconds: float

    @property
    def nodes_per_s(self) -> float:
        """Nodes written per second."""
        return self.nodes_written / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class UnifiedQuery:
    """A Cypher pattern and a SQL query, run concurrently and joined on one column."""

    graph_pattern: LiteralString
    postgres_filter: str
    join_on: str
    graph_params: Mapping[str, Any] = field(default_factory=dict)
    postgres_params: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class StorageStats:
    """Sizes of both stores."""

    sources: int
    graph_nodes: int
    graph_relationships: int
    intents: int
    intent_links: int
    parked_links: int
    # Unfinished outbox states only; the applied history is in ``bookkeeping``.
    outbox: dict[str, int]
    # The ledger's and the outbox's size, estimated rows and oldest finished row.
    bookkeeping: list[Bookkeeping]


@dataclass(frozen=True, slots=True)
class ConsistencyReport:
    """Where the two stores disagree; empty lists mean they agree."""

    # Sources whose node count in the graph differs from the registry's: (source, registry, graph).
    count_mismatches: list[tuple[str, int, int]]
    graph_without_registry: list[str]  # sources with nodes in the graph but no live registry row
    registry_without_graph: list[str]  # live registry rows with nodes whose graph is missing
    parked_links: int  # intent links whose AST node is missing (waiting, see the worker's bound)
    stuck_outbox: list[str]  # batch ids 'pending' for longer than the threshold
    # Sources whose nodes carry another version than the registry's: (source, registry, graph versions).
    version_mismatches: list[tuple[str, int, list[int]]] = field(default_factory=list)
    # Intents on which the stores disagree: version, existence, or the number of attached links.
    intent_mismatches: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what a repair did, one line an action

    @property
    def consistent(self) -> bool:
        """True when nothing disagrees (parked links are a waiting state, not a disagreement)."""
        return not (
            self.count_mismatches
            or self.graph_without_registry
            or self.registry_without_graph
            or self.stuck_outbox
            or self.version_mismatches
            or self.intent_mismatches
        )


@dataclass(frozen=True, slots=True)
class PerformanceMetrics:
    """The current process's figures (totals since start; rates and percentiles over a recent window)."""

    uptime_s: float
    batches: int
    events_applied: int
    nodes_written: int
    edges_written: int
    nodes_per_s: float  # graph nodes written per second over the window
    batch_p50_s: float | None  # saga batch duration percentiles over the window (None: no batch)
    batch_p95_s: float | None
    query_p50_ms: dict[str, float]  # per store ("graph", "postgres"), over the latest queries
    query_p95_ms: dict[str, float]
    pools: dict[str, dict[str, int]]  # connections per pool: in_use, idle, max
    outbox: dict[str, int]  # outbox rows by state, from PostgreSQL


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot file and its manifest (format, versions, members with rows and SHA-256)."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    def __repr__(self) -> str:
        return f"Snapshot(path={str(self.path)!r}, nodes={self.nodes}, members={len(self.members)})"

    @property
    def nodes(self) -> dict[str, int]:
        """Graph nodes per label."""
        counts: dict[str, int] = self.manifest["graph"]["nodes"]
        return counts

    @property
    def members(self) -> dict[str, dict[str, Any]]:
        """Each member's rows and checksum."""
        members: dict[str, dict[str, Any]] = self.manifest["members"]
        return members
