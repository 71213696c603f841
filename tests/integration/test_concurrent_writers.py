"""Replicas writing at once through the saga, on the real stores (PostgreSQL and the Bolt graph server).

On ArcadeDB, the first use of a label combination creates a type, and two writers that
race to create it leave one with a SemanticError: a refusal that a retry does not meet.
No such refusal may dead-letter an event (CI once lost one this way in the rebalance test).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.factories import graph, inbound, upsert
from tests.integration.conftest import Namespace
from worker.deadletter import DeadLetter
from worker.ports import Outcome
from worker.saga.coordinator import SagaCoordinator
from worker.stores.postgres import PostgresRelationalStore

pytestmark = pytest.mark.integration

WRITERS = 3
ROUNDS = 4


class _Letters:
    """The dead-letter port, kept in memory: what reaches it is the test's finding."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def send(self, letter: DeadLetter) -> None:
        """Keep it."""
        self.letters.append(letter)


async def test_writers_racing_to_create_new_node_types_dead_letter_nothing(ns: Namespace) -> None:
    """Three coordinators apply files with the same never-seen node types at the same moment."""
    relational = [await PostgresRelationalStore.connect(ns.settings.postgres) for _ in range(WRITERS)]
    graphs = [ns.graph() for _ in range(WRITERS)]
    letters = _Letters()
    try:
        await relational[0].migrate()
        await graphs[0].migrate()
        coordinators = [SagaCoordinator(relational[i], graphs[i], letters, ns.settings.worker) for i in range(WRITERS)]
        for round_ in range(ROUNDS):
            # New node types each round, so every round starts a fresh race for them.
            kinds = [f"Round{round_}Kind{k}" for k in range(3)]
            nodes = [("m", "Module")] + [(f"n{k}", kind) for k, kind in enumerate(kinds)]
            edges = [("m", "BODY", f"n{k}") for k in range(len(kinds))]
            results = await asyncio.gather(
                *(
                    coordinator.apply([inbound(upsert(f"r{round_}w{i}.py", 1, graph(nodes, edges)), partition=i)])
                    for i, coordinator in enumerate(coordinators)
                )
            )
            assert [letter.detail for letter in letters.letters] == []
            assert [r.outcomes[Outcome.APPLIED] for r in results] == [1] * WRITERS
        written = await graphs[0].query("MATCH (n:AstNode) RETURN count(n) AS n")
        assert written == [{"n": ROUNDS * WRITERS * 4}]
    finally:
        for store in relational:
            await store.close()
        for store in graphs:
            await store.close()
