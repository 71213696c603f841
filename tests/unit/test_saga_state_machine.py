"""Random interleavings of events, store failures, crashes and replays (hypothesis).

The stores are in-memory fakes with the real ones' atomicity: a graph apply is all or
nothing, each PostgreSQL step is one transaction. A "crash" kills the coordinator
between two steps; the consumer then re-reads from its committed position, as Kafka
redelivers. The invariants are those of docs/architecture.md, checked after every step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from contextlib import AbstractAsyncContextManager
from uuid import UUID

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.factories import Completion, completing_with, delete, graph, inbound, upsert
from worker.config import WorkerSettings
from worker.errors import StoreUnavailable
from worker.events import AstGraphDeleted, AstGraphUpserted
from worker.ports import (
    AppliedState,
    BatchPlan,
    BatchRecord,
    GraphChanges,
    GraphWriteStats,
    InboundEvent,
    LinkRow,
    Outcome,
)
from worker.saga.coordinator import SagaCoordinator

SOURCES = ("a.py", "b.py", "c.py")


class Crash(BaseException):
    """The process dies here; nothing after it runs."""


class Graph:
    """Source → (version, node ids); applies all or nothing."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[int, frozenset[str]]] = {}
        self.fail_next = False

    async def apply(self, changes: GraphChanges) -> GraphWriteStats:
        """Atomic: raise before touching anything."""
        if self.fail_next:
            # Down for the whole delivery (every retry), so the outcome never depends on how
            # many retries fit in the retry window: hypothesis needs deterministic steps.
            raise StoreUnavailable("graph down")
        for event in changes.upserts:
            self.sources[event.source_id] = (event.source_version, frozenset(n["id"] for n in event.graph.nodes))
        for event in changes.deletes:
            self.sources.pop(event.source_id, None)
        return GraphWriteStats(nodes_written=sum(len(e.graph.nodes) for e in changes.upserts))

    async def migrate(self) -> None:
        """Nothing."""

    async def ping(self) -> None:
        """Up."""

    async def close(self) -> None:
        """Nothing."""


@dataclasses.dataclass
class Relational:
    """The outbox, ledger and registry; one transaction per call."""

    versions: dict[str, int] = dataclasses.field(default_factory=dict)
    processed: dict[UUID, str] = dataclasses.field(default_factory=dict)
    outbox: dict[UUID, str] = dataclasses.field(default_factory=dict)
    crash_before_complete: bool = False

    async def begin_batch(self, record: BatchRecord) -> AppliedState:
        """'pending' + state."""
        self.outbox[record.batch_id] = "pending"
        return AppliedState(source_versions=dict(self.versions), processed_event_ids=frozenset(self.processed))

    async def links_for_sources(self, source_ids: tuple[str, ...]) -> tuple[LinkRow, ...]:
        """No links in this model."""
        return ()

    def completing(self, batch_id: UUID, plan: BatchPlan) -> AbstractAsyncContextManager[Completion]:
        """Step 3 as the port shapes it: finish() commits what complete_batch records."""
        return completing_with(functools.partial(self.complete_batch, batch_id, plan))

    async def complete_batch(self, batch_id: UUID, plan: BatchPlan, stats: GraphWriteStats) -> None:
        """Registry with the version guard, ledger, 'applied'."""
        if self.crash_before_complete:
            self.crash_before_complete = False
            raise Crash
        for item in plan.winners:
            current = self.versions.get(item.event.source_id, -1)
            self.versions[item.event.source_id] = max(current, item.event.source_version)
        for item, outcome in plan.outcomes:
            if outcome is not Outcome.DUPLICATE:
                self.processed.setdefault(item.event.event_id, outcome.value)
        self.outbox[batch_id] = "applied"

    async def fail_batch(self, batch_id: UUID, state: str, error: str) -> None:
        """Record the failure."""
        self.outbox[batch_id] = state

    async def abandon_pending(self, partitions: tuple[tuple[str, int], ...]) -> int:
        """Close interrupted rows."""
        pending = [k for k, v in self.outbox.items() if v == "pending"]
        for key in pending:
            self.outbox[key] = "abandoned"
        return len(pending)

    async def migrate(self) -> None:
        """Nothing."""

    async def ping(self) -> None:
        """Up."""

    async def close(self) -> None:
        """Nothing."""


class DeadLetters:
    """Nothing is rejected in this model; any letter is a bug."""

    async def send(self, letter: object) -> None:
        """Fail loudly."""
        raise AssertionError(f"unexpected dead letter: {letter}")


FAST = WorkerSettings(retry_initial_s=0.001, retry_max_s=0.001, retry_window_s=0.001)


class SagaMachine(RuleBasedStateMachine):
    """A log of events, a consumer position, and the coordinator between them."""

    def __init__(self) -> None:
        super().__init__()
        self.graph = Graph()
        self.relational = Relational()
        self.log: list[InboundEvent] = []
        self.committed = 0
        self.coordinator = self._new_coordinator()

    def _new_coordinator(self) -> SagaCoordinator:
        return SagaCoordinator(self.relational, self.graph, DeadLetters(), FAST)  # type: ignore[arg-type]

    @rule(source=st.sampled_from(SOURCES), version=st.integers(0, 6), nodes=st.integers(1, 4), deleted=st.booleans())
    def publish(self, source: str, version: int, nodes: int, deleted: bool) -> None:
        """A producer sends a version (possibly old, possibly a delete)."""
        event: AstGraphUpserted | AstGraphDeleted = (
            delete(source, version)
            if deleted
            else upsert(source, version, graph([(f"n{i}", "Name") for i in range(nodes)]))
        )
        self.log.append(inbound(event, offset=len(self.log)))

    @precondition(lambda self: self.committed < len(self.log))
    @rule(size=st.integers(1, 5), fail_graph=st.booleans(), crash=st.booleans())
    def deliver(self, size: int, fail_graph: bool, crash: bool) -> None:
        """The consumer applies the next batch; a failure or crash leaves the position unchanged."""
        batch = self.log[self.committed : self.committed + size]
        self.graph.fail_next = fail_graph
        self.relational.crash_before_complete = crash
        try:
            asyncio.run(self.coordinator.apply(batch))
        except StoreUnavailable:
            return  # rewind: the same records come again
        except Crash:
            self.coordinator = self._new_coordinator()  # restart
            asyncio.run(self.coordinator.recover((("ast-graphs", 0),)))
            return
        finally:
            self.graph.fail_next = False
            self.relational.crash_before_complete = False
        self.committed += len(batch)

    @rule()
    def replay(self) -> None:
        """An operator resets the group to the beginning."""
        self.committed = 0

    def _expected(self) -> dict[str, tuple[int, frozenset[str]]]:
        """The state a crash-free, in-order run over the committed prefix would reach."""
        newest: dict[str, InboundEvent] = {}
        for item in self.log[: self.committed]:
            current = newest.get(item.event.source_id)
            if current is None or item.event.source_version > current.event.source_version:
                newest[item.event.source_id] = item
        state = {}
        for source, item in newest.items():
            if isinstance(item.event, AstGraphUpserted):
                state[source] = (item.event.source_version, frozenset(n["id"] for n in item.event.graph.nodes))
        return state

    @invariant()
    def graph_matches_the_committed_prefix(self) -> None:
        """Every committed event is applied: the graph is the newest committed version of each source.

        Events past the committed position may have reached the stores (a crash after the
        graph commit): they are then newer, never older, than the expected version.
        """
        expected = self._expected()
        for source, (version, _) in expected.items():
            actual = self.graph.sources.get(source)
            applied_version = self.relational.versions.get(source, -1)
            assert applied_version >= version
            if actual is not None:
                assert actual[0] >= version
        if self.committed == len(self.log):
            # Nothing in flight: the stores must equal the expected state exactly.
            assert self.graph.sources == expected
            assert {s: v for s, (v, _) in self.graph.sources.items()} == {
                s: v for s, v in self.relational.versions.items() if s in self.graph.sources
            }

    @invariant()
    def no_outbox_row_is_left_pending_between_batches(self) -> None:
        """Every row ends applied, compensated or abandoned once its call returns."""
        assert "pending" not in self.relational.outbox.values()


SagaMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
TestSagaStateMachine = SagaMachine.TestCase
