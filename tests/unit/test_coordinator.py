"""Saga coordinator logic with in-memory fakes of the ports (real stores: tests/integration)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from tests.factories import graph, inbound, upsert
from tests.fakes import FakeDeadLetters, FakeGraph, FakeRelational
from worker.config import WorkerSettings
from worker.errors import StoreUnavailable
from worker.events import AstGraphUpserted, decode_event, encode_event, graph_digest
from worker.ports import Outcome
from worker.saga.coordinator import SagaCoordinator

G = graph([("a", "Module")])


SETTINGS = WorkerSettings(retry_initial_s=0.01, retry_max_s=0.02, retry_window_s=0.3)


async def test_a_rejected_event_is_isolated_and_the_rest_applied_in_order() -> None:
    """Bisection dead-letters only the poison event; the others are applied, in their order."""
    relational, graph_store, letters = FakeRelational(), FakeGraph(poison=frozenset({"bad.py"})), FakeDeadLetters()
    coordinator = SagaCoordinator(relational, graph_store, letters, SETTINGS)
    names = ["a.py", "b.py", "bad.py", "c.py", "d.py"]
    result = await coordinator.apply([inbound(upsert(n, 1, G), offset=i) for i, n in enumerate(names)])
    assert graph_store.applied == ["a.py", "b.py", "c.py", "d.py"]
    assert [letter.position.offset for letter in letters.letters] == [2]
    assert letters.letters[0].reason == "store-rejected"
    assert "constraint violated" in letters.letters[0].detail
    assert result.outcomes[Outcome.APPLIED] == 4
    assert result.outcomes[Outcome.DEAD_LETTERED] == 1
    assert any(states[-1] == "compensated" for states in relational.outbox.values())
    # Alone, the poison event was tried three times before the rejection was taken as final.
    assert graph_store.attempts[("bad.py",)] == 3


async def test_a_rejection_that_does_not_repeat_dead_letters_nothing() -> None:
    """A lone event refused once (a concurrent writer's race) is tried again and applied."""
    relational, graph_store, letters = FakeRelational(), FakeGraph(rejected_calls=2), FakeDeadLetters()
    coordinator = SagaCoordinator(relational, graph_store, letters, SETTINGS)
    result = await coordinator.apply([inbound(upsert("a.py", 1, G))])
    assert letters.letters == []
    assert graph_store.applied == ["a.py"]
    assert result.outcomes == Counter({Outcome.APPLIED: 1})
    assert sorted(states[-1] for states in relational.outbox.values()) == ["applied", "compensated", "compensated"]


async def test_transient_failures_are_retried_under_one_outbox_row() -> None:
    """A short outage is retried with backoff; the same batch id records each attempt."""
    relational, graph_store, letters = FakeRelational(), FakeGraph(unavailable_calls=2), FakeDeadLetters()
    coordinator = SagaCoordinator(relational, graph_store, letters, SETTINGS)
    await coordinator.apply([inbound(upsert("a.py", 1, G))])
    assert graph_store.applied == ["a.py"]
    (states,) = relational.outbox.values()
    assert states == ["pending", "compensated", "pending", "compensated", "pending", "applied"]
    assert letters.letters == []


async def test_a_long_outage_is_raised_never_dead_lettered() -> None:
    """Past the retry window the error reaches the consumer (which rewinds); nothing is dead-lettered."""
    relational, graph_store, letters = FakeRelational(), FakeGraph(unavailable_calls=10_000), FakeDeadLetters()
    coordinator = SagaCoordinator(relational, graph_store, letters, SETTINGS)
    with pytest.raises(StoreUnavailable):
        await coordinator.apply([inbound(upsert("a.py", 1, G)), inbound(upsert("b.py", 1, G), offset=1)])
    assert letters.letters == []
    assert relational.versions == {}


async def test_a_postgresql_refusal_leaves_the_graph_untouched() -> None:
    """Step 3 refused: the event is dead-lettered without the graph ever being written, outbox 'compensated'."""
    relational, graph_store, letters = FakeRelational(refuse=frozenset({"bad.py"})), FakeGraph(), FakeDeadLetters()
    coordinator = SagaCoordinator(relational, graph_store, letters, SETTINGS)
    names = ["a.py", "bad.py", "c.py"]
    result = await coordinator.apply([inbound(upsert(n, 1, G), offset=i) for i, n in enumerate(names)])
    assert graph_store.applied == ["a.py", "c.py"]
    assert not any("bad.py" in attempt for attempt in graph_store.attempts)
    assert [letter.position.offset for letter in letters.letters] == [1]
    assert "CheckViolationError" in letters.letters[0].detail
    assert relational.versions == {"a.py": 1, "c.py": 1}
    assert result.outcomes == Counter({Outcome.APPLIED: 2, Outcome.DEAD_LETTERED: 1})
    assert all(states[-1] in {"applied", "compensated"} for states in relational.outbox.values())


async def test_an_unexpected_exception_dead_letters_its_event_instead_of_crashing() -> None:
    """A TypeError from deep inside is confirmed, isolated and dead-lettered as 'apply-failed'; the rest applies."""
    relational, graph_store, letters = FakeRelational(), FakeGraph(crash_on=frozenset({"odd.py"})), FakeDeadLetters()
    coordinator = SagaCoordinator(relational, graph_store, letters, SETTINGS)
    names = ["a.py", "odd.py", "c.py"]
    result = await coordinator.apply([inbound(upsert(n, 1, G), offset=i) for i, n in enumerate(names)])
    assert graph_store.applied == ["a.py", "c.py"]
    (letter,) = letters.letters
    assert (letter.reason, letter.position.offset) == ("apply-failed", 1)
    assert "TypeError: unexpected value in the driver" in letter.detail
    headers = dict(letter.dlq_headers())
    assert headers["__connect.errors.exception.class.name"] == b"builtins.TypeError"
    assert b"in apply" in headers["__connect.errors.exception.stacktrace"]  # where it was raised
    assert graph_store.attempts[("odd.py",)] == 3
    assert result.outcomes == Counter({Outcome.APPLIED: 2, Outcome.DEAD_LETTERED: 1})


async def test_a_failure_after_the_graph_commit_is_retried_never_dead_lettered() -> None:
    """Once the graph holds the batch, a PostgreSQL error is retried as an outage (graph rewritten), not refused."""
    relational, graph_store, letters = FakeRelational(fail_at_commit=1), FakeGraph(), FakeDeadLetters()
    coordinator = SagaCoordinator(relational, graph_store, letters, SETTINGS)
    result = await coordinator.apply([inbound(upsert("a.py", 1, G))])
    assert letters.letters == []
    assert graph_store.applied == ["a.py", "a.py"]
    assert relational.versions == {"a.py": 1}
    assert result.outcomes == Counter({Outcome.APPLIED: 1})
    (states,) = relational.outbox.values()
    assert states == ["pending", "failed", "pending", "applied"]


async def test_a_graph_left_behind_that_must_be_written_after_all_is_read_back_from_its_record() -> None:
    """Found unchanged at decode time, changed since (another version applied meanwhile): written whole."""
    event = upsert("a.py", 2, graph([("a", "Module"), ("b", "Expr")], [("a", "BODY", "b")]))
    raw = encode_event(event)
    left = decode_event(raw, max_bytes=10_000, max_nodes=10, known_digest=graph_digest(event.graph))
    assert isinstance(left, AstGraphUpserted)
    assert left.graph.left_behind
    relational, graph_store, letters = FakeRelational(), FakeGraph(), FakeDeadLetters()
    item = dataclasses.replace(inbound(left), raw=raw)
    result = await SagaCoordinator(relational, graph_store, letters, SETTINGS).apply([item])
    assert result.outcomes[Outcome.APPLIED] == 1
    assert graph_store.sources["a.py"] == (2, frozenset({"a", "b"}))
