"""Batching by graph rows with a linger bound, and offsets to commit."""

from __future__ import annotations

from tests.factories import graph, inbound, upsert
from worker.consume.batcher import Batcher
from worker.deadletter import DeadLetter
from worker.ports import Position


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now


def _item(rows: int, offset: int, partition: int = 0):  # type: ignore[no-untyped-def]
    nodes = [(f"n{i}", "Name") for i in range(rows)]
    return inbound(upsert(f"f{offset}.py", 1, graph(nodes)), offset, partition)


def test_full_at_transaction_size_rows() -> None:
    """A batch is due once it holds transaction_size rows."""
    batcher = Batcher(max_rows=10, linger_s=5, clock=Clock())
    batcher.add(_item(4, 0))
    assert not batcher.due
    batcher.add(_item(6, 1))
    assert batcher.full
    assert batcher.due


def test_due_after_linger_even_if_small() -> None:
    """A small batch flushes once its first event has waited linger seconds."""
    clock = Clock()
    batcher = Batcher(max_rows=100, linger_s=0.5, clock=clock)
    batcher.add(_item(1, 0))
    clock.now = 0.4
    assert not batcher.due
    clock.now = 0.5
    assert batcher.due


def test_overflow_is_detected_before_adding() -> None:
    """An event that would push a non-empty batch past the target starts a new batch."""
    batcher = Batcher(max_rows=10, linger_s=5, clock=Clock())
    assert not batcher.would_overflow(_item(50, 0))  # alone, a big graph is its own batch
    batcher.add(_item(5, 0))
    assert batcher.would_overflow(_item(6, 1))


def test_offsets_cover_valid_and_rejected_records() -> None:
    """Commit positions include dead-lettered records, per partition."""
    batcher = Batcher(max_rows=100, linger_s=5, clock=Clock())
    batcher.add(_item(1, 3, partition=0))
    batcher.reject(DeadLetter(Position("ast-graphs", 0, 4), None, b"x", (), "invalid", "bad"))
    batcher.add(_item(1, 7, partition=1))
    batch = batcher.take()
    assert batch.last_offsets == {("ast-graphs", 0): 4, ("ast-graphs", 1): 7}
    assert batch.first_offsets == {("ast-graphs", 0): 3, ("ast-graphs", 1): 7}
    assert not batcher.pending


def test_revoked_partitions_are_dropped_from_the_buffer() -> None:
    """On revoke, buffered records of lost partitions are forgotten; others stay."""
    batcher = Batcher(max_rows=100, linger_s=5, clock=Clock())
    batcher.add(_item(1, 0, partition=0))
    batcher.add(_item(2, 1, partition=1))
    batcher.drop_partitions({("ast-graphs", 0)})
    assert [e.position.partition for e in batcher.pending.events] == [1]
    assert batcher.pending.rows == 2
