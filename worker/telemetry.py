"""Structured logs (structlog, JSON, trace ids attached), OpenTelemetry traces and metrics.

Traces go where the standard variables say: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``
or ``none``; ``otlp`` by default once ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set), ``OTEL_SERVICE_NAME``. Metrics are
prometheus_client's, served on ``/metrics`` (see health.py). Driver loggers (aiokafka, neo4j, asyncpg) go through the
same JSON renderer so an operator greps one format.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from worker.ports import BatchPlan, GraphWriteStats


def _add_trace_context(_: object, __: str, event: dict[str, Any]) -> dict[str, Any]:
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event["trace_id"] = format(span.trace_id, "032x")
        event["span_id"] = format(span.span_id, "016x")
    return event


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging through one renderer on stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_context,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The drivers are chatty at INFO about routine reconnects; their warnings still show.
    for name in ("aiokafka", "neo4j", "asyncpg"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


_tracing_configured = False


def configure_tracing() -> None:
    """Install the SDK tracer provider and the exporter the OTEL_* variables ask for, once."""
    global _tracing_configured  # noqa: PLW0603 - the OpenTelemetry global provider is process-wide too
    if _tracing_configured:
        return
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - only workers need the SDK
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    endpoint_set = any(os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "otlp" if endpoint_set else "none")
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "graph-postgres-manager")})
    )
    exporter: SpanExporter | None = None
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        exporter = OTLPSpanExporter()
    elif choice == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    # Even without an exporter the SDK provider makes real trace ids, which the logs carry.
    trace.set_tracer_provider(provider)
    _tracing_configured = True


def percentile(samples: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0-100) of ``samples``; None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# A pool's connections by state: "in_use", "idle", "max".
PoolUsage = Callable[[], dict[str, int]]
_RECENT = 4096  # samples kept in process for monitor_performance's percentiles
# Bucket bounds fit to what is measured: a batch takes 10 ms to a minute (the OpenTelemetry
# defaults, 0 to 10,000, put 12 of 13 batches in the first bucket); a lookup 1 ms to 5 s.
BATCH_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
QUERY_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
FRESHNESS_SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
BATCH_EVENTS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
RETRY_CAUSES = ("store_unavailable", "store_rejected", "rewound")
# Always exported, 0 when empty, so an alert on a state has a series to watch.
OUTBOX_STATES = ("pending", "compensated", "failed", "abandoned")


class _Gauges(Collector):
    """Gauges read when /metrics is scraped: pools, lag, outbox, intent links, last apply."""

    def __init__(self, owner: WorkerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One family per gauge, from the owner's current values."""
        owner = self._owner
        pools = GaugeMetricFamily(
            "gpm_pool_connections",
            "Connections of each store's pool, by state (in_use, idle, max).",
            labels=["pool", "state"],
        )
        for name, usage in list(owner.pools.items()):
            for state, n in usage().items():
                pools.add_metric([name, state], n)
        lag = GaugeMetricFamily(
            "gpm_consumer_lag",
            "Records on each assigned partition past the last offset this worker committed "
            "(high watermark minus committed); grows while a store is down.",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in list(owner.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        outbox = GaugeMetricFamily(
            "gpm_outbox_rows", "Outbox rows in each unfinished state (from PostgreSQL).", labels=["state"]
        )
        for state in OUTBOX_STATES:
            outbox.add_metric([state], owner.outbox.get(state, 0))
        applied = GaugeMetricFamily(
            "gpm_last_applied_timestamp_seconds",
            "Unix time of the last batch applied per partition: alert when it stops moving while lag grows.",
            labels=["topic", "partition"],
        )
        for (topic, partition), at in list(owner.last_applied.items()):
            applied.add_metric([topic, str(partition)], at)
        refused = GaugeMetricFamily(
            "gpm_server_refused",
            "1 while a server refuses this worker (credentials, certificates, protocol), by server and reason: "
            "not an outage, an operator must fix a setting or the server.",
            labels=["server", "reason"],
        )
        for server, reason in list(owner.refused.items()):
            refused.add_metric([server, reason], 1)
        oldest = GaugeMetricFamily(
            "gpm_outbox_oldest_timestamp_seconds",
            "Unix time of the oldest outbox row in each unfinished state that has rows (from PostgreSQL).",
            labels=["state"],
        )
        for state, at in list(owner.outbox_oldest.items()):
            oldest.add_metric([state], at)
        kept = GaugeMetricFamily(
            "gpm_bookkeeping_oldest_timestamp_seconds",
            "Unix time of the oldest row retention may remove, per bookkeeping table: alert when it falls "
            "behind GPM_WORKER__BOOKKEEPING_RETENTION_S (retention stopped).",
            labels=["table"],
        )
        size = GaugeMetricFamily("gpm_bookkeeping_bytes", "Size of each bookkeeping table on disk.", labels=["table"])
        for table, (since, n) in list(owner.bookkeeping.items()):
            if since is not None:
                kept.add_metric([table], since)
            size.add_metric([table], n)
        yield pools
        yield refused
        yield lag
        yield outbox
        yield oldest
        yield applied
        yield kept
        yield size
        yield GaugeMetricFamily(
            "gpm_bookkeeping_retention_seconds",
            "GPM_WORKER__BOOKKEEPING_RETENTION_S: how long the ledger and finished outbox rows are kept.",
            value=owner.retention_s,
        )
        yield GaugeMetricFamily(
            "gpm_partitions_assigned",
            "Partitions this worker holds in its consumer group (0 for a replica beyond the partition count).",
            value=owner.partitions_assigned,
        )
        yield GaugeMetricFamily(
            "gpm_worker_ready",
            "1 when this worker is ready as /readyz says (joined its group, both stores answer), else 0; "
            "evaluated at each scrape.",
            value=owner.ready,
        )
        yield GaugeMetricFamily(
            "gpm_intent_links_parked", "Intent links waiting for their AST node.", value=owner.parked_links
        )
        yield GaugeMetricFamily(
            "gpm_intent_links_unresolved",
            "Intent links waiting longer than GPM_WORKER__PARKED_LINK_TTL_S.",
            value=owner.unresolved_links,
        )


class WorkerMetrics:
    """The worker's metrics, served by /metrics through prometheus_client, and nothing else.

    One path only (no OpenTelemetry meter provider and bridge in between), so every series
    has its HELP, fitted buckets, and no otel_scope labels. Besides exporting, it keeps
    totals and the latest samples in process, so that the library's ``monitor_performance()``
    can answer without a metrics backend.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.started = time.monotonic()
        self.totals: Counter[str] = Counter()
        # (monotonic end, seconds, nodes written) of the latest batches.
        self.recent_batches: deque[tuple[float, float, int]] = deque(maxlen=_RECENT)
        self.recent_queries: dict[str, deque[float]] = {}
        # Connection pools by name; the stores register theirs while open.
        self.pools: dict[str, PoolUsage] = {}
        # Set by the consume loop for the partitions it holds; dropped on revoke.
        self.lag: dict[tuple[str, int], int] = {}
        self.last_applied: dict[tuple[str, int], float] = {}
        # Refreshed from PostgreSQL by the worker's parked-link report.
        self.outbox: dict[str, int] = {}
        self.outbox_oldest: dict[str, float] = {}  # state -> unix time of its oldest row
        # Refreshed by the bookkeeping retention loop: table -> (unix time of its oldest prunable row, bytes).
        self.bookkeeping: dict[str, tuple[float | None, int]] = {}
        self.retention_s = 0.0
        self.ready = 0  # set by the health server's readiness checks
        self.partitions_assigned = 0  # set by the consume loop every turn
        self.parked_links = 0
        self.unresolved_links = 0
        # Server ("kafka", "postgres", "graph") -> why it refuses this worker, while it does.
        self.refused: dict[str, str] = {}
        self.query_duration = Histogram(
            "gpm_query_duration_seconds",
            "Library read queries, per store.",
            ["store"],
            buckets=QUERY_SECONDS,
            registry=registry,
        )
        self.events_consumed = PromCounter(
            "gpm_events_consumed", "Records read from Kafka, per topic.", ["topic"], registry=registry
        )
        self.events_applied = PromCounter(
            "gpm_events_applied",
            "Events through the saga, by outcome (applied, superseded, duplicate).",
            ["outcome"],
            registry=registry,
        )
        self.dead_lettered = PromCounter(
            "gpm_events_dead_lettered",
            "Records sent to a dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.rows_pruned = PromCounter(
            "gpm_bookkeeping_rows_pruned",
            "Processed-event and finished outbox rows deleted past GPM_WORKER__BOOKKEEPING_RETENTION_S, by table.",
            ["table"],
            registry=registry,
        )
        self.batch_retries = PromCounter(
            "gpm_batch_retries",
            "Failed batch attempts that are tried again, by cause: store_unavailable (an outage, within "
            "GPM_WORKER__RETRY_WINDOW_S), store_rejected (tried again before dead-lettering), rewound (an outage "
            "past the window: the batch is re-read after a pause).",
            ["cause"],
            registry=registry,
        )
        for cause in RETRY_CAUSES:  # from 0, so increase() sees the first retry
            self.batch_retries.labels(cause=cause)
        self.nodes_written = PromCounter("gpm_graph_nodes_written", "Graph nodes created.", registry=registry)
        self.edges_written = PromCounter("gpm_graph_edges_written", "Graph relationships created.", registry=registry)
        self.batch_duration = Histogram(
            "gpm_batch_duration_seconds",
            "One saga batch, from the outbox row to the PostgreSQL commit.",
            buckets=BATCH_SECONDS,
            registry=registry,
        )
        self.batch_events = Histogram(
            "gpm_batch_events", "Events per saga batch.", buckets=BATCH_EVENTS, registry=registry
        )
        self.freshness = Histogram(
            "gpm_event_freshness_seconds",
            "Apply time minus the event's occurred_at (the producer's clock).",
            ["topic"],
            buckets=FRESHNESS_SECONDS,
            registry=registry,
        )
        registry.register(_Gauges(self))

    def record_batch(self, plan: BatchPlan, stats: GraphWriteStats, seconds: float) -> None:
        """Count one applied batch."""
        now = datetime.now(UTC)
        for item, outcome in plan.outcomes:
            self.events_applied.labels(outcome=outcome.value).inc()
            self.freshness.labels(topic=item.position.topic).observe(
                max(0.0, (now - item.event.occurred_at).total_seconds())
            )
            self.last_applied[item.position.topic, item.position.partition] = now.timestamp()
        self.nodes_written.inc(stats.nodes_written)
        self.edges_written.inc(stats.edges_written)
        self.batch_duration.observe(seconds)
        self.batch_events.observe(len(plan.outcomes))
        self.totals.update(batches=1, events=len(plan.outcomes), nodes=stats.nodes_written, edges=stats.edges_written)
        self.recent_batches.append((time.monotonic(), seconds, stats.nodes_written))

    def record_query(self, store: str, seconds: float) -> None:
        """Time one read query of the library's (``store``: "graph" or "postgres")."""
        self.query_duration.labels(store=store).observe(seconds)
        self.recent_queries.setdefault(store, deque(maxlen=_RECENT)).append(seconds)

    def forget_partitions(self, partitions: set[tuple[str, int]]) -> None:
        """Drop the per-partition series of partitions this worker no longer holds."""
        for key in partitions:
            self.lag.pop(key, None)
            self.last_applied.pop(key, None)


metrics = WorkerMetrics()
