"""``gpm`` commands that set up and run the service: run, migrate, topics, publish, preflight, schemas."""

from __future__ import annotations

import faulthandler
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.text import Text

from worker.errors import EventError, GpmError

# The rest is imported by the command that needs it, to keep `gpm --help` fast (see common.py).
if TYPE_CHECKING:
    from worker.config import Settings
    from worker.preflight import PreflightReport

from worker.cli.common import app, console, run_async, run_op, settings_or_exit, stdout


@app.command()
def run() -> None:
    """Run the worker until SIGTERM/SIGINT (settings from GPM_* variables and .env)."""
    from worker.app import Worker  # noqa: PLC0415 - keep `gpm --help` fast
    from worker.runtime import tune_gc  # noqa: PLC0415

    settings = settings_or_exit(logging=True)
    tune_gc()
    # `kill -USR2 <pid>` prints every thread's stack to stderr, even with the event loop
    # stuck (SIGUSR1, handled by the running worker, logs every asyncio task's stack).
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    try:
        run_async(Worker(settings).run())
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

    settings = settings_or_exit(logging=True)
    if topics:
        _ensure_topics(settings, topic, partitions)
    run_op(run_migrations(settings))


@topics_app.command("ensure")
def topics_ensure(
    topic: Annotated[list[str] | None, _TOPIC_OPTION] = None,
    partitions: Annotated[int, _PARTITIONS_OPTION] = 6,
) -> None:
    """Create the consumed topics and their dead-letter topics that are missing; change nothing that exists."""
    _ensure_topics(settings_or_exit(), topic, partitions)


def _ensure_topics(settings: Settings, topic: list[str] | None, partitions: int) -> None:
    from worker.config import DEFAULT_TOPICS  # noqa: PLC0415
    from worker.ops.topics import ensure_topics  # noqa: PLC0415

    report = run_op(ensure_topics(settings, list(topic or DEFAULT_TOPICS), partitions))
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

    settings = settings_or_exit()
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
        sent = run_op(publish_events(settings.kafka, name, batch))
        console.print(f"published {sent} events to {name}")


@app.command()
def preflight() -> None:
    """Check the servers' versions and the users' rights; exit 1 if anything is missing."""
    from worker.compose import open_stores  # noqa: PLC0415
    from worker.preflight import PreflightReport, broker_checks, run_preflight  # noqa: PLC0415

    settings = settings_or_exit()

    async def check() -> PreflightReport:
        broker = await broker_checks(settings.kafka)
        async with open_stores(settings) as stores:
            report = await run_preflight(stores.relational, stores.graph)
        return PreflightReport([*broker, *report.checks], report.advice)

    report = run_op(check())
    out = stdout()
    for c in report.checks:
        out.print(f"{'ok  ' if c.ok else '[red]FAIL[/red]'} {c.name}: {c.detail}")
    for advice in report.advice:
        out.print(f"[yellow]warn[/yellow] graph server settings: {advice}")
    if not report.ok:
        raise typer.Exit(1)


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
