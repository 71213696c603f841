"""End-to-end ingestion benchmark on the embedded stack (``make bench``).

Publishes the AST graphs of real Python files (the standard library, then the installed
packages, unless ``--root``) to the real broker, then starts the worker as production does
(``python -m worker run``, its own process with its own settings from the environment) on
that backlog and times from its joining the group until every offset is committed.
Meanwhile it samples the worker's resident memory (with its decoder processes) and a
prober, a process of its own, times a simple key lookup against the graph. Then the raw
limit: the same rows written straight to the graph store with the worker's own UNWIND
statements and batch size (no broker, no validation, no outbox). Several runs, each into
fresh databases; prints each run, the medians and the ratio end-to-end / raw, and as the
very last line one JSON object. Figures only: the machine is shared and noisy, so targets
live in the issues, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import SecretStr

from tests.graph_wipe import wipe as wipe_graph
from worker.compose import TRANSACTION_SIZES, batches_in_flight, connect_graph
from worker.config import ENV_PREFIX, GraphSettings, Settings
from worker.devjob import IngestReport, applied_totals, corpus, prepare_topics, publish_corpus, wait_until_committed
from worker.devstack import DevStack
from worker.devstack.process import free_port
from worker.events import AstGraphUpserted, GraphData, Node
from worker.ports import GraphChanges
from worker.runtime import tune_gc
from worker.stores.cypher import node_key
from worker.telemetry import configure_logging

LOOKUP = "MATCH (n:AstNode {key: $key}) RETURN n.node_id AS id"


# A graph server of the user's (--graph-uri), e.g. a real Neo4j: then every run writes to
# that one database, emptied first only when --wipe says so.
_external_graph: GraphSettings | None = None
_wipe = False


def _namespace(stack: DevStack, name: str, transaction_size: int, **worker: object) -> Settings:
    # Fresh databases, topics and group per run, so every run does the same work.
    settings = stack.namespace(name, transaction_size=transaction_size, linger_ms=50, **worker)
    pattern = rf"^(ast-graphs\.{name}|intent-links-{name})$"
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_pattern": pattern})})
    if _external_graph is not None:
        settings = settings.model_copy(update={"graph": _external_graph})
        asyncio.run(_empty_graph(_external_graph, wipe=_wipe))
    return settings


async def _empty_graph(graph: GraphSettings, *, wipe: bool) -> None:
    """Make sure the external database is empty: wipe it if allowed, refuse otherwise."""
    store = connect_graph(graph)
    try:
        if await store.is_empty():
            return
        if not wipe:
            msg = f"the graph database {graph.database!r} at {graph.uri} is not empty: pass --wipe to empty it first"
            raise SystemExit(msg)
        print(f"  wiping {graph.database!r} at {graph.uri} (--wipe)", flush=True)
        await wipe_graph(store)
    finally:
        await store.close()


async def _server(graph: GraphSettings) -> tuple[str, int]:
    """The server's agent, and how many batches it writes side by side by default."""
    store = connect_graph(graph)
    try:
        return await store.server_agent(), await store.parallel_batches()
    finally:
        await store.close()


async def _probe_lookups(
    graph: GraphSettings, keys: list[str], stop: EventType | threading.Event, limit: int | None = None
) -> list[tuple[float, float]]:
    """Time a key lookup every 50 ms (keys of the corpus, whether written yet or not), ``limit`` times at most.

    Each as (when it started on the monotonic clock, which all processes share; seconds it took).
    """
    store = connect_graph(graph)
    latencies: list[tuple[float, float]] = []
    try:
        while not stop.is_set() and len(latencies) != limit:
            started = time.monotonic()
            await store.query(LOOKUP, {"key": keys[len(latencies) % len(keys)]})
            latencies.append((started, time.monotonic() - started))
            await asyncio.sleep(0.05)
    finally:
        await store.close()
    return latencies


def _lookup_process(
    graph: GraphSettings, keys: list[str], stop: EventType, out: Queue[list[tuple[float, float]]]
) -> None:
    # A process of its own, as another program would query: the worker's CPU work in the
    # bench process must not show up as lookup latency (it did: 60 ms p95 on FalkorDB).
    out.put(asyncio.run(_probe_lookups(graph, keys, stop)))


def _environment(settings: Settings) -> dict[str, str]:
    """``settings`` as the GPM_* variables `gpm run` loads (secrets in clear: a child's environment only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for section, model in settings:
        for name, value in model:
            if value is None:
                continue
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            env[f"{ENV_PREFIX}{section.upper()}__{name.upper()}"] = (
                str(text).lower() if isinstance(text, bool) else str(text)
            )
    return env


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (the worker and its decoders), from /proc."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            pending += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    return total / 1024


def _nodes_written(port: int) -> float | None:
    """The worker's own count of graph nodes written (its /metrics), or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return next((float(line.split()[1]) for line in text.splitlines() if line.startswith(NODES_WRITTEN)), None)


NODES_WRITTEN = "gpm_graph_nodes_written_total "


@dataclass
class Tenth:
    """One tenth of the graph's nodes as the worker wrote them: its rate, lookups meanwhile, memory at its end."""

    nodes_per_s: float
    lookup_p95_ms: float
    lookups: int
    rss_mb: float


@dataclass
class Drain:
    """One end-to-end run: what was applied, the lookup latencies and the worker's memory."""

    report: IngestReport
    lookups: list[tuple[float, float]]  # (monotonic start, seconds)
    idle_latencies: list[float]
    # (share of the backlog committed, worker RSS in MB), sampled every 50 ms
    memory: list[tuple[float, float]] = field(default_factory=list)
    # (monotonic time, graph nodes the worker had written), sampled every second from its /metrics
    written: list[tuple[float, float]] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        """Every lookup's time during the drain."""
        return [seconds for _, seconds in self.lookups]

    def rss_at(self, share: float) -> float:
        """The first memory sample taken once ``share`` of the backlog was committed."""
        return next((mb for done, mb in self.memory if done >= share), self.memory[-1][1])

    def tenths(self) -> list[Tenth]:
        """The drain cut at each tenth of the nodes written: how fast each tenth went in, lookups meanwhile."""
        total = self.written[-1][1]
        if total <= 0:
            return []
        marks = [self._when(total * k / 10) for k in range(11)]
        cuts = []
        for k in range(10):
            start, end = marks[k], marks[k + 1]
            during = [seconds for at, seconds in self.lookups if start <= at < end]
            cuts.append(
                Tenth(
                    nodes_per_s=total / 10 / max(end - start, 1e-9),
                    lookup_p95_ms=_percentile(during, 0.95) * 1000 if during else float("nan"),
                    lookups=len(during),
                    rss_mb=self.rss_at((k + 1) / 10),
                )
            )
        return cuts

    def _when(self, nodes: float) -> float:
        """When the worker had written ``nodes``, interpolated between the two samples around it."""
        before = self.written[0]
        for sample in self.written:
            if sample[1] >= nodes:
                (t0, n0), (t1, n1) = before, sample
                return t1 if n1 == n0 else t0 + (t1 - t0) * (nodes - n0) / (n1 - n0)
            before = sample
        return self.written[-1][0]


_background: set[asyncio.Task[None]] = set()  # tasks that read worker output (held so they live on)


async def _worker_process(
    settings: Settings, cwd: Path, log: BinaryIO | None
) -> tuple[asyncio.subprocess.Process, deque[bytes]]:
    """`python -m worker run` on ``settings``, returned once it holds its partitions; its last output lines.

    ``log`` gets the whole output (JSON lines: one per batch with its timings).
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=_environment(settings),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    stdout = process.stdout
    assert stdout is not None
    output: deque[bytes] = deque(maxlen=30)

    async def keep() -> bytes:
        line = await stdout.readline()
        output.append(line)
        if log is not None:
            log.write(line)
        return line

    while b'"partitions assigned"' not in (line := await asyncio.wait_for(keep(), 120)):
        if not line:
            msg = "worker exited before joining its group:\n" + b"".join(output).decode(errors="replace")
            raise RuntimeError(msg)

    async def drain_output() -> None:  # keep the pipe flowing; the tail explains a crash
        while await keep():
            pass

    _background.add(asyncio.create_task(drain_output()))
    return process, output


async def _end_to_end(
    stack: DevStack, settings: Settings, events: list[AstGraphUpserted], name: str, log: BinaryIO | None
) -> Drain:
    topics = (f"ast-graphs.{name}", f"intent-links-{name}")
    before = await prepare_topics(stack, settings, topics)
    expected = before + await publish_corpus(settings, topics, events)
    spawn = multiprocessing.get_context("spawn")
    stop, out = spawn.Event(), spawn.Queue()
    keys = [node_key(e.source_id, e.graph.nodes[-1]["id"]) for e in events]
    prober = spawn.Process(target=_lookup_process, args=(settings.graph, keys, stop, out))
    prober.start()
    # The worker's /metrics on a port of its own: its count of nodes written gives the curve.
    port = free_port()
    settings = settings.model_copy(update={"health": settings.health.model_copy(update={"port": port})})
    worker, output = await _worker_process(settings, stack.workdir, log)
    memory: list[tuple[float, float]] = []
    written: list[tuple[float, float]] = [(time.monotonic(), 0.0)]
    shown = 0.0

    def sample(committed: int) -> None:
        nonlocal shown
        if worker.returncode is not None:
            msg = f"worker exited with {worker.returncode}:\n" + b"".join(output).decode(errors="replace")
            raise RuntimeError(msg)
        done = (committed - before) / (expected - before)
        memory.append((done, rss_mb(worker.pid)))
        now = time.monotonic()
        if now - written[-1][0] >= 1 and (nodes := _nodes_written(port)) is not None:
            written.append((now, nodes))
        if done >= shown + 0.1:  # a long drain shows its progress and its memory as it goes
            shown = done
            print(f"  drained {done:4.0%}, {written[-1][1]:,.0f} nodes, worker RSS {memory[-1][1]:,.0f} MB", flush=True)

    try:
        started = time.monotonic()
        written[0] = (started, 0.0)
        await wait_until_committed(settings, topics, expected, sample)
        seconds = time.monotonic() - started
        sample(expected)
        if (nodes := _nodes_written(port)) is not None:
            written.append((time.monotonic(), nodes))
    finally:
        stop.set()
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 60)
    lookups: list[tuple[float, float]] = await asyncio.to_thread(out.get, timeout=60)
    prober.join()
    # The same lookups with nothing else running: what the store and the machine give at rest.
    idle = [seconds for _, seconds in await _probe_lookups(settings.graph, keys, threading.Event(), limit=60)]
    return Drain(await applied_totals(settings, seconds), lookups, idle, memory, written)


async def _raw(settings: Settings, events: list[AstGraphUpserted], transaction_size: int) -> tuple[int, float]:
    """Graph rows written per second by the store alone, in batches the worker would make."""
    store = connect_graph(settings.graph, transaction_size)
    await store.migrate()
    batches: list[list[AstGraphUpserted]] = [[]]
    rows = 0
    for event in events:
        if batches[-1] and rows + event.rows > transaction_size:
            batches.append([])
            rows = 0
        batches[-1].append(event)
        rows += event.rows
    written = 0
    try:
        started = time.perf_counter()
        for batch in batches:
            stats = await store.apply(GraphChanges(upserts=tuple(batch)))
            written += stats.nodes_written + stats.edges_written
        return written, time.perf_counter() - started
    finally:
        await store.close()


def _has_nul(event: AstGraphUpserted) -> bool:
    return any(
        isinstance(v, str) and "\x00" in v
        for item in (*event.graph.nodes, *event.graph.edges)
        for v in item["properties"].values()
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=50, help="files in the corpus (at most)")
    parser.add_argument("--nodes", type=int, help="stop adding files once the corpus has this many nodes")
    parser.add_argument(
        "--root", type=Path, help="a tree of Python files to use instead (default: stdlib, then site-packages)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-raw", action="store_true", help="skip the raw write after each drain (long runs)")
    parser.add_argument("--curve", type=Path, help="write the per-tenth curve to this file as an SVG picture")
    parser.add_argument(
        "--worker-log", type=Path, help="a directory for each run's worker output (bench<size>x<run>.log)"
    )
    parser.add_argument("--transaction-size", type=int, help="the worker's setting (unset: the backend's default)")
    parser.add_argument(
        "--sweep",
        type=lambda text: [int(size) for size in text.split(",")],
        help="comma-separated transaction sizes: measure each and chart throughput over batch size",
    )
    parser.add_argument("--batches-in-flight", type=int, help="the worker's setting (unset: the backend's default)")
    parser.add_argument("--graph-uri", help="a graph server of yours (bolt://, neo4j://) instead of the embedded one")
    parser.add_argument("--graph-user", default="neo4j")
    parser.add_argument("--graph-password", default="")
    parser.add_argument("--graph-database", default="neo4j")
    parser.add_argument(
        "--wipe", action="store_true", help="empty that database before each run (refused while it holds data)"
    )
    parser.add_argument(
        "--reingest",
        action="store_true",
        help="after each drain, publish the corpus again as version 2 with 2%% of the files changed, and time that too",
    )
    parser.add_argument(
        "--backend",
        choices=["neo4j", "falkordb"],
        default="neo4j",
        help="neo4j: the Neo4j adapter over Bolt on ArcadeDB (Neo4j is not on PyPI); falkordb: FalkorDB",
    )
    return parser.parse_args()


def _corpus(args: argparse.Namespace) -> list[AstGraphUpserted]:
    files = args.files if args.nodes is None else 10**9
    left_out: list[str] = []

    def storable(event: AstGraphUpserted) -> bool:
        # FalkorDB cannot store a NUL character in a string (the worker dead-letters such a
        # file's graph with that reason): such files are skipped, so --files still counts
        # the files measured, and both measurements write the same rows.
        if args.backend == "falkordb" and not args.graph_uri and _has_nul(event):
            left_out.append(event.source_id)
            return False
        return True

    events = corpus(files, root=args.root, max_nodes=args.nodes, keep=storable)
    print(f"corpus: {len(events)} files, {sum(len(e.graph.nodes) for e in events):,} nodes", flush=True)
    if left_out:
        print(f"{len(left_out)} file(s) skipped on the way: a string with NUL, which FalkorDB cannot store")
    return events


def _measure(
    stack: DevStack, args: argparse.Namespace, events: list[AstGraphUpserted], transaction_size: int, prefix: str
) -> dict[str, Any]:
    """``args.runs`` end-to-end drains, each followed by a raw write; their medians as one result."""
    drains: list[Drain] = []
    raw_rates: list[float] = []
    reingests: list[float] = []
    for run in range(args.runs):
        name = f"{prefix}{run}"
        settings = _namespace(stack, name, transaction_size, batches_in_flight=args.batches_in_flight)
        with contextlib.ExitStack() as files:
            log = files.enter_context((args.worker_log / f"{name}.log").open("wb")) if args.worker_log else None
            drain = asyncio.run(_end_to_end(stack, settings, events, name, log))
        drains.append(drain)
        if args.reingest:
            second, changed = _second_pass(events)
            with contextlib.ExitStack() as files:
                log = files.enter_context((args.worker_log / f"{name}-2.log").open("wb")) if args.worker_log else None
                again = asyncio.run(_end_to_end(stack, settings, second, name, log))
            reingests.append(again.report.seconds)
            print(
                f"  re-ingest of the {len(second)} files as version 2, {changed} changed: "
                f"{again.report.seconds:.1f}s against {drain.report.seconds:.1f}s for the first pass "
                f"({drain.report.seconds / again.report.seconds:.1f}x faster)",
                flush=True,
            )
        raw = ""
        if not args.no_raw:
            raw_rows, raw_seconds = asyncio.run(
                _raw(_namespace(stack, f"raw{name}", transaction_size), events, transaction_size)
            )
            raw_rates.append(raw_rows / raw_seconds)
            raw = f"raw {raw_rows / raw_seconds:,.0f} rows/s; "
        report = drain.report
        rows_per_s = (report.nodes + report.edges) / report.seconds
        print(
            f"run {run + 1}/{args.runs}: {report.files} files, {report.nodes:,} nodes, {report.edges:,} edges "
            f"in {report.seconds:.1f}s end to end = {report.nodes_per_s:,.0f} nodes/s, {rows_per_s:,.0f} rows/s; "
            f"{raw}lookup p95 {_percentile(drain.latencies, 0.95) * 1000:.1f} ms; "
            f"worker RSS {drain.rss_at(0.5):,.0f} MB at half, {drain.rss_at(1.0):,.0f} MB at the end",
            flush=True,
        )
        print(_tenths_table(drain.tenths()), flush=True)
    reports = [d.report for d in drains]
    lookups = [latency for d in drains for latency in d.latencies]
    server, parallel = asyncio.run(_server(settings.graph))
    seconds = statistics.median(r.seconds for r in reports)
    last = reports[-1]
    rows_per_s = statistics.median((r.nodes + r.edges) / r.seconds for r in reports)
    raw_rows_per_s = statistics.median(raw_rates) if raw_rates else None
    tenths = _median_tenths([d.tenths() for d in drains])
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "backend": "external" if _external_graph else ("arcadedb-bolt" if args.backend == "neo4j" else "falkordb"),
        "server": server,
        "files": last.files,
        "nodes": last.nodes,
        "edges": last.edges,
        "runs": len(reports),
        "transaction_size": transaction_size,
        "batches_in_flight": batches_in_flight(settings, parallel),
        "seconds": round(seconds, 2),
        # Extrapolated from this run's median rate unless the corpus had 300 files.
        "seconds_300_files": round(seconds * 300 / last.files, 2),
        "files_per_s": round(last.files / seconds, 2),
        "nodes_per_s": round(statistics.median(r.nodes_per_s for r in reports)),
        "edges_per_s": round(statistics.median(r.edges / r.seconds for r in reports)),
        "rows_per_s": round(rows_per_s),
        "raw_rows_per_s": round(raw_rows_per_s) if raw_rows_per_s else None,
        "ratio": round(rows_per_s / raw_rows_per_s, 3) if raw_rows_per_s else None,
        "p95_query_ms": round(_percentile(lookups, 0.95) * 1000, 2),
        "p95_query_idle_ms": round(_percentile([x for d in drains for x in d.idle_latencies], 0.95) * 1000, 2),
        "lookups": len(lookups),
        # The `gpm run` process and its decoder processes, sampled every 50 ms while draining.
        "max_rss_mb": round(max(mb for d in drains for _, mb in d.memory)),
        "rss_mb_at_quarters": [round(statistics.median(d.rss_at(q) for d in drains)) for q in (0.25, 0.5, 0.75, 1.0)],
        # Each tenth of the nodes written (medians over the runs), and the last tenth's rate over the first's.
        "tenths": [
            {"nodes_per_s": round(t.nodes_per_s), "lookup_p95_ms": round(t.lookup_p95_ms, 1), "rss_mb": round(t.rss_mb)}
            for t in tenths
        ],
        "last_to_first_tenth": round(tenths[-1].nodes_per_s / tenths[0].nodes_per_s, 2) if tenths else None,
    } | (
        {
            "reingest_seconds": round(statistics.median(reingests), 2),
            "reingest_speedup": round(seconds / statistics.median(reingests), 1),
            "reingest_changed_share": CHANGED_SHARE,
        }
        if reingests
        else {}
    )


CHANGED_SHARE = 0.02  # of the files changed between the two passes of --reingest


def _median_tenths(runs: list[list[Tenth]]) -> list[Tenth]:
    """Tenth by tenth, the median of each figure over the runs."""
    runs = [r for r in runs if r]
    if not runs:
        return []

    def median(values: list[float]) -> float:
        numbers = [v for v in values if not math.isnan(v)]  # NaN: a tenth without a lookup
        return statistics.median(numbers) if numbers else float("nan")

    return [
        Tenth(
            nodes_per_s=median([r[k].nodes_per_s for r in runs]),
            lookup_p95_ms=median([r[k].lookup_p95_ms for r in runs]),
            lookups=sum(r[k].lookups for r in runs),
            rss_mb=median([r[k].rss_mb for r in runs]),
        )
        for k in range(10)
    ]


def _tenths_table(tenths: list[Tenth]) -> str:
    """One line per tenth of the nodes written: rate, lookup p95 meanwhile and worker memory at its end."""
    if not tenths:
        return "  (no nodes written: no curve)"
    lines = ["  tenth   nodes/s   lookup p95   lookups   worker RSS"]
    lines += [
        f"  {k + 1:>5}  {t.nodes_per_s:>8,.0f}  {t.lookup_p95_ms:>8.1f} ms  {t.lookups:>8,}  {t.rss_mb:>7,.0f} MB"
        for k, t in enumerate(tenths)
    ]
    lines.append(f"  last tenth / first tenth: {tenths[-1].nodes_per_s / tenths[0].nodes_per_s:.2f}")
    return "\n".join(lines)


TARGET_STROKE = 'stroke="#c0392b" stroke-dasharray="4 3"'
CURVE_LEGEND = "tenth of the nodes written; bars: nodes/s; red line: lookup p95 during that tenth"


def _curve_svg(tenths: list[Tenth], title: str) -> str:
    """Throughput (bars) and lookup p95 (line) over the tenths of the load, as a small SVG picture."""
    width, height, left, bottom, top = 640, 300, 60, 40, 40
    plot_w, plot_h = width - 2 * left, height - top - bottom
    rate_top = max(t.nodes_per_s for t in tenths) * 1.1
    p95s = [t.lookup_p95_ms for t in tenths if not math.isnan(t.lookup_p95_ms)]
    p95_top = max([*p95s, 100.0]) * 1.1  # the 100 ms target always in view
    step = plot_w / 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="13">{html.escape(title)}</text>',
    ]
    for k, t in enumerate(tenths):
        bar = plot_h * t.nodes_per_s / rate_top
        x = left + k * step + step * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - bar:.1f}" width="{step * 0.7:.1f}" height="{bar:.1f}" '
            'fill="#7aa6d6"/>'
        )
        parts.append(f'<text x="{x + step * 0.35:.1f}" y="{height - bottom + 14}" text-anchor="middle">{k + 1}</text>')
    points = " ".join(
        f"{left + (k + 0.5) * step:.1f},{top + plot_h - plot_h * t.lookup_p95_ms / p95_top:.1f}"
        for k, t in enumerate(tenths)
        if not math.isnan(t.lookup_p95_ms)
    )
    target = top + plot_h - plot_h * 100 / p95_top
    parts += [
        f'<polyline points="{points}" fill="none" stroke="#c0392b" stroke-width="2"/>',
        f'<line x1="{left}" x2="{width - left}" y1="{target:.1f}" y2="{target:.1f}" {TARGET_STROKE}/>',
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="black"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{rate_top:,.0f}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
        f'<text x="{width - left + 4}" y="{top + 4}" fill="#c0392b">{p95_top:,.0f} ms</text>',
        f'<text x="{width - left + 4}" y="{target + 4:.1f}" fill="#c0392b">100 ms</text>',
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">{CURVE_LEGEND}</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def _second_pass(events: list[AstGraphUpserted]) -> tuple[list[AstGraphUpserted], int]:
    """The corpus as a producer re-publishes it after a commit: every file as version 2, 2% of them changed."""
    every = round(1 / CHANGED_SHARE)
    second = []
    for n, event in enumerate(events):
        graph = event.graph
        if n % every == 0:
            first, *rest = graph.nodes
            touched = Node(
                id=first["id"], type=first["type"], properties={**first["properties"], "gpm_bench_revision": 2}
            )
            graph = GraphData.model_construct(nodes=[touched, *rest], edges=graph.edges, metadata=graph.metadata)
        second.append(
            event.model_copy(
                update={
                    "event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"gpm-bench:{event.source_id}:2"),
                    "source_version": 2,
                    "graph": graph,
                }
            )
        )
    return second, len(range(0, len(events), every))


def _chart(points: list[dict[str, Any]], width: int = 50) -> str:
    """Throughput over batch size as text bars: end to end (#) against raw (=), one pair per size."""
    top = max(max(p["rows_per_s"], p["raw_rows_per_s"]) for p in points)
    lines = ["rows/s by transaction_size: # end to end, = raw (the graph store alone)"]
    for p in points:
        size = p["transaction_size"]
        for mark, key in (("#", "rows_per_s"), ("=", "raw_rows_per_s")):
            bar = mark * max(1, round(width * p[key] / top))
            label = f"{size:>7,}" if mark == "#" else " " * 7
            lines.append(f"{label} {bar:<{width}} {p[key]:>9,}")
        lines.append(f"{'':7} ratio {p['ratio']}, lookup p95 {p['p95_query_ms']} ms")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print the figures."""
    global _external_graph, _wipe  # noqa: PLW0603 - set once, from the command line
    args = _arguments()
    if args.worker_log:
        args.worker_log.mkdir(parents=True, exist_ok=True)
    if args.graph_uri:
        _external_graph = GraphSettings(
            uri=args.graph_uri,
            user=args.graph_user,
            password=SecretStr(args.graph_password),
            database=args.graph_database,
        )
        _wipe = args.wipe
    configure_logging("WARNING", "console")
    tune_gc()  # as in `gpm run`: the raw writer in this process gets the worker's GC settings
    started = time.monotonic()
    events = _corpus(args)
    backend = "neo4j" if args.graph_uri else args.backend
    sizes = args.sweep or [args.transaction_size or TRANSACTION_SIZES[backend]]
    # With --graph-uri the embedded graph server stands by unused: the light one, not a JVM beside the user's.
    with DevStack(graph_backend="falkordb" if args.graph_uri else args.backend) as stack:
        # A fresh JVM (ArcadeDB) compiles its hot paths during the first writes: without this,
        # run 1 paid for that in its end-to-end figure but not in its raw one (measured after).
        print("warming the graph store up on 20 files (not measured)", flush=True)
        asyncio.run(_raw(_namespace(stack, "warmup", sizes[0]), events[:20], sizes[0]))
        if _external_graph is not None:  # the warm-up's graph is ours: the first run starts from empty
            asyncio.run(_empty_graph(_external_graph, wipe=True))
        points = []
        for size in sizes:
            if args.sweep:
                print(f"transaction_size {size:,}:", flush=True)
            points.append(_measure(stack, args, events, size, f"bench{size}x"))
    if args.sweep:
        print(_chart(points))
        print(json.dumps({"bench_seconds": round(time.monotonic() - started, 1), "sweep": points}))
        return
    result = points[0] | {"bench_seconds": round(time.monotonic() - started, 1)}
    if args.curve:
        tenths = [Tenth(t["nodes_per_s"], t["lookup_p95_ms"], 0, t["rss_mb"]) for t in result["tenths"]]
        title = f"{result['server']}: {result['nodes']:,} nodes, {result['files']:,} files"
        args.curve.write_text(_curve_svg(tenths, title))
    print(
        f"medians of {result['runs']} runs: end to end {result['nodes_per_s']:,} nodes/s, "
        f"{result['rows_per_s']:,} rows/s, "
        f"raw {result['raw_rows_per_s']} rows/s, ratio {result['ratio']}, lookup p95 {result['p95_query_ms']} ms "
        f"(idle {result['p95_query_idle_ms']} ms), "
        f"{result['seconds']}s for {result['files']} files (300 files: {result['seconds_300_files']}s), "
        f"worker RSS at 1/4, 1/2, 3/4 and all of the drain: {result['rss_mb_at_quarters']} MB"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
