"""Structured logs (structlog, JSON, trace ids attached), OpenTelemetry traces and metrics.

Traces go where the standard variables say: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``
or ``none``; ``otlp`` by default once ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set), ``OTEL_SERVICE_NAME``. Metrics are served
on ``/metrics`` (see health.py). Driver loggers (aiokafka, neo4j, asyncpg) go through the
same JSON renderer so an operator greps one format.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.metrics import Observation

if TYPE_CHECKING:
    from worker.saga.plan import BatchPlan
    from worker.stores.protocols import GraphWriteStats


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


class WorkerMetrics:
    """The worker's instruments, created once against the global meter provider.

    Besides exporting them, it keeps totals and the latest samples in process, so that the
    library's ``monitor_performance()`` can answer without a metrics backend.
    """

    def __init__(self) -> None:
        meter = otel_metrics.get_meter("graph_postgres_manager")
        self.started = time.monotonic()
        self.totals: Counter[str] = Counter()
        # (monotonic end, seconds, nodes written) of the latest batches.
        self.recent_batches: deque[tuple[float, float, int]] = deque(maxlen=_RECENT)
        self.recent_queries: dict[str, deque[float]] = {}
        self.query_duration = meter.create_histogram("gpm.query.duration", unit="s")
        # Connection pools by name; the stores register theirs while open.
        self.pools: dict[str, PoolUsage] = {}
        meter.create_observable_gauge(
            "gpm.pool.connections",
            [
                lambda _: [
                    Observation(n, {"pool": name, "state": state})
                    for name, usage in list(self.pools.items())
                    for state, n in usage().items()
                ]
            ],
            unit="{connection}",
        )
        self.events_consumed = meter.create_counter("gpm.events.consumed", unit="{event}")
        self.events_applied = meter.create_counter("gpm.events.applied", unit="{event}")
        self.dead_lettered = meter.create_counter("gpm.events.dead_lettered", unit="{event}")
        self.nodes_written = meter.create_counter("gpm.graph.nodes_written", unit="{node}")
        self.edges_written = meter.create_counter("gpm.graph.edges_written", unit="{edge}")
        self.batch_duration = meter.create_histogram("gpm.batch.duration", unit="s")
        self.batch_events = meter.create_histogram("gpm.batch.events", unit="{event}")
        # End-to-end freshness: apply time minus the event's occurred_at (producer clock).
        self.freshness = meter.create_histogram("gpm.event.freshness", unit="s")
        # Records behind the partition's end, per partition; set by the consume loop.
        self.lag: dict[tuple[str, int], int] = {}
        meter.create_observable_gauge(
            "gpm.consumer.lag",
            [lambda _: [Observation(n, {"topic": t, "partition": p}) for (t, p), n in list(self.lag.items())]],
            unit="{record}",
        )
        # Outbox rows in the unfinished states, refreshed from PostgreSQL with the parked links.
        self.outbox: dict[str, int] = {}
        meter.create_observable_gauge(
            "gpm.outbox.rows",
            [lambda _: [Observation(n, {"state": state}) for state, n in list(self.outbox.items())]],
            unit="{row}",
        )
        # Refreshed from PostgreSQL by the worker's parked-link report.
        self.parked_links = 0
        self.unresolved_links = 0
        meter.create_observable_gauge(
            "gpm.intent_links.parked", [lambda _: [Observation(self.parked_links)]], unit="{link}"
        )
        meter.create_observable_gauge(
            "gpm.intent_links.unresolved", [lambda _: [Observation(self.unresolved_links)]], unit="{link}"
        )

    def record_batch(self, plan: BatchPlan, stats: GraphWriteStats, seconds: float) -> None:
        """Count one applied batch."""
        now = datetime.now(UTC)
        for item, outcome in plan.outcomes:
            self.events_applied.add(1, {"outcome": outcome.value})
            self.freshness.record(
                max(0.0, (now - item.event.occurred_at).total_seconds()), {"topic": item.position.topic}
            )
        self.nodes_written.add(stats.nodes_written)
        self.edges_written.add(stats.edges_written)
        self.batch_duration.record(seconds)
        self.batch_events.record(len(plan.outcomes))
        self.totals.update(batches=1, events=len(plan.outcomes), nodes=stats.nodes_written, edges=stats.edges_written)
        self.recent_batches.append((time.monotonic(), seconds, stats.nodes_written))

    def record_query(self, store: str, seconds: float) -> None:
        """Time one read query of the library's (``store``: "graph" or "postgres")."""
        self.query_duration.record(seconds, {"store": store})
        self.recent_queries.setdefault(store, deque(maxlen=_RECENT)).append(seconds)


metrics = WorkerMetrics()
