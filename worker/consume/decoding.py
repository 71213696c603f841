"""Decode fetched records off the event loop, a bounded window ahead of the consume loop.

Decoding (JSON parse + validation) is the worker's largest CPU cost; applying a batch is
mostly waiting on the stores. Decoding the next records while the loop awaits the
current batch's saga overlaps the two. In a thread the decoding still holds the GIL the
loop needs to lay out and send the batch (py-spy on FalkorDB: the GIL was the limit), so
by default it runs in a child process, and only the decoded event (plain lists and dicts,
about a seventh of the decoding's cost to unpickle) comes back, with its graph's digest
(computed there, so ``plan_batch`` does not compute it on the loop). A graph found
unchanged against its source's applied digest does not come back at all: it is left in
its record (``events.LeftBehind``), since pickling it cost as much as checking it.

Results come back strictly in record order, and at most ``window`` records, and no more
than ``window_bytes`` of record values beyond the first, are decoded ahead: a decoded
graph takes about 20 times its JSON in memory (measured: one 15.8 MB event, 290 MB), so
eight large events decoded ahead would take gigabytes where eight files of a few hundred
kilobytes take a few megabytes. A decoder process
that dies (killed for memory, say) is replaced; a record that kills a decoder of its own
too is refused with the reason ``decoder-crashed`` instead of stopping its partition.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from worker.errors import EventError
from worker.events import AstGraphUpserted, Event, graph_digest, remember_digest
from worker.runtime import tune_gc

log = structlog.get_logger(__name__)

R = TypeVar("R")


class Decode(Protocol):
    """``decode_event`` with the worker's limits bound (picklable: a partial of a module function)."""

    def __call__(self, raw: bytes | None, *, known_digest: bytes | None = None) -> Event:
        """The event, or EventError; ``known_digest``: the source's applied graph's (see decode_event)."""
        ...


@dataclass(frozen=True, slots=True)
class _Decoded:
    """An event and, for an upsert, its graph's digest: computed where it was decoded, off the consume loop."""

    event: Event
    digest: bytes | None


def _outcome(decode: Decode, value: bytes | None, known_digest: bytes | None) -> _Decoded | EventError:
    """Module-level, so a child process can run it: the event or why it is invalid."""
    try:
        event = decode(value, known_digest=known_digest)
    except EventError as exc:
        return exc
    return _Decoded(event, graph_digest(event.graph) if isinstance(event, AstGraphUpserted) else None)


def _received(outcome: _Decoded | EventError) -> Event | EventError:
    """The event, its digest remembered for plan_batch (the graph object is the worker's own now)."""
    if isinstance(outcome, EventError):
        return outcome
    if outcome.digest is not None and isinstance(outcome.event, AstGraphUpserted):
        remember_digest(outcome.event.graph, outcome.digest)
    return outcome.event


def _start_decoder() -> None:
    """Initializer of a decoder process: the worker's GC tuning, and exit with the worker."""
    tune_gc()
    _exit_with_parent()


def _exit_with_parent() -> None:
    """Exit as soon as the worker is gone, kill -9 included.

    Otherwise the child outlives a killed worker (it holds both ends of its call queue, so
    it never reads EOF) and keeps the worker's stdout and stderr open.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="gpm-parent-watch", daemon=True).start()


def _ready() -> None:
    """Run once in a new decoder process so it imports the decoder before the first record."""


class DecodeAhead:
    """``decoded(records)`` yields ``(record, event or EventError)``; ``processes=0`` decodes in a thread."""

    def __init__(self, decode: Decode, window: int = 8, processes: int = 1, window_bytes: int = 16 << 20) -> None:
        self._decode = decode
        self._window = window
        self._window_bytes = window_bytes
        self._processes = processes
        self._executor = self._new_executor()

    def _new_executor(self) -> Executor:
        if self._processes == 0:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpm-decode")
        # spawn, not fork: the worker has threads (the driver's, this module's), and a
        # forked child would inherit their locks in whatever state they were.
        executor = ProcessPoolExecutor(
            max_workers=self._processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_decoder
        )
        # Start and import now, in the background: a process spawned on the first record
        # held the first batch up for about a second (measured on the bench).
        for _ in range(self._processes):
            executor.submit(_ready)
        return executor

    def _submit(
        self, value: bytes | None, known_digest: bytes | None, executor: Executor | None = None
    ) -> asyncio.Future[_Decoded | EventError]:
        loop = asyncio.get_running_loop()
        try:
            return loop.run_in_executor(executor or self._executor, _outcome, self._decode, value, known_digest)
        except BrokenProcessPool as exc:
            # A pool that broke before its loss was noticed refuses new work at once: hand
            # that back as the record's outcome, so _result recovers it like the others.
            future: asyncio.Future[_Decoded | EventError] = loop.create_future()
            future.set_exception(exc)
            return future

    async def _result(
        self,
        future: asyncio.Future[_Decoded | EventError],
        executor: Executor,
        value: bytes | None,
        known_digest: bytes | None,
    ) -> Event | EventError:
        try:
            return _received(await future)
        except BrokenProcessPool:
            pass
        # The decoder process died, and every decoding in flight with it: the culprit is one
        # of them. Replace the pool once, then retry each lost record in a process of its
        # own, so a crash is only ever blamed on the record that causes it.
        if executor is self._executor:
            log.error("decoder process died; starting a new one")
            broken, self._executor = self._executor, self._new_executor()
            broken.shutdown(wait=False, cancel_futures=True)
        alone = self._new_executor()
        try:
            return _received(await self._submit(value, known_digest, alone))
        except BrokenProcessPool:
            return EventError("decoder-crashed", "decoding this record killed the decoder process")
        finally:
            alone.shutdown(wait=False, cancel_futures=True)

    async def decoded(
        self,
        records: Sequence[R],
        value: Callable[[R], bytes | None],
        known_digest: Callable[[R], bytes | None] = lambda _: None,
    ) -> AsyncGenerator[tuple[R, Event | EventError], None]:
        """Each record with its decoded event (or why it is invalid), in order.

        ``known_digest``: the digest of the graph applied for a record's source, if any.
        Stopping early (a rebalance, a rewind) cancels the decodings not yet started.
        """
        pending: deque[tuple[R, Executor, asyncio.Future[_Decoded | EventError], int]] = deque()
        upcoming = iter(records)
        held = 0  # bytes of the values pending

        def fill() -> None:
            nonlocal held
            while len(pending) < self._window and (not pending or held < self._window_bytes):
                record = next(upcoming, None)
                if record is None:
                    return
                raw = value(record)
                size = len(raw or b"")
                held += size
                pending.append((record, self._executor, self._submit(raw, known_digest(record)), size))

        fill()
        try:
            while pending:
                record, executor, future, size = pending.popleft()
                held -= size
                outcome = await self._result(future, executor, value(record), known_digest(record))
                fill()
                yield record, outcome
        finally:
            for _, _, future, _ in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the thread or process once the decoding under way (if any) ends; never blocks the loop."""
        self._executor.shutdown(wait=False, cancel_futures=True)
