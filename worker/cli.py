"""The ``gpm`` command line: run, dev, migrate, publish, status, replay, dlq, check, stats, schemas."""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from worker.errors import ConfigError, EventError, GpmError, OperationRefused

# Everything else is imported by the command that needs it: `gpm --help` imports only typer
# and rich (about 0.2 s, where importing the stores, pydantic and the devstack took 2 s).
if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from worker.app import Worker
    from worker.config import Settings
    from worker.devstack import DevStack
    from worker.library import ConsistencyReport, GraphPostgresManager, StorageStats
    from worker.preflight import PreflightReport

# Plain help text (no rich rendering of it): half of `gpm --help`'s time went to drawing panels.
app = typer.Typer(
    help="graph-postgres-manager: Kafka → PostgreSQL + graph store ingestion worker.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(
    help="List, inspect and re-drive dead-lettered events.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(dlq_app, name="dlq")
# Messages are never wrapped: a DSN or a path cut mid-token in a log helps nobody (tables use _out()).
console = Console(stderr=True, soft_wrap=True)


def _out() -> Console:
    """Standard output; in a pipe, wide enough that tables are not cut at 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=_PIPE_WIDTH)


_PIPE_WIDTH = 240
T = TypeVar("T")


def _settings(*, logging: bool = False) -> Settings:
    """Load the settings (exit 2 naming what is wrong) and optionally set up logging."""
    from worker.config import load_settings, unknown_variables  # noqa: PLC0415

    try:
        settings = load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if logging:
        from worker.telemetry import configure_logging  # noqa: PLC0415 - keep `gpm --help` fast

        configure_logging(settings.worker.log_level, settings.worker.log_format)
    for name in unknown_variables(os.environ):
        hint = "not a setting of this version (misspelt?); ignored"
        if logging:
            import structlog  # noqa: PLC0415

            structlog.get_logger(__name__).warning("unknown setting variable", variable=name, hint=hint)
        else:
            console.print(f"[yellow]warning:[/yellow] {name}: {hint}")
    return settings


@app.command()
def run() -> None:
    """Run the worker until SIGTERM/SIGINT (settings from GPM_* variables and .env)."""
    from worker.app import Worker  # noqa: PLC0415 - keep `gpm --help` fast
    from worker.runtime import tune_gc  # noqa: PLC0415

    settings = _settings(logging=True)
    tune_gc()
    # `kill -USR2 <pid>` prints every thread's stack to stderr, even with the event loop
    # stuck (SIGUSR1, handled by the running worker, logs every asyncio task's stack).
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    try:
        _run(Worker(settings).run())
    except GpmError as exc:
        console.print(f"[red]worker failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


topics_app = typer.Typer(help="Create the topics the worker needs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(topics_app, name="topics")
_TOPIC_OPTION = typer.Option(
    "--topic", help="A consumed topic (its DLQ is included); default: ast-graphs and intent-links."
)
_PARTITIONS_OPTION = typer.Option(help="Partitions of a created topic: the most replicas that can share the work.")


@app.command()
def migrate(
    *,
    topics: Annotated[
        bool, typer.Option("--topics", help="Also create missing topics, as `gpm topics ensure`.")
    ] = False,
    topic: Annotated[list[str] | None, _TOPIC_OPTION] = None,
    partitions: Annotated[int, _PARTITIONS_OPTION] = 6,
) -> None:
    """Apply the PostgreSQL migrations and the graph schema, then exit."""
    from worker.app import migrate as run_migrations  # noqa: PLC0415

    settings = _settings(logging=True)
    if topics:
        _ensure_topics(settings, topic, partitions)
    _ops(run_migrations(settings))


@topics_app.command("ensure")
def topics_ensure(
    topic: Annotated[list[str] | None, _TOPIC_OPTION] = None,
    partitions: Annotated[int, _PARTITIONS_OPTION] = 6,
) -> None:
    """Create the consumed topics and their dead-letter topics that are missing; change nothing that exists."""
    _ensure_topics(_settings(), topic, partitions)


def _ensure_topics(settings: Settings, topic: list[str] | None, partitions: int) -> None:
    from worker.config import DEFAULT_TOPICS  # noqa: PLC0415
    from worker.ops.topics import ensure_topics  # noqa: PLC0415

    report = _ops(ensure_topics(settings, list(topic or DEFAULT_TOPICS), partitions))
    for name in report.created:
        console.print(
            Text(
                f"created {name}: {report.partitions} partitions, replication {report.replication}, "
                f"max.message.bytes {report.max_message_bytes}"
            )
        )
    for name in report.existing:
        console.print(Text(f"exists, left as it is: {name}"))


@app.command()
def publish(
    files: Annotated[list[Path], typer.Argument(help="Event JSON files, one event each.")],
    topic: Annotated[
        str | None,
        typer.Option(help="Topic to publish to (default: intent-links for intent-link events, ast-graphs for others)."),
    ] = None,
) -> None:
    """Validate event files and publish them, keyed by source id."""
    from worker.events import Envelope, decode_event  # noqa: PLC0415
    from worker.publish import publish_events  # noqa: PLC0415
    from worker.telemetry import configure_tracing  # noqa: PLC0415

    settings = _settings()
    configure_tracing()
    events = []
    for path in files:
        try:
            events.append(
                decode_event(
                    path.read_bytes(),
                    max_bytes=settings.worker.max_event_bytes,
                    max_nodes=settings.worker.max_nodes_per_graph,
                )
            )
        except EventError as exc:
            console.print(f"[red]{escape(f'{path}: {exc}')}[/red]")
            raise typer.Exit(1) from None
    by_topic: dict[str, list[Envelope]] = {}
    for event in events:
        default = "intent-links" if event.event_type.startswith("intent-link.") else "ast-graphs"
        by_topic.setdefault(topic or default, []).append(event)
    for name, batch in by_topic.items():
        sent = _ops(publish_events(settings.kafka, name, batch))
        console.print(f"published {sent} events to {name}")


TRACEBACK_VARIABLE = "GPM_TRACEBACK"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, imported on first use (it is a sixth of `gpm --help`'s time)."""
    import asyncio  # noqa: PLC0415

    return asyncio.run(coro)


def _progress() -> Progress:
    """The progress bar every long command shows, on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _ops(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operator command; a GpmError is a clear message and exit 1, not a traceback."""
    # The Kafka client logs each failed connection itself; the command's own message says it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return _run(coro)
    except GpmError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except OSError as exc:  # a server gone mid-command, below the stores' own error mapping
        console.print(f"[red]{escape(f'{type(exc).__name__}: {exc}')}[/red]")
        raise typer.Exit(1) from None
    except Exception as exc:  # a bug still answers in one line; GPM_TRACEBACK=1 shows where
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        console.print(
            f"[red]{escape(f'unexpected error: {type(exc).__name__}: {exc}')} (GPM_TRACEBACK=1 shows where)[/red]"
        )
        raise typer.Exit(1) from None


@app.command()
def status(
    topic: Annotated[
        list[str] | None, typer.Option(help="Only these topics (default: all the worker consumes).")
    ] = None,
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per partition: committed and end offset, lag, last applied; outbox rows by state; parked links."""
    from worker.ops.status import collect  # noqa: PLC0415

    state = _ops(collect(_settings(), topic))
    if as_json:
        document = {
            "group_id": state.group_id,
            "members": state.members,
            "lag": state.lag,
            "partitions": [
                {
                    "topic": p.offsets.topic,
                    "partition": p.offsets.partition,
                    "committed": p.offsets.committed,
                    "end": p.offsets.end,
                    "lag": p.offsets.lag,
                    "last_applied_at": p.last_applied_at.isoformat() if p.last_applied_at else None,
                }
                for p in state.partitions
            ],
            "outbox": state.outbox,
            "parked_links": state.parked_links,
            "unresolved_links": state.unresolved_links,
        }
        typer.echo(json.dumps(document))
        return
    from rich.table import Table  # noqa: PLC0415 - see the imports' note

    table = Table(title=f"group {state.group_id}: {len(state.members)} live member(s), lag {state.lag}")
    for column in ("topic", "partition", "committed", "end", "lag", "last applied"):
        table.add_column(column, justify="left" if column in {"topic", "last applied"} else "right")
    for p in state.partitions:
        o = p.offsets
        applied = p.last_applied_at.isoformat(timespec="seconds") if p.last_applied_at else "-"
        table.add_row(
            o.topic, str(o.partition), "-" if o.committed is None else str(o.committed), str(o.end), str(o.lag), applied
        )
    out = _out()
    out.print(table)
    out.print("outbox unfinished:", ", ".join(f"{k}={v}" for k, v in sorted(state.outbox.items())) or "none")
    out.print(f"intent links parked: {state.parked_links}, unresolved past the bound: {state.unresolved_links}")


@app.command()
def replay(
    to: Annotated[str, typer.Option(help="earliest, latest, or time (with --at).")] = "earliest",
    at: Annotated[datetime | None, typer.Option(help="With --to time: first record at or after this time.")] = None,
    topic: Annotated[
        list[str] | None, typer.Option(help="Only these topics (default: all the worker consumes).")
    ] = None,
    partition: Annotated[list[int] | None, typer.Option(help="Only these partitions.")] = None,
    offset: Annotated[list[str] | None, typer.Option(help="Explicit TOPIC:PARTITION=OFFSET (repeatable).")] = None,
    *,
    force: Annotated[bool, typer.Option(help="Reset even while workers are in the group.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show the new offsets, change nothing.")] = False,
    wait: Annotated[bool, typer.Option(help="Afterwards, show the lag until the workers caught up.")] = False,
    into_empty_stores: Annotated[
        bool,
        typer.Option(help="Reprocess into fresh stores: refuse unless the configured databases are empty."),
    ] = False,
) -> None:
    """Move the group's committed offsets so the workers reprocess (idempotently) from there."""
    from worker.ops.replay import plan_reset, require_empty_stores, watch_lag  # noqa: PLC0415

    settings = _settings()
    if to not in {"earliest", "latest", "time"}:
        console.print("[red]--to must be earliest, latest or time[/red]")
        raise typer.Exit(2)
    if into_empty_stores:
        _ops(require_empty_stores(settings))
    moves = _ops(
        plan_reset(
            settings,
            to=to,
            at=at,
            topics=topic,
            partitions=partition,
            explicit=offset or [],
            apply=not dry_run,
            force=force,
        )
    )
    from rich.table import Table  # noqa: PLC0415 - see the imports' note

    table = Table(title=("would move" if dry_run else "moved") + f" group {settings.kafka.group_id}")
    for column in ("topic", "partition", "from", "to"):
        table.add_column(column)
    for move in moves:
        table.add_row(
            move.topic, str(move.partition), "-" if move.before is None else str(move.before), str(move.after)
        )
    _out().print(table)
    if wait and not dry_run:
        with _progress() as progress:
            task = progress.add_task("reprocessing", total=None)

            def show(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            _ops(watch_lag(settings, topic, show))


@app.command()
def check(
    stuck_after_s: Annotated[float, typer.Option(help="Outbox rows pending longer than this are stuck.")] = 600,
    *,
    repair: Annotated[
        bool,
        typer.Option(help="Fix what it can under the write fence; sources to rebuild then need `gpm replay`."),
    ] = False,
) -> None:
    """Compare the registry with the graph and report what disagrees; exit 1 if anything does (before repair)."""
    from worker.library import GraphPostgresManager  # noqa: PLC0415

    async def report() -> ConsistencyReport:
        async with GraphPostgresManager(_settings()) as gpm:
            return await gpm.check_data_consistency(stuck_after_s, repair=repair)

    result = _ops(report())
    out = _out()
    out.print(f"node counts differing from the registry: {result.count_mismatches or 'none'}")
    out.print(f"sources in the graph without a registry row: {result.graph_without_registry or 'none'}")
    out.print(f"registry rows whose graph is missing: {result.registry_without_graph or 'none'}")
    out.print(f"nodes carrying another version than the registry's: {result.version_mismatches or 'none'}")
    out.print(f"intents the stores disagree on: {result.intent_mismatches or 'none'}")
    out.print(f"outbox rows stuck 'pending': {result.stuck_outbox or 'none'}")
    out.print(f"intent links parked (waiting for their nodes): {result.parked_links}")
    for action in result.repaired:
        out.print(f"repaired: {action}")
    out.print("consistent" if result.consistent else "[red]inconsistent[/red]")
    if not result.consistent:
        raise typer.Exit(1)


@app.command()
def stats() -> None:
    """Sizes of both stores."""
    from worker.library import GraphPostgresManager  # noqa: PLC0415

    async def collect() -> StorageStats:
        async with GraphPostgresManager(_settings()) as gpm:
            return await gpm.get_storage_stats()

    typer.echo(json.dumps(dataclasses.asdict(_ops(collect())), default=str))  # the oldest rows' times


class _StageBars:
    """A ProgressFn drawing one bar per stage."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)


def _with_manager(work: Callable[[GraphPostgresManager, _StageBars], Awaitable[T]]) -> T:
    """Open the stores, run ``work`` with progress bars, and turn a GpmError into a clear exit 1."""
    from worker.library import GraphPostgresManager  # noqa: PLC0415

    async def run() -> T:
        with _progress() as progress:
            async with GraphPostgresManager(_settings(logging=True)) as gpm:
                return await work(gpm, _StageBars(progress))

    return _ops(run())


@app.command()
def preflight() -> None:
    """Check the servers' versions and the users' rights; exit 1 if anything is missing."""
    from worker.compose import open_stores  # noqa: PLC0415
    from worker.preflight import PreflightReport, broker_checks, run_preflight  # noqa: PLC0415

    settings = _settings()

    async def check() -> PreflightReport:
        broker = await broker_checks(settings.kafka)
        async with open_stores(settings) as stores:
            report = await run_preflight(stores.relational, stores.graph)
        return PreflightReport([*broker, *report.checks], report.advice)

    report = _ops(check())
    out = _out()
    for c in report.checks:
        out.print(f"{'ok  ' if c.ok else '[red]FAIL[/red]'} {c.name}: {c.detail}")
    for advice in report.advice:
        out.print(f"[yellow]warn[/yellow] graph server settings: {advice}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(help="The snapshot file to write (e.g. backups/2026-11-23.gpmsnap).")],
    settle_s: Annotated[float, typer.Option(help="How long to wait for batches already under way.")] = 30,
) -> None:
    """Write one consistent, compressed snapshot of both stores; batches wait meanwhile."""
    snapshot = _with_manager(lambda gpm, bars: gpm.backup(path, settle_s=settle_s, progress=bars))
    _out().print(f"wrote {path}: {snapshot.nodes} nodes, {len(snapshot.members)} members checksummed")


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(help="A snapshot written by `gpm backup`.")],
    *,
    verify: Annotated[bool, typer.Option(help="Read both stores back and compare with the checksums.")] = True,
    graph_only: Annotated[
        bool,
        typer.Option(
            help="Load only the graph, into the configured (empty) graph backend: move a graph between backends."
        ),
    ] = False,
) -> None:
    """Load a snapshot into empty stores (the configured ones), then verify counts and checksums."""
    snapshot = _with_manager(lambda gpm, bars: gpm.restore(path, verify=verify, graph_only=graph_only, progress=bars))
    where = f"the {_settings().graph.backend} graph" if graph_only else "PostgreSQL and the graph"
    _out().print(f"restored {path} into {where}: {snapshot.nodes} nodes" + (", verified" if verify else ""))


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="The file to write; a .gz name is compressed.")],
    export_format: Annotated[
        Literal["jsonl", "node-link"],
        typer.Option("--format", help="JSON lines (APOC-style) or NetworkX node-link JSON."),
    ] = "jsonl",
) -> None:
    """Export the graph for other tools."""
    nodes, edges = _with_manager(lambda gpm, bars: gpm.export_snapshot(path, export_format, progress=bars))
    _out().print(f"exported {nodes} nodes and {edges} relationships to {path}")


@dlq_app.command("list")
def dlq_list(
    reason: Annotated[
        str | None, typer.Option(help="Only this reason (e.g. not-json, invalid, store-rejected).")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Only letters from this original topic.")] = None,
    grep: Annotated[str | None, typer.Option(help="Only letters whose error message matches this regex.")] = None,
    *,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per letter, a line each.")] = False,
) -> None:
    """One line per dead letter: where it is, where it came from, why."""
    from worker.ops.dlq import read_letters  # noqa: PLC0415

    letters = _ops(read_letters(_settings().kafka, reason=reason, topic=topic, grep=grep))
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(_letter_document(letter, with_value=False)))
        return
    from rich.table import Table  # noqa: PLC0415 - see the imports' note

    table = Table(title=f"{len(letters)} dead letter(s)")
    for column in ("letter", "original", "reason", "error"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        # Text, not markup: every field comes from a record, and "[/]" would be read as a tag.
        cells = (letter.position, letter.origin, letter.error("reason"), letter.error("exception.message")[:120])
        table.add_row(*(Text(_printable(cell)) for cell in cells))
    _out().print(table)


def _printable(text: str) -> str:
    r"""``text`` with every control or format character escaped (``\x1b``): a letter cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)


def _letter_document(letter: Any, *, with_value: bool) -> dict[str, Any]:  # noqa: ANN401 - ops.dlq.Letter, imported lazily
    document = {
        "letter": letter.position,
        "original": letter.origin,
        "reason": letter.error("reason"),
        "error": letter.error("exception.message"),
        "key": letter.key.decode(errors="replace") if letter.key else None,
        "headers": {k: v.decode(errors="replace") for k, v in letter.headers},
    }
    if with_value:
        document["value"] = letter.value.decode(errors="replace") if letter.value else None
    return document


@dlq_app.command("show")
def dlq_show(
    position: Annotated[str, typer.Argument(help="DLQ_TOPIC:PARTITION:OFFSET, as `gpm dlq list` shows.")],
) -> None:
    """Print one letter: its error headers and its original value."""
    from worker.ops.dlq import read_letters  # noqa: PLC0415

    letters = [x for x in _ops(read_letters(_settings().kafka)) if x.position == position]
    if not letters:
        console.print(f"[red]no dead letter at {escape(position)}[/red]")
        raise typer.Exit(1)
    typer.echo(json.dumps(_letter_document(letters[0], with_value=True), indent=2))


@dlq_app.command("redrive")
def dlq_redrive(
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    topic: Annotated[str | None, typer.Option(help="Only letters from this original topic.")] = None,
    grep: Annotated[str | None, typer.Option(help="Only letters whose error message matches this regex.")] = None,
    *,
    dry_run: Annotated[bool, typer.Option(help="Count what would be re-driven, send nothing.")] = False,
) -> None:
    """Publish dead letters back to their original topic (after a fix); idempotent for applied events."""
    from worker.ops.dlq import read_letters, redrive, redrive_target  # noqa: PLC0415

    settings = _settings()
    letters = _ops(read_letters(settings.kafka, reason=reason, topic=topic, grep=grep))
    refused = []
    for letter in letters:
        try:
            redrive_target(settings.kafka, letter)
        except OperationRefused as exc:
            refused.append(str(exc))
    if refused:
        for line in refused[:20]:
            console.print(Text(f"refused: {line}", style="red"))
        console.print(f"[red]{len(refused)} of {len(letters)} letter(s) cannot be re-driven; nothing sent[/red]")
        raise typer.Exit(1)
    if dry_run or not letters:
        console.print(f"{len(letters)} dead letter(s) match" + ("; nothing sent (--dry-run)" if dry_run else ""))
        return
    with _progress() as progress:
        task = progress.add_task("re-driving", total=len(letters))
        sent = _ops(redrive(settings.kafka, letters, lambda _: progress.advance(task)))
    console.print(f"re-drove {sent} dead letter(s) to their original topics")


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Directory of the JSON Schemas.")] = Path("schemas"),
    *,
    check: Annotated[bool, typer.Option(help="Fail if the files differ from the models.")] = False,
) -> None:
    """Write (or --check) the JSON Schema of every event type."""
    from worker.events import json_schemas  # noqa: PLC0415

    drift = []
    for stem, schema in json_schemas().items():
        path = out / f"{stem}.schema.json"
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                drift.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if drift:
        console.print(f"[red]schemas out of date:[/red] {', '.join(drift)} (run: gpm schemas)")
        raise typer.Exit(1)


@app.command()
def dev(
    files: Annotated[
        int, typer.Option(help="Python files to ingest: the standard library, then installed packages.")
    ] = 100,
    transaction_size: Annotated[
        int | None, typer.Option(help="Graph rows per batch (unset: the backend's, 1000 or 4000 on FalkorDB).")
    ] = None,
    graph_backend: Annotated[
        Literal["neo4j", "falkordb"],  # config.GraphBackendName, spelt out: importing config slows --help
        typer.Option(help="neo4j: the Neo4j adapter over Bolt, on ArcadeDB; or falkordb."),
    ] = "neo4j",
) -> None:
    """Start the embedded stack, run the worker, ingest real AST graphs, and show the result."""
    from worker.devstack import DevStack  # noqa: PLC0415
    from worker.telemetry import configure_logging  # noqa: PLC0415

    configure_logging("WARNING", "console")
    graph_server = "FalkorDB" if graph_backend == "falkordb" else "ArcadeDB over Bolt"
    console.print(f"starting the local stack (Kafka-protocol broker, PostgreSQL, {graph_server})...")
    with DevStack(graph_backend=graph_backend) as stack:
        settings = stack.settings(transaction_size=transaction_size, linger_ms=100)
        _run(_dev(stack, settings, files))


async def _dev(stack: DevStack, settings: Settings, files: int) -> None:
    from worker.compose import open_graph  # noqa: PLC0415
    from worker.devjob import corpus, ingest_corpus  # noqa: PLC0415

    def show_metrics(worker: Worker) -> None:
        if worker.health is not None:
            host = settings.health.host
            console.print(f"metrics of this run, while it ingests: http://{host}:{worker.health.port}/metrics")

    with _progress() as progress:
        parsing = progress.add_task("parsing files", total=files)
        events = corpus(files, lambda: progress.advance(parsing))
        ingesting = progress.add_task("ingesting", total=len(events))
        report = await ingest_corpus(
            stack, settings, events, lambda done: progress.update(ingesting, completed=done), show_metrics
        )
        progress.update(ingesting, completed=len(events))
    graph = open_graph(settings)
    try:
        in_graph = await graph.query("MATCH (n:AstNode) RETURN count(n) AS nodes")
        functions = await graph.query(
            "MATCH (f:FunctionDef) RETURN f.source_id AS file, f.name AS name, f.lineno AS line "
            "ORDER BY file, line LIMIT 5"
        )
        linked = await graph.query(
            "MATCH (i:Intent)-[:IMPLEMENTED_BY]->(n:AstNode) RETURN i.id AS intent, n.source_id AS file, n.name AS name"
        )
    finally:
        await graph.close()
    from rich.table import Table  # noqa: PLC0415 - see the imports' note

    table = Table(title=f"ingested in {report.seconds:.1f}s: broker → validate → saga → PostgreSQL + graph")
    for column in ("files", "nodes", "edges", "nodes/s", "nodes in graph", "outbox rows"):
        table.add_column(column, justify="right")
    table.add_row(
        str(report.files),
        str(report.nodes),
        str(report.edges),
        f"{report.nodes_per_s:,.0f}",
        str(in_graph[0]["nodes"]),
        ", ".join(f"{state}={n}" for state, n in sorted(report.outbox.items())),
    )
    out = _out()
    out.print(table)
    out.print("first functions in the graph:", functions)
    out.print("intent links in the graph:", linked)
    out.print("the run's metrics at its end:", _metrics_summary())
    out.print(
        "in production, Prometheus scrapes them and deploy/monitoring has the alert rules and the Grafana "
        "dashboard (docker compose up: Prometheus on :9090, Grafana on :3000); docs/operations.md is the runbook"
    )


def _metrics_summary() -> str:
    """A few of the worker's series as /metrics served them when the run ended (this process's registry)."""
    from collections import defaultdict  # noqa: PLC0415 - see the imports' note

    from prometheus_client import REGISTRY  # noqa: PLC0415

    # One collection (it runs every collector, the store gauges' included), summed by sample name.
    total: defaultdict[str, float] = defaultdict(float)
    for family in REGISTRY.collect():
        for sample in family.samples:
            total[sample.name] += sample.value
    batches = total["gpm_batch_duration_seconds_count"]
    seconds = total["gpm_batch_duration_seconds_sum"]
    return (
        f"gpm_events_consumed_total={total['gpm_events_consumed_total']:.0f}, "
        f"gpm_events_dead_lettered_total={total['gpm_events_dead_lettered_total']:.0f}, "
        f"gpm_graph_nodes_written_total={total['gpm_graph_nodes_written_total']:.0f}, "
        f"batches={batches:.0f} (mean {seconds / batches if batches else 0:.3f} s)"
    )


def main() -> None:
    """Entry point for ``python -m worker``."""
    app()
