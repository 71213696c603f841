"""End-to-end ingestion benchmark on the embedded stack (``make bench``).

Publishes the AST graphs of real standard-library files to the real broker, runs the real
worker, and times until every offset is committed. Several runs, each into fresh
databases; prints each run, the medians, and as the very last line one JSON object.
Figures only: the machine is shared and noisy, so targets live in the issues, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime

from worker.devjob import IngestReport, corpus, ingest_corpus
from worker.devstack import DevStack
from worker.telemetry import configure_logging


def _run_once(stack: DevStack, files: int, transaction_size: int, run: int) -> IngestReport:
    # Fresh databases, topics and group per run, so every run does the same work.
    name = f"bench{run}"
    settings = stack.namespace(name, transaction_size=transaction_size, linger_ms=50)
    topics = (f"ast-graphs.{name}", f"intent-links-{name}")
    pattern = rf"^(ast-graphs\.{name}|intent-links-{name})$"
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_pattern": pattern})})
    return asyncio.run(ingest_corpus(stack, settings, corpus(files), topics=topics))


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transaction-size", type=int, default=1000)
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    started = time.monotonic()
    reports = []
    with DevStack() as stack:
        for run in range(args.runs):
            report = _run_once(stack, args.files, args.transaction_size, run)
            reports.append(report)
            print(
                f"run {run + 1}/{args.runs}: {report.files} files, {report.nodes} nodes, {report.edges} edges "
                f"in {report.seconds:.1f}s = {report.nodes_per_s:,.0f} nodes/s, "
                f"{(report.nodes + report.edges) / report.seconds:,.0f} rows/s",
                flush=True,
            )
    seconds = statistics.median(r.seconds for r in reports)
    last = reports[-1]
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()} {platform.system()}, Python {sys.version.split()[0]}",
        "backend": "arcadedb-bolt",
        "files": last.files,
        "nodes": last.nodes,
        "edges": last.edges,
        "runs": len(reports),
        "seconds": round(seconds, 2),
        "seconds_300_files": round(seconds * 300 / last.files, 2),
        "nodes_per_s": round(statistics.median(r.nodes_per_s for r in reports)),
        "rows_per_s": round(statistics.median((r.nodes + r.edges) / r.seconds for r in reports)),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "bench_seconds": round(time.monotonic() - started, 1),
    }
    print(
        f"median of {len(reports)} runs: {result['nodes_per_s']:,} nodes/s, {result['seconds']}s for {last.files} files"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
