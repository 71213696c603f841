"""Assemble and run one worker process: stores, dead-letter producer, consumer, runner.

Start: probes are served first; while a store or the broker is unreachable the worker
waits with backoff (not ready), instead of crash-looping.

Shutdown (SIGTERM/SIGINT), as arq does it: stop fetching, let the batch in flight finish
within ``shutdown_grace_s`` (or cancel it: its graph transaction rolls back and its
offsets stay uncommitted), then close everything in reverse order of opening.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_base, retry_if_exception

from worker import failpoints
from worker.broker import check_broker
from worker.compose import (
    graph_transport_refusal,
    open_graph,
    open_relational,
    open_stores,
    read_limits,
    runner_limits,
)
from worker.config import Settings
from worker.consume import record_batches
from worker.consume.runner import IngestRunner
from worker.deadletter import DeadLetterSink, HaltingDeadLetterSink, KafkaDeadLetterSink
from worker.errors import AccessRefused, ConfigError, DatabaseMissing, Halted, StoreError, StoreUnavailable
from worker.health import HealthServer, Probes
from worker.ports import GraphBackend
from worker.preflight import run_preflight
from worker.retrying import backoff, log_before_retry
from worker.saga.coordinator import SagaCoordinator
from worker.stores.postgres import PostgresRelationalStore
from worker.telemetry import configure_tracing, metrics
from worker.watch import BrokerWatch

log = structlog.get_logger(__name__)


async def migrate(settings: Settings) -> None:
    """Apply PostgreSQL migrations and the graph schema."""
    async with open_stores(settings) as stores:
        await stores.relational.migrate()
        await stores.graph.migrate()


# Each resource gets this long to close at shutdown. Offsets are committed batch by batch,
# so a close that hangs (a consumer leaving the group in the middle of a rebalance, seen
# once in ~25 runs of the three-replica test) only delays what the broker notices anyway:
# the process must still exit well within the pod's termination grace.
CLOSE_TIMEOUT_S = 10.0


def _log_task_stacks() -> None:
    """SIGUSR1: log where every asyncio task is waiting (for a worker that seems stuck)."""
    for task in asyncio.all_tasks():
        frames = io.StringIO()
        task.print_stack(file=frames)
        log.warning("task stack", task=task.get_name(), stack=frames.getvalue())


async def _bounded_close(what: str, close: Callable[[], Awaitable[None]]) -> None:
    started = time.monotonic()
    try:
        await asyncio.wait_for(close(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("closing took too long; exiting without it", what=what, timeout_s=CLOSE_TIMEOUT_S)
    else:
        log.debug("closed", what=what, seconds=round(time.monotonic() - started, 3))


def _an_outage(exc: BaseException) -> bool:
    """Worth waiting for at start: the broker unreachable, not refusing what the settings send."""
    return isinstance(exc, KafkaConnectionError) or (
        isinstance(exc, StoreUnavailable) and not isinstance(exc, AccessRefused)
    )


def dlq_request_bytes(settings: Settings) -> int:
    """The dead-letter producer's request size: any accepted event with its error headers fits."""
    return settings.worker.max_event_bytes + 64 * 1024


class Worker:
    """One worker process; ``run`` returns after a clean shutdown."""

    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self._handle_signals = handle_signals
        failpoints.arm(settings.worker.crash_at)
        self.runner: IngestRunner | None = None
        self.health: HealthServer | None = None
        self.started = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._relational: PostgresRelationalStore | None = None
        self._graph: GraphBackend | None = None
        self._broker_watch = BrokerWatch(settings.kafka, settings.worker.retry_max_s)

    def stop(self) -> None:
        """Ask the worker to stop (idempotent), also while it is still waiting for its stores."""
        self._stop_requested.set()
        if self.runner is not None:
            self.runner.stopping.set()

    async def run(self) -> None:
        """Serve probes, wait for the stores and migrate, consume until stopped, close."""
        s = self.settings
        started_at = time.monotonic()
        async with AsyncExitStack() as stack:
            if self._handle_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.stop)
                    stack.callback(loop.remove_signal_handler, sig)
                loop.add_signal_handler(signal.SIGUSR1, _log_task_stacks)
            configure_tracing()
            if s.health.enabled:
                self.health = HealthServer(
                    s.health,
                    Probes(
                        # Before the consume loop exists, the start counts as its heartbeat.
                        heartbeat=lambda: self.runner.last_heartbeat if self.runner else started_at,
                        joined=lambda: self.runner is not None and self.runner.joined,
                        ping_postgres=self._ping_relational,
                        ping_graph=self._ping_graph,
                        broker_refused=lambda: self._broker_watch.refused,
                    ),
                )
                await self.health.start()
                stack.push_async_callback(_bounded_close, "health server", self.health.stop)
            if not await self._open_stores(stack):
                log.info("worker stopped before its stores were reachable")
                return
            relational, graph = self._relational, self._graph
            assert relational is not None  # noqa: S101 - set by _open_stores
            assert graph is not None  # noqa: S101 - set by _open_stores
            producer = await self._start_producer(stack)
            if producer is None:
                log.info("worker stopped before the broker answered")
                return
            # Every record's bytes are read by the worker's bounded reader, not aiokafka's.
            record_batches.install(read_limits(s))
            consumer = AIOKafkaConsumer(
                **s.kafka.client_options(),
                group_id=s.kafka.group_id,
                group_instance_id=s.kafka.group_instance_id,
                client_id=s.kafka.client_id,
                enable_auto_commit=False,
                auto_offset_reset=s.kafka.auto_offset_reset,
                session_timeout_ms=s.kafka.session_timeout_ms,
                heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
                max_partition_fetch_bytes=s.kafka.max_partition_fetch_bytes,
                metadata_max_age_ms=s.kafka.metadata_max_age_ms,
            )
            dead_letters: DeadLetterSink = (
                HaltingDeadLetterSink()
                if s.worker.errors_tolerance == "none"
                else KafkaDeadLetterSink(producer, s.kafka.dlq_suffix, max_bytes=dlq_request_bytes(s))
            )
            coordinator = SagaCoordinator(relational, graph, dead_letters, s.worker)
            limits = runner_limits(s, await graph.parallel_batches(), await graph.server_agent())
            self.runner = runner = IngestRunner(consumer, coordinator, dead_letters, limits)
            runner.subscribe()
            stack.push_async_callback(_bounded_close, "consumer", consumer.stop)
            # start() returns once the group has assigned partitions, which takes as long as the
            # group takes to settle (a crashed member lingers until its session times out): a
            # stop request must not wait for that (seen: a replica deaf to SIGTERM for 90 s).
            if not await self._unless_stopped(consumer.start()):
                log.info("worker stopped before it joined its group")
                return
            if self._stop_requested.is_set():
                runner.stopping.set()
            log.info(
                "worker started",
                group_id=s.kafka.group_id,
                topic_pattern=s.kafka.topic_pattern,
                graph_backend=s.graph.backend,
                batches_in_flight=limits.batches_in_flight,
            )
            self.started.set()
            report = asyncio.create_task(self._report_parked_links(relational), name="parked-links-report")
            stack.callback(report.cancel)
            watch = asyncio.create_task(self._broker_watch.run(self._stop_requested), name="broker-watch")
            stack.callback(watch.cancel)
            prune = asyncio.create_task(self._prune_bookkeeping(relational), name="bookkeeping-retention")
            stack.callback(prune.cancel)
            await self._consume_until_stopped(runner)
        log.info("worker stopped")

    async def _start_producer(self, stack: AsyncExitStack) -> AIOKafkaProducer | None:
        """The dead-letter producer, started; waits with backoff while the broker is unreachable.

        The first Kafka client to start, so it is where a broker that is not up yet shows:
        the worker waits for it as for the stores. None if asked to stop first.
        """
        s = self.settings
        retrying = self._waiting_at_start(
            retry_if_exception(_an_outage),
            log_before_retry("broker not reachable at start; waiting", bootstrap_servers=s.kafka.bootstrap_servers),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    # aiokafka says "Unable to bootstrap" for a wrong password, CA or protocol
                    # alike and retries for ever: those stop the start here, with their reason.
                    await check_broker(s.kafka)
                    # A fresh client per attempt: one whose bootstrap failed is not reused.
                    producer = AIOKafkaProducer(
                        **s.kafka.client_options(),
                        client_id=f"{s.kafka.client_id}-dlq",
                        acks="all",
                        # A dead letter carries the original value, which may be as large as any event.
                        max_request_size=dlq_request_bytes(s),
                        compression_type="gzip",
                    )
                    try:
                        started = await self._unless_stopped(producer.start())
                    except BaseException:
                        await _bounded_close("dead-letter producer", producer.stop)
                        raise
                    # Closed on every way out, also after a start cut short by a stop request.
                    stack.push_async_callback(_bounded_close, "dead-letter producer", producer.stop)
                    return producer if started else None
        except RetryError:
            return None
        raise AssertionError("unreachable: tenacity re-raises or stops")  # pragma: no cover

    def _waiting_at_start(self, retry: retry_base, before_sleep: Callable[[RetryCallState], None]) -> AsyncRetrying:
        """Tries until they succeed or a stop request comes (then RetryError), with the backoff."""
        return AsyncRetrying(
            retry=retry,
            wait=backoff(self.settings.worker),
            stop=lambda _: self._stop_requested.is_set(),
            sleep=self._sleep_unless_stopped,
            before_sleep=before_sleep,
        )

    async def _unless_stopped(self, starting: Awaitable[None]) -> bool:
        """Await ``starting`` unless a stop request comes first, then cancel it; True if it finished."""
        task = asyncio.ensure_future(starting)
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            return False
        task.result()  # its own error, if it failed
        return True

    async def _open_stores(self, stack: AsyncExitStack) -> bool:
        """Connect and migrate, waiting with backoff while a store is unreachable.

        Meanwhile /readyz says which store is missing and a stop request ends the wait.
        A permanent failure (bad credentials, missing database) is raised at once.
        Returns False if the worker was asked to stop first.
        """
        s = self.settings
        self._graph = open_graph(s)
        stack.push_async_callback(_bounded_close, "graph driver", self._graph.close)
        started = time.monotonic()

        def worth_waiting(exc: BaseException) -> bool:
            if isinstance(exc, AccessRefused):
                return False
            # A database created right after its server starts (ArcadeDB's default database,
            # Neo4j's CREATE DATABASE) is briefly "not found": wait a bounded time for it,
            # then fail, since a misspelt GPM_GRAPH__DATABASE never appears.
            if isinstance(exc, DatabaseMissing):
                return time.monotonic() - started < s.worker.database_wait_s
            return isinstance(exc, StoreUnavailable)

        retrying = self._waiting_at_start(
            retry_if_exception(worth_waiting), log_before_retry("stores not reachable at start; waiting")
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        await self._open_stores_once(stack)
                    except StoreUnavailable as exc:
                        if not isinstance(exc, AccessRefused) and (
                            refused := await graph_transport_refusal(s.graph, exc)
                        ):
                            raise refused from exc
                        raise
        except RetryError:
            return False
        except (StoreError, ConfigError) as exc:
            log.critical("the stores refused the start; not retrying", error=str(exc))
            raise
        return True

    async def _report_parked_links(self, relational: PostgresRelationalStore) -> None:
        """Publish the parked-link and outbox gauges; log at error level when links pass the bound."""
        ttl = self.settings.worker.parked_link_ttl_s
        reported = 0
        while not self._stop_requested.is_set():
            try:
                parked = await relational.parked_links(older_than_s=ttl)
                # Unfinished states only: they are what an operator watches, and the partial
                # index serves them without scanning every applied row.
                outbox = await relational.unfinished_outbox()
            except AccessRefused as exc:
                # Not an outage: said at error level and on /metrics until it is fixed.
                log.error("PostgreSQL refuses this worker", reason=exc.reason, setting=exc.setting, error=str(exc))  # noqa: TRY400
                metrics.refused["postgres"] = exc.reason
            except StoreError as exc:
                log.warning("could not count parked intent links", error=str(exc))
            else:
                metrics.refused.pop("postgres", None)
                metrics.parked_links, metrics.unresolved_links = parked.parked, parked.expired
                metrics.outbox = {state: n for state, (n, _) in outbox.items()}
                metrics.outbox_oldest = {state: oldest.timestamp() for state, (_, oldest) in outbox.items()}
                if parked.expired and parked.expired != reported:
                    log.error(
                        "intent links unresolved past the bound: their AST nodes never arrived",
                        unresolved=parked.expired,
                        parked=parked.parked,
                        bound_s=ttl,
                        oldest=[f"{r.intent_id} -> {r.source_id}#{r.node_id}" for r in parked.oldest_expired],
                    )
                reported = parked.expired
            await self._sleep_unless_stopped(self.settings.worker.parked_report_interval_s)

    async def _prune_bookkeeping(self, relational: PostgresRelationalStore) -> None:
        """Every prune interval, delete the bookkeeping past its retention (one replica at a time)."""
        worker = self.settings.worker
        metrics.retention_s = worker.bookkeeping_retention_s
        await self._report_bookkeeping(relational)
        while not self._stop_requested.is_set():
            await self._sleep_unless_stopped(worker.bookkeeping_prune_interval_s)
            if self._stop_requested.is_set():
                return
            started = time.monotonic()
            try:
                removed = await relational.prune_bookkeeping(worker.bookkeeping_retention_s)
            except StoreError as exc:
                log.warning("bookkeeping retention did not run; next try at the next interval", error=str(exc))
                continue
            finally:
                await self._report_bookkeeping(relational)  # every replica: one may prune, all export
            if removed is None:
                continue  # another replica prunes
            for table, rows in removed.items():
                metrics.rows_pruned.labels(table).inc(rows)
            if any(removed.values()):
                log.info(
                    "bookkeeping pruned",
                    removed=removed,
                    retention_s=worker.bookkeeping_retention_s,
                    seconds=round(time.monotonic() - started, 3),
                )

    @staticmethod
    async def _report_bookkeeping(relational: PostgresRelationalStore) -> None:
        """The bookkeeping gauges: each table's oldest prunable row and size (O(1) queries)."""
        try:
            tables = await relational.bookkeeping()
        except StoreError as exc:
            log.warning("could not read the bookkeeping's size", error=str(exc))
            return
        metrics.bookkeeping = {t.table: (t.oldest.timestamp() if t.oldest else None, t.bytes) for t in tables}

    async def _open_stores_once(self, stack: AsyncExitStack) -> None:
        s = self.settings
        assert self._graph is not None  # noqa: S101 - created by _open_stores
        try:
            # Bounded: a server that accepts connections before it serves queries (ArcadeDB
            # while it starts) once held an attempt for minutes.
            async with asyncio.timeout(s.worker.start_attempt_timeout_s):
                if self._relational is None:
                    self._relational = await open_relational(s)
                    stack.push_async_callback(_bounded_close, "PostgreSQL pool", self._relational.close)
                if s.worker.preflight:
                    report = await run_preflight(self._relational, self._graph)
                    log.info("preflight", checks={c.name: c.detail for c in report.checks}, ok=report.ok)
                    if report.advice:
                        log.warning("graph server settings slow ingest", advice=list(report.advice))
                    report.raise_for_failures()
                await self._relational.migrate()
                await self._graph.migrate()
        except TimeoutError:
            msg = f"stores did not answer within {s.worker.start_attempt_timeout_s}s"
            raise StoreUnavailable(msg) from None

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), timeout=seconds)

    async def _ping_relational(self) -> None:
        if self._relational is None:
            raise StoreUnavailable("not connected yet")
        await self._relational.ping()

    async def _ping_graph(self) -> None:
        if self._graph is None:
            raise StoreUnavailable("not connected yet")
        await self._graph.ping()

    async def _consume_until_stopped(self, runner: IngestRunner) -> None:
        task = asyncio.create_task(runner.run(), name="ingest")
        stop = asyncio.create_task(runner.stopping.wait(), name="stop-signal")
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            if (error := task.exception()) is not None:
                if isinstance(error, Halted):
                    log.critical("halted: a record cannot be applied (errors_tolerance=none)", error=str(error))
                    raise error
                # Said here as well as by the caller's traceback: embedded runs have no other trace.
                log.critical("consume loop crashed", error=f"{type(error).__name__}: {error}", exc_info=error)
                raise error
            return
        log.info("stopping: finishing the batch in flight", grace_s=self.settings.worker.shutdown_grace_s)
        try:
            await asyncio.wait_for(task, timeout=self.settings.worker.shutdown_grace_s)
        except TimeoutError:
            log.warning("grace period over: batch in flight cancelled; it will be re-read on restart")
