"""``gpm`` commands an operator reads and steers the pipeline with: status, replay, check, stats."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

# The rest is imported by the command that needs it, to keep `gpm --help` fast (see common.py).
if TYPE_CHECKING:
    from worker.library import ConsistencyReport, StorageStats

from worker.cli.common import app, console, progress_bars, run_op, settings_or_exit, stdout


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

    state = run_op(collect(settings_or_exit(), topic))
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
    out = stdout()
    out.print(table)
    unfinished = ", ".join(f"{k}={v}" for k, v in sorted(state.outbox.items())) or "none"
    out.print(f"outbox unfinished: {unfinished}" + ("  (gpm outbox list shows them)" if state.outbox else ""))
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

    settings = settings_or_exit()
    if to not in {"earliest", "latest", "time"}:
        console.print("[red]--to must be earliest, latest or time[/red]")
        raise typer.Exit(2)
    if into_empty_stores:
        run_op(require_empty_stores(settings))
    moves = run_op(
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
    stdout().print(table)
    if wait and not dry_run:
        with progress_bars() as progress:
            task = progress.add_task("reprocessing", total=None)

            def show(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            run_op(watch_lag(settings, topic, show))


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
        async with GraphPostgresManager(settings_or_exit()) as gpm:
            return await gpm.check_data_consistency(stuck_after_s, repair=repair)

    result = run_op(report())
    out = stdout()
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
        async with GraphPostgresManager(settings_or_exit()) as gpm:
            return await gpm.get_storage_stats()

    typer.echo(json.dumps(dataclasses.asdict(run_op(collect())), default=str))  # the oldest rows' times
