"""Batches applied side by side when they cannot interfere; offsets still committed in batch order.

Two batches are in flight together only if they name disjoint sources and neither holds
an intent event: an intent links into sources its own key does not name, and rewriting a
source re-attaches the links PostgreSQL holds, so a batch with intents runs alone. Per
source, batches therefore still apply one after another in offset order, which the
version check and the whole-source replace rely on. Meanwhile one batch's PostgreSQL
steps and commit overlap another's graph write (on 2 cores the graph step was 82% of a
FalkorDB batch and PostgreSQL plus the gap between batches the other 18%).

Each batch commits only after the batch before it has committed: when one fails, none
after it commits, and the rewind covers them all (applying them again is idempotent).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from worker.consume.batcher import Batch
from worker.events import IntentLinkDeleted, IntentLinkUpserted

# A batch's work given the batch and the task of the batch launched before it (or None).
Apply = Callable[[Batch, "asyncio.Task[None] | None"], Coroutine[Any, Any, None]]


def footprint(batch: Batch) -> frozenset[str] | None:
    """The sources a batch writes, or None if it holds an intent event (it must run alone)."""
    sources = set()
    for item in batch.events:
        if isinstance(item.event, IntentLinkUpserted | IntentLinkDeleted):
            return None
        sources.add(item.event.source_id)
    return frozenset(sources)


@dataclass(slots=True)
class Flight:
    """One batch being applied and committed."""

    batch: Batch
    task: asyncio.Task[None]
    sources: frozenset[str] | None


class InFlight:
    """At most ``limit`` batches in flight, oldest first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._flights: deque[Flight] = deque()

    def __len__(self) -> int:
        return len(self._flights)

    def room_for(self, sources: frozenset[str] | None) -> bool:
        """Whether a batch with this footprint may start now."""
        if len(self._flights) >= self._limit:
            return False
        if not self._flights:
            return True
        if sources is None:
            return False
        return all(f.sources is not None and not f.sources & sources for f in self._flights)

    def launch(self, batch: Batch, sources: frozenset[str] | None, apply: Apply) -> None:
        """Start ``apply`` for the batch; it gets the previous batch's task to await before committing."""
        previous = self._flights[-1].task if self._flights else None
        task = asyncio.create_task(apply(batch, previous), name="apply-batch")
        self._flights.append(Flight(batch, task, sources))

    def oldest_done(self) -> bool:
        """Whether the oldest batch has finished (well or not)."""
        return bool(self._flights) and self._flights[0].task.done()

    def pop_oldest(self) -> Flight:
        """Take the oldest batch off the list (the caller awaits its task)."""
        return self._flights.popleft()

    async def wait_all(self) -> list[tuple[Batch, BaseException | None]]:
        """Let every batch finish, oldest first; each batch with the error it ended with, if any."""
        ended: list[tuple[Batch, BaseException | None]] = []
        try:
            while self._flights:
                flight = self._flights[0]
                try:
                    await asyncio.shield(flight.task)
                    ended.append((flight.batch, None))
                except asyncio.CancelledError:
                    if not flight.task.cancelled():
                        raise  # the waiter was cancelled, not the batch
                    ended.append((flight.batch, asyncio.CancelledError()))
                except Exception as exc:  # noqa: BLE001 - handed to the caller with its batch
                    ended.append((flight.batch, exc))
                self._flights.popleft()
        except asyncio.CancelledError:
            # Out of time (shutdown grace): stop the rest; nothing after this commits.
            for flight in self._flights:
                flight.task.cancel()
            await asyncio.gather(*(f.task for f in self._flights), return_exceptions=True)
            self._flights.clear()
            raise
        return ended
