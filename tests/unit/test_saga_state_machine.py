"""Random interleavings of events, store failures, crashes and replays (hypothesis).

The stores are in-memory fakes with the real ones' atomicity: a graph apply is all or
nothing, each PostgreSQL step is one transaction. A "crash" kills the coordinator
between two steps; the consumer then re-reads from its committed position, as Kafka
redelivers. The invariants are those of docs/architecture.md, checked after every step.
"""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.factories import delete, graph, inbound, upsert
from tests.fakes import Crash, FakeDeadLetters, FakeGraph, FakeRelational
from worker.config import WorkerSettings
from worker.errors import StoreUnavailable
from worker.events import AstGraphDeleted, AstGraphUpserted
from worker.ports import (
    InboundEvent,
)
from worker.saga.coordinator import SagaCoordinator

SOURCES = ("a.py", "b.py", "c.py")


FAST = WorkerSettings(retry_initial_s=0.001, retry_max_s=0.001, retry_window_s=0.001)


class SagaMachine(RuleBasedStateMachine):
    """A log of events, a consumer position, and the coordinator between them."""

    def __init__(self) -> None:
        super().__init__()
        self.graph = FakeGraph()
        self.relational = FakeRelational()
        self.log: list[InboundEvent] = []
        self.committed = 0
        self.coordinator = self._new_coordinator()

    def _new_coordinator(self) -> SagaCoordinator:
        return SagaCoordinator(self.relational, self.graph, FakeDeadLetters(strict=True), FAST)  # type: ignore[arg-type]

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
        assert all(states[-1] != "pending" for states in self.relational.outbox.values())


SagaMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
TestSagaStateMachine = SagaMachine.TestCase
