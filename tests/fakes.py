"""In-memory fakes of the ports, for unit tests of the saga's logic (real stores: tests/integration).

They keep the real stores' atomicity: a graph apply is all or nothing, and each
PostgreSQL step is one transaction. Knobs inject the failures a test needs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from uuid import UUID

from worker.deadletter import DeadLetter
from worker.errors import StoreRejected, StoreUnavailable
from worker.ports import AppliedState, BatchPlan, BatchRecord, GraphChanges, GraphWriteStats, LinkRow, Outcome


class Crash(BaseException):
    """The process dies here; nothing after it runs."""


@dataclass
class Completion:
    """The BatchCompletion of :class:`FakeRelational`: ``finish`` runs the callback."""

    finish: Callable[[GraphWriteStats], Awaitable[None]]


@asynccontextmanager
async def completing_with(finish: Callable[[GraphWriteStats], Awaitable[None]]) -> AsyncIterator[Completion]:
    """The port's ``completing`` block for a fake whose step 3 is one call at the end."""
    yield Completion(finish)


@dataclasses.dataclass
class FakeRelational:
    """The outbox (each row's states in order), the ledger and the registry, in dicts."""

    versions: dict[str, int] = dataclasses.field(default_factory=dict)
    processed: dict[UUID, str] = dataclasses.field(default_factory=dict)
    outbox: dict[UUID, list[str]] = dataclasses.field(default_factory=dict)
    partitions: dict[UUID, frozenset[tuple[str, int]]] = dataclasses.field(default_factory=dict)
    refuse: frozenset[str] = frozenset()  # sources whose rows PostgreSQL refuses at step 3
    fail_at_commit: int = 0  # commits that fail (after the graph write)
    crash_before_complete: bool = False  # the process dies at the next commit

    def state(self, batch_id: UUID) -> str:
        """The row's current state."""
        return self.outbox[batch_id][-1]

    async def begin_batch(self, record: BatchRecord) -> AppliedState:
        """'pending' + the applied state."""
        self.outbox.setdefault(record.batch_id, []).append("pending")
        self.partitions[record.batch_id] = frozenset((p.topic, p.partition) for p in record.positions)
        # Like PostgreSQL: of the processed ids, only those of this batch's events.
        processed = frozenset(self.processed).intersection(record.event_ids)
        return AppliedState(source_versions=dict(self.versions), processed_event_ids=processed)

    async def links_for_sources(self, source_ids: tuple[str, ...]) -> tuple[LinkRow, ...]:
        """No links in this model."""
        return ()

    async def graph_digests(self, source_ids: tuple[str, ...]) -> dict[str, bytes]:
        """No digests in this model: every graph is validated whole."""
        return {}

    def completing(self, batch_id: UUID, plan: BatchPlan) -> AbstractAsyncContextManager[Completion]:
        """Step 3 as the port shapes it: a refusal before the graph write, finish() after it."""
        if self.refuse.intersection(item.event.source_id for item in plan.winners):
            raise StoreRejected("PostgreSQL rejected the write: CheckViolationError")
        return completing_with(functools.partial(self._complete, batch_id, plan))

    async def _complete(self, batch_id: UUID, plan: BatchPlan, stats: GraphWriteStats) -> None:
        """Registry with the version guard, ledger, 'applied'."""
        if self.crash_before_complete:
            self.crash_before_complete = False
            raise Crash
        if self.fail_at_commit > 0:
            self.fail_at_commit -= 1
            raise StoreRejected("could not serialize access")
        for item in plan.winners:
            current = self.versions.get(item.event.source_id, -1)
            self.versions[item.event.source_id] = max(current, item.event.source_version)
        for item, outcome in plan.outcomes:
            if outcome is not Outcome.DUPLICATE:
                self.processed.setdefault(item.event.event_id, outcome.value)
        self.outbox[batch_id].append("applied")

    async def fail_batch(self, batch_id: UUID, state: str, error: str) -> None:
        """Record the failure state."""
        self.outbox[batch_id].append(state)

    async def abandon_pending(self, partitions: tuple[tuple[str, int], ...]) -> int:
        """Close the rows left pending on these partitions."""
        pending = [
            key
            for key, states in self.outbox.items()
            if states[-1] == "pending" and self.partitions[key].intersection(partitions)
        ]
        for key in pending:
            self.outbox[key].append("abandoned")
        return len(pending)

    async def migrate(self) -> None:
        """Nothing to do."""

    async def ping(self) -> None:
        """Always up."""

    async def close(self) -> None:
        """Nothing to close."""


@dataclasses.dataclass
class FakeGraph:
    """Source -> (version, node ids); all or nothing; failures on demand."""

    poison: frozenset[str] = frozenset()  # sources it always refuses
    crash_on: frozenset[str] = frozenset()  # sources on which the adapter raises something unexpected
    unavailable_calls: int = 0  # calls that meet an outage
    rejected_calls: int = 0  # refusals that a retry does not meet (a lost race)
    fail_next: bool = False  # down until cleared: every retry of a delivery fails alike
    sources: dict[str, tuple[int, frozenset[str]]] = dataclasses.field(default_factory=dict)
    applied: list[str] = dataclasses.field(default_factory=list)  # upserted sources, in order
    attempts: Counter[tuple[str, ...]] = dataclasses.field(default_factory=Counter)

    async def apply(self, changes: GraphChanges) -> GraphWriteStats:
        """Atomic: raise before touching anything."""
        upserted = [e.source_id for e in changes.upserts]
        self.attempts[tuple(upserted)] += 1
        if self.fail_next:
            raise StoreUnavailable("graph down")
        if self.unavailable_calls > 0:
            self.unavailable_calls -= 1
            raise StoreUnavailable("graph down")
        if self.rejected_calls > 0:
            self.rejected_calls -= 1
            raise StoreRejected("type already exists")
        if self.poison.intersection(upserted):
            raise StoreRejected("constraint violated")
        if self.crash_on.intersection(upserted):
            raise TypeError("unexpected value in the driver")
        for event in changes.upserts:
            self.sources[event.source_id] = (event.source_version, frozenset(n["id"] for n in event.graph.nodes))
        for event in changes.deletes:
            self.sources.pop(event.source_id, None)
        self.applied.extend(upserted)
        return GraphWriteStats(nodes_written=sum(len(e.graph.nodes) for e in changes.upserts))

    async def migrate(self) -> None:
        """Nothing to do."""

    async def ping(self) -> None:
        """Always up."""

    async def close(self) -> None:
        """Nothing to close."""


@dataclasses.dataclass
class FakeDeadLetters:
    """Collects dead letters; with ``strict``, any letter is a bug."""

    strict: bool = False
    letters: list[DeadLetter] = dataclasses.field(default_factory=list)

    async def send(self, letter: DeadLetter) -> None:
        """Keep it, or fail loudly."""
        if self.strict:
            raise AssertionError(f"unexpected dead letter: {letter}")
        self.letters.append(letter)
