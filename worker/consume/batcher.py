"""Group records into batches of about ``transaction_size`` graph rows, with a linger bound.

Pure logic: the runner feeds it decoded records and asks whether to flush. A single
event larger than the target is a batch of its own; the graph store splits it into
statements of ``transaction_size`` rows inside one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from worker.deadletter import DeadLetter
from worker.ports import InboundEvent, Position


@dataclass(slots=True)
class Batch:
    """Valid events, rejected records, and the offsets to commit once both are handled."""

    events: list[InboundEvent] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)
    rows: int = 0
    # Highest offset seen per (topic, partition), valid or not.
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    first_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def _track(self, position: Position) -> None:
        tp = (position.topic, position.partition)
        self.first_offsets.setdefault(tp, position.offset)
        self.last_offsets[tp] = max(position.offset, self.last_offsets.get(tp, -1))

    def __len__(self) -> int:
        return len(self.events) + len(self.rejected)


class Batcher:
    """Accumulates one batch at a time."""

    def __init__(self, max_rows: int, linger_s: float, clock: Callable[[], float]) -> None:
        self._max_rows = max_rows
        self._linger_s = linger_s
        self._clock = clock
        self._batch = Batch()
        self._started: float | None = None

    @property
    def pending(self) -> Batch:
        """The batch being filled."""
        return self._batch

    def would_overflow(self, item: InboundEvent) -> bool:
        """True if adding ``item`` would push a non-empty batch past the target."""
        return bool(self._batch.events) and self._batch.rows + item.rows > self._max_rows

    def add(self, item: InboundEvent) -> None:
        """Add a valid event."""
        self._start()
        self._batch.events.append(item)
        self._batch.rows += item.rows
        self._batch._track(item.position)  # noqa: SLF001 - Batch is this module's own record

    def reject(self, letter: DeadLetter) -> None:
        """Add a record that failed validation (dead-lettered with the batch)."""
        self._start()
        self._batch.rejected.append(letter)
        self._batch._track(letter.position)  # noqa: SLF001 - as above

    def _start(self) -> None:
        if self._started is None:
            self._started = self._clock()

    @property
    def full(self) -> bool:
        """The batch reached its row target."""
        return self._batch.rows >= self._max_rows

    def seconds_left(self) -> float:
        """Time until the linger bound expires (the full linger if the batch is empty)."""
        if self._started is None:
            return self._linger_s
        return max(0.0, self._started + self._linger_s - self._clock())

    @property
    def due(self) -> bool:
        """Flush now: full, or non-empty and lingered long enough."""
        return bool(self._batch) and (self.full or self.seconds_left() <= 0)

    def take(self) -> Batch:
        """Hand over the batch and start a new one."""
        batch, self._batch, self._started = self._batch, Batch(), None
        return batch

    def drop_partitions(self, partitions: set[tuple[str, int]]) -> None:
        """Forget buffered records of revoked partitions (their new owner re-reads them)."""
        old = self._batch
        self._batch = Batch()
        self._started = None
        for item in old.events:
            if (item.position.topic, item.position.partition) not in partitions:
                self.add(item)
        for letter in old.rejected:
            if (letter.position.topic, letter.position.partition) not in partitions:
                self.reject(letter)
