"""The saga coordinator: applies one batch to PostgreSQL and the graph store.

Steps per batch (see docs/architecture.md):
  1. PostgreSQL: outbox row 'pending' + read the applied versions and processed ids.
  2. PostgreSQL, a second transaction left open: registry, links and processed ledger.
  3. Graph store: one transaction with all of the batch's changes (rolled back on error).
  4. PostgreSQL: parked links and outbox 'applied'; the transaction of step 2 commits.
So whatever PostgreSQL could refuse is refused before the graph changes: the graph write
is the last step that can refuse a batch, and a refusal on either side leaves both
stores as they were (outbox 'compensated'). The caller commits Kafka offsets only after
:meth:`SagaCoordinator.apply` returns.

Failures: a transient one (StoreUnavailable) is retried with bounded, jittered backoff
under the same outbox row, then re-raised so the consumer rewinds and tries later. A
permanent one (StoreRejected, or any unexpected exception as UnexpectedFailure) splits
the batch in halves until the offending event is alone; once the event is refused again
when tried alone, it is dead-lettered with the error and the rest is applied. Nothing
after the graph's commit is ever taken as a rejection (see ``_after_graph_commit``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from uuid import UUID, uuid4

import structlog
from opentelemetry import trace
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

from worker import failpoints
from worker.config import WorkerSettings
from worker.deadletter import DeadLetter, DeadLetterSink, class_name, stack_of
from worker.errors import ConfigError, StoreError, StoreRejected, StoreUnavailable, UnexpectedFailure
from worker.events import AstGraphUpserted, IntentLinkDeleted, IntentLinkUpserted, restore_graph
from worker.ports import (
    BatchPlan,
    BatchRecord,
    GraphStore,
    GraphWriteStats,
    InboundEvent,
    Outcome,
    Position,
    RelationalStore,
)
from worker.retrying import backoff, log_before_retry
from worker.saga.plan import plan_batch
from worker.telemetry import metrics

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("graph_postgres_manager.saga")

# Tries of a lone event before a rejection is taken as final and the event dead-lettered.
REJECTION_ATTEMPTS = 3


@dataclass(slots=True)
class BatchResult:
    """What became of a batch's events."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    nodes_written: int = 0
    edges_written: int = 0
    # Each event with its outcome, in the order the (sub-)batches were applied.
    events: list[tuple[InboundEvent, Outcome]] = field(default_factory=list)
    # Sources whose new version found their graph unchanged (nothing written to the graph).
    unchanged: set[str] = field(default_factory=set)

    def add(self, plan: BatchPlan, stats: GraphWriteStats) -> None:
        """Fold in one applied (sub-)batch."""
        self.outcomes.update(outcome for _, outcome in plan.outcomes)
        self.events.extend(plan.outcomes)
        self.unchanged |= plan.unchanged
        self.nodes_written += stats.nodes_written
        self.edges_written += stats.edges_written


def _with_graph(item: InboundEvent) -> InboundEvent:
    """The item with any graph it left behind at decode time restored from its record."""
    if isinstance(item.event, AstGraphUpserted) and item.event.graph.left_behind:
        return dataclasses.replace(item, event=restore_graph(item.event, item.raw))
    return item


class SagaCoordinator:
    """Applies batches through the saga; depends on the ports only."""

    def __init__(
        self,
        relational: RelationalStore,
        graph: GraphStore,
        dead_letters: DeadLetterSink,
        settings: WorkerSettings,
    ) -> None:
        self._relational = relational
        self._graph = graph
        self._dead_letters = dead_letters
        self._settings = settings

    async def apply(self, events: list[InboundEvent], *, isolate: bool = True) -> BatchResult:
        """Apply the events; return only when every one is applied, superseded or dead-lettered.

        With ``isolate=False`` the batch is all or nothing: a rejection is raised as it is,
        with nothing written, instead of being narrowed down to one dead-lettered event.
        """
        result = BatchResult()
        if events:
            with tracer.start_as_current_span("saga batch", attributes={"gpm.batch.events": len(events)}):
                if isolate:
                    await self._apply_isolating(events, result)
                else:
                    result.add(*await self._apply_confirming_rejection(events))
        return result

    async def graph_digests(self, source_ids: tuple[str, ...]) -> dict[str, bytes]:
        """The applied graphs' digests of these sources, for decoding (``decode_event``'s ``known_digest``).

        Only a shortcut: when PostgreSQL does not answer, every event is validated whole.
        """
        try:
            return await self._relational.graph_digests(source_ids)
        except StoreError as exc:
            log.info("applied graph digests unavailable; validating every graph", error=str(exc))
            return {}

    async def recover(self, partitions: tuple[tuple[str, int], ...]) -> None:
        """On assignment: close the outbox rows a previous owner left 'pending' on these partitions.

        The previous owner finished its batch before giving the partitions up (the revoke
        waits for it), so a row still 'pending' was cut off by a crash. Its offsets were not
        committed: its events come again and are applied idempotently under a new batch.
        """
        try:
            count = await self._relational.abandon_pending(partitions)
        except StoreError as exc:
            log.warning("could not close interrupted outbox rows; will retry at next assignment", error=str(exc))
            return
        if count:
            log.warning("closed outbox rows interrupted by a crash", rows=count, state="abandoned")

    async def _apply_isolating(self, events: list[InboundEvent], result: BatchResult) -> None:
        try:
            if len(events) == 1:
                plan, stats = await self._apply_confirming_rejection(events)
            else:
                plan, stats = await self._apply_with_retries(events)
        except StoreRejected as exc:
            if len(events) == 1:
                await self._dead_letter(events[0], exc)
                result.outcomes[Outcome.DEAD_LETTERED] += 1
                result.events.append((events[0], Outcome.DEAD_LETTERED))
                return
            middle = len(events) // 2
            log.warning("batch rejected, splitting to isolate the culprit", events=len(events), error=str(exc))
            # Halves in order, so each source's versions are still applied in order.
            await self._apply_isolating(events[:middle], result)
            await self._apply_isolating(events[middle:], result)
            return
        result.add(plan, stats)

    async def _apply_confirming_rejection(self, events: list[InboundEvent]) -> tuple[BatchPlan, GraphWriteStats]:
        """Apply one event, or an all-or-nothing batch; a rejection counts only once it repeats.

        A concurrent writer can make a store refuse a write that succeeds a moment later:
        ArcadeDB reports losing the race to create a label combination's type as a
        SemanticError, a client error. Dead-lettering on the first refusal would drop an
        event that is fine. A truly bad event is refused every time, for two more tries.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StoreRejected),
            wait=backoff(self._settings),
            stop=stop_after_attempt(REJECTION_ATTEMPTS),
            before_sleep=log_before_retry(
                "rejected by the store, trying again before taking the rejection as final",
                counted=metrics.batch_retries.labels(cause="store_rejected").inc,
                event_ids=[str(item.event.event_id) for item in events[:20]],
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._apply_with_retries(events)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _apply_with_retries(self, events: list[InboundEvent]) -> tuple[BatchPlan, GraphWriteStats]:
        batch_id = uuid4()
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StoreUnavailable),
            wait=backoff(self._settings),
            stop=stop_after_delay(self._settings.retry_window_s),
            before_sleep=log_before_retry(
                "store unavailable, retrying batch",
                counted=metrics.batch_retries.labels(cause="store_unavailable").inc,
                batch_id=str(batch_id),
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._apply_guarded(batch_id, events)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _apply_guarded(self, batch_id: UUID, events: list[InboundEvent]) -> tuple[BatchPlan, GraphWriteStats]:
        """``_apply_once``, with any unexpected exception taken as a rejection of the batch.

        A bug or a driver surprise that one event triggers must not crash the worker on
        every restart: like a store's refusal, it is confirmed, narrowed down to one event
        and dead-lettered with its class and message.
        """
        try:
            return await self._apply_once(batch_id, events)
        except (StoreError, ConfigError):
            raise  # a store's own verdict, or credentials gone: stop, never dead-letter
        except Exception as exc:  # not BaseException: cancellation and exits pass through
            log.exception("unexpected error applying a batch; treated as a rejection", batch_id=str(batch_id))
            failure = UnexpectedFailure(f"{type(exc).__name__}: {exc}")
            await self._record_failure(batch_id, "compensated", failure)
            raise failure from exc

    async def _apply_once(self, batch_id: UUID, events: list[InboundEvent]) -> tuple[BatchPlan, GraphWriteStats]:
        started = time.perf_counter()
        record = _batch_record(batch_id, events)
        with tracer.start_as_current_span("saga outbox pending"):
            state = await self._relational.begin_batch(record)
        failpoints.hit("after-outbox")
        plan = plan_batch(events, state)
        if any(e.graph.left_behind for e in plan.changes.upserts):
            # Found unchanged when decoded, changed since (a batch in flight wrote another
            # version): its graph is read back from its record, and the batch planned again.
            events = [_with_graph(item) for item in events]
            plan = plan_batch(events, state)
        changes = plan.changes
        if changes.upserts:
            # Re-attach existing links into the sources being rewritten, except for intents
            # this batch rewrites itself (their new links replace the old ones).
            rewritten = {e.intent_id for e in changes.intent_upserts} | {e.intent_id for e in changes.intent_deletes}
            with tracer.start_as_current_span("saga links read"):
                links = await self._relational.links_for_sources(tuple(e.source_id for e in changes.upserts))
            changes = dataclasses.replace(changes, relinks=tuple(r for r in links if r.intent_id not in rewritten))
        graph_committed = False
        try:
            # Step 3 first, held open: PostgreSQL refuses a batch before the graph changes,
            # so the graph write is the last step that can refuse it (docs/architecture.md).
            async with self._relational.completing(batch_id, plan) as completion:
                graph_started = time.perf_counter()
                # The adapters' statement spans below name the database system (neo4j or falkordb).
                with tracer.start_as_current_span(
                    "saga graph import", attributes={"db.operation.batch.size": record.rows}
                ):
                    stats = await self._graph.apply(changes)
                graph_committed = True
                graph_seconds = time.perf_counter() - graph_started
                failpoints.hit("after-graph")
                with tracer.start_as_current_span("saga outbox applied"):
                    await _after_graph_commit(completion.finish(stats))
        except StoreError as exc:
            # Before the graph's commit, both sides were rolled back (or never written): that
            # is the compensation. After it, the graph holds the batch and the retry, always
            # a retry then (see _after_graph_commit), writes it again idempotently.
            await self._record_failure(batch_id, "failed" if graph_committed else "compensated", exc)
            raise
        failpoints.hit("after-postgres")
        metrics.record_batch(plan, stats, time.perf_counter() - started)
        if stats.unresolved_links:
            log.warning(
                "intent links parked: their AST nodes are not in the graph yet",
                batch_id=str(batch_id),
                parked=len(stats.unresolved_links),
                links=[f"{r.intent_id} -> {r.source_id}#{r.node_id}" for r in stats.unresolved_links[:20]],
            )
        log.info(
            "batch applied",
            batch_id=str(batch_id),
            events=len(events),
            applied=len(plan.winners),
            nodes_written=stats.nodes_written,
            edges_written=stats.edges_written,
            seconds=round(time.perf_counter() - started, 3),
            graph_seconds=round(graph_seconds, 3),
            statements=stats.statements,
        )
        return plan, stats

    async def _record_failure(self, batch_id: UUID, state: str, exc: Exception) -> None:
        try:
            await self._relational.fail_batch(batch_id, state, f"{type(exc).__name__}: {exc}")
        except StoreError as record_exc:
            # PostgreSQL is down too: the row stays 'pending' and the retry rewrites it.
            log.warning("could not record the failed attempt", batch_id=str(batch_id), error=str(record_exc))

    async def _dead_letter(self, item: InboundEvent, exc: StoreRejected) -> None:
        log.error(
            "event rejected by the store, dead-lettering it",
            event_id=str(item.event.event_id),
            source_id=item.event.source_id,
            topic=item.position.topic,
            partition=item.position.partition,
            offset=item.position.offset,
            error=str(exc),
        )
        reason = "apply-failed" if isinstance(exc, UnexpectedFailure) else "store-rejected"
        with tracer.start_as_current_span("dead-letter", attributes={"gpm.reason": reason}):
            await self._send_letter(item, exc, reason)
        metrics.dead_lettered.labels(reason=reason).inc()

    async def _send_letter(self, item: InboundEvent, exc: StoreRejected, reason: str) -> None:
        await self._dead_letters.send(
            DeadLetter(
                position=item.position,
                key=item.key,
                value=item.raw,
                headers=item.headers,
                reason=reason,
                detail=str(exc),
                # The driver's own error where there is one (e.g. asyncpg's CheckViolationError).
                exception_class=class_name(exc.__cause__ or exc),
                stack=stack_of(exc),
            )
        )


async def _after_graph_commit(step: Awaitable[None]) -> None:
    """Run what follows the graph's commit: any failure there is retried, never dead-lettered.

    The graph holds the batch by then, so isolating and dead-lettering an event would leave
    the stores disagreeing. Only commit-time failures can occur here (every value was
    written before the graph), and the retry rewrites the graph idempotently.
    """
    try:
        await step
    except StoreUnavailable:
        raise
    except Exception as exc:
        msg = f"completing the batch in PostgreSQL failed after the graph write: {type(exc).__name__}: {exc}"
        raise StoreUnavailable(msg) from exc


def _batch_record(batch_id: UUID, events: list[InboundEvent]) -> BatchRecord:
    positions: dict[tuple[str, int], list[int]] = {}
    for item in events:
        positions.setdefault((item.position.topic, item.position.partition), []).append(item.position.offset)
    intents: set[UUID] = set()
    sources: set[str] = set()
    for item in events:
        if isinstance(item.event, IntentLinkUpserted | IntentLinkDeleted):
            intents.add(item.event.intent_id)
        else:
            sources.add(item.event.source_id)
    return BatchRecord(
        batch_id=batch_id,
        # One position per partition: the batch's first and last offsets there.
        positions=tuple(
            Position(topic, partition, offset)
            for (topic, partition), offsets in sorted(positions.items())
            for offset in (min(offsets), max(offsets))
        ),
        event_ids=tuple(item.event.event_id for item in events),
        source_ids=tuple(sorted(sources)),
        intent_ids=tuple(sorted(intents)),
        rows=sum(item.rows for item in events),
    )
