"""End-to-end ingestion benchmark on the embedded stack (``make bench``).

Publishes the AST graphs of real standard-library files to the real broker, then runs the
real worker on that backlog and times from its joining the group until every offset is
committed, while a prober (a process of its own) times a simple key lookup against the
graph. Then the raw limit: the same rows written straight to the graph store with the
worker's own UNWIND statements and batch size (no broker, no validation, no outbox).
Several runs, each into fresh databases; prints each run, the medians and the ratio
end-to-end / raw, and as the very last line one JSON object. Figures only: the machine is
shared and noisy, so targets live in the issues, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType

from worker.config import GraphSettings, Settings
from worker.devjob import IngestReport, corpus, ingest_corpus
from worker.devstack import DevStack
from worker.events import AstGraphUpserted
from worker.saga.plan import GraphChanges
from worker.stores.cypher import node_key
from worker.stores.graph import connect_graph
from worker.telemetry import configure_logging

LOOKUP = "MATCH (n:AstNode {key: $key}) RETURN n.node_id AS id"


def _namespace(stack: DevStack, name: str, transaction_size: int) -> Settings:
    # Fresh databases, topics and group per run, so every run does the same work.
    settings = stack.namespace(name, transaction_size=transaction_size, linger_ms=50)
    pattern = rf"^(ast-graphs\.{name}|intent-links-{name})$"
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_pattern": pattern})})


async def _probe_lookups(graph: GraphSettings, keys: list[str], stop: EventType) -> list[float]:
    """Time a key lookup every 50 ms (keys of the corpus, whether written yet or not)."""
    store = connect_graph(graph)
    latencies: list[float] = []
    try:
        while not stop.is_set():
            started = time.perf_counter()
            await store.query(LOOKUP, {"key": keys[len(latencies) % len(keys)]})
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
    finally:
        await store.close()
    return latencies


def _lookup_process(graph: GraphSettings, keys: list[str], stop: EventType, out: Queue[list[float]]) -> None:
    # A process of its own, as another program would query: the worker's CPU work in the
    # bench process must not show up as lookup latency (it did: 60 ms p95 on FalkorDB).
    out.put(asyncio.run(_probe_lookups(graph, keys, stop)))


async def _end_to_end(
    stack: DevStack, settings: Settings, events: list[AstGraphUpserted], name: str
) -> tuple[IngestReport, list[float]]:
    spawn = multiprocessing.get_context("spawn")
    stop, out = spawn.Event(), spawn.Queue()
    keys = [node_key(e.source_id, e.graph.nodes[-1]["id"]) for e in events]
    prober = spawn.Process(target=_lookup_process, args=(settings.graph, keys, stop, out))
    prober.start()
    try:
        topics = (f"ast-graphs.{name}", f"intent-links-{name}")
        report = await ingest_corpus(stack, settings, events, topics=topics, backlog=True)
    finally:
        stop.set()
    latencies: list[float] = await asyncio.to_thread(out.get, timeout=60)
    prober.join()
    return report, latencies


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


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transaction-size", type=int, default=1000)
    parser.add_argument(
        "--backend",
        choices=["neo4j", "falkordb"],
        default="neo4j",
        help="neo4j: the Neo4j adapter over Bolt on ArcadeDB (Neo4j is not on PyPI); falkordb: FalkorDB",
    )
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    started = time.monotonic()
    events = corpus(args.files)
    if args.backend == "falkordb":
        # FalkorDB cannot store a NUL character in a string (the worker dead-letters such a
        # file's graph with that reason); keep both measurements on the same rows.
        storable = [e for e in events if not _has_nul(e)]
        print(f"{len(events) - len(storable)} file(s) left out: a string with NUL, which FalkorDB cannot store")
        events = storable
    reports: list[IngestReport] = []
    lookups: list[float] = []
    raw_rates: list[float] = []
    with DevStack(graph_backend=args.backend) as stack:
        for run in range(args.runs):
            name = f"bench{run}"
            settings = _namespace(stack, name, args.transaction_size)
            report, latencies = asyncio.run(_end_to_end(stack, settings, events, name))
            reports.append(report)
            lookups.extend(latencies)
            raw_rows, raw_seconds = asyncio.run(
                _raw(_namespace(stack, f"raw{run}", args.transaction_size), events, args.transaction_size)
            )
            raw_rates.append(raw_rows / raw_seconds)
            rows_per_s = (report.nodes + report.edges) / report.seconds
            print(
                f"run {run + 1}/{args.runs}: {report.files} files, {report.nodes:,} nodes, {report.edges:,} edges "
                f"in {report.seconds:.1f}s end to end = {report.nodes_per_s:,.0f} nodes/s, {rows_per_s:,.0f} rows/s; "
                f"raw {raw_rows / raw_seconds:,.0f} rows/s; lookup p95 {_percentile(latencies, 0.95) * 1000:.1f} ms",
                flush=True,
            )
    seconds = statistics.median(r.seconds for r in reports)
    last = reports[-1]
    rows_per_s = statistics.median((r.nodes + r.edges) / r.seconds for r in reports)
    raw_rows_per_s = statistics.median(raw_rates)
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "backend": "arcadedb-bolt" if args.backend == "neo4j" else "falkordb",
        "files": last.files,
        "nodes": last.nodes,
        "edges": last.edges,
        "runs": len(reports),
        "transaction_size": args.transaction_size,
        "seconds": round(seconds, 2),
        # Extrapolated from this run's median rate unless --files 300 was asked for.
        "seconds_300_files": round(seconds * 300 / last.files, 2),
        "files_per_s": round(last.files / seconds, 2),
        "nodes_per_s": round(statistics.median(r.nodes_per_s for r in reports)),
        "edges_per_s": round(statistics.median(r.edges / r.seconds for r in reports)),
        "rows_per_s": round(rows_per_s),
        "raw_rows_per_s": round(raw_rows_per_s),
        "ratio": round(rows_per_s / raw_rows_per_s, 3),
        "p95_query_ms": round(_percentile(lookups, 0.95) * 1000, 2),
        "lookups": len(lookups),
        # The worker runs in this process, so this is the worker's peak (plus the corpus).
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "bench_seconds": round(time.monotonic() - started, 1),
    }
    print(
        f"medians of {len(reports)} runs: end to end {result['nodes_per_s']:,} nodes/s, "
        f"{result['rows_per_s']:,} rows/s, "
        f"raw {result['raw_rows_per_s']:,} rows/s, ratio {result['ratio']}, lookup p95 {result['p95_query_ms']} ms, "
        f"{result['seconds']}s for {last.files} files (300 files: {result['seconds_300_files']}s)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
