"""``gpm outbox``: list the saga rows that are not applied, and resolve those dealt with.

'compensated' rows are batches rewound after a failed graph write (their events were read
again and applied under a later batch, or dead-lettered); 'failed' rows are batches the
graph committed and PostgreSQL did not record (`gpm check --repair` settles the stores).
Both stay as the record of what happened until an operator resolves them; resolved rows
keep their error and the operator's note, and retention removes them after its window.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated
from uuid import UUID

import typer
from rich.text import Text

from worker.cli.common import app, console, printable, run_op, settings_or_exit, stdout

outbox_app = typer.Typer(
    help="List the outbox rows that are not applied; resolve compensated and failed ones.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(outbox_app, name="outbox")


# telemetry.OUTBOX_STATES and postgres_bookkeeping.RESOLVABLE, spelt out: importing them slows --help.
class State(StrEnum):
    """An outbox state other than applied or resolved."""

    PENDING = "pending"
    COMPENSATED = "compensated"
    FAILED = "failed"
    ABANDONED = "abandoned"


class Resolvable(StrEnum):
    """A state an operator resolves."""

    COMPENSATED = "compensated"
    FAILED = "failed"


@outbox_app.command("list")
def outbox_list(
    state: Annotated[
        list[State] | None, typer.Option(help="Only this state (repeatable; default: pending, compensated, failed).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows.")] = 100,
    *,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row, a line each.")] = False,
) -> None:
    """One line per row: its batch, state, attempts, since when, where its records sit, and its last error."""
    from worker.compose import using_relational  # noqa: PLC0415

    states = [str(s) for s in state or State if s is not State.ABANDONED]
    rows = run_op(using_relational(settings_or_exit(), lambda store: store.outbox_rows(states, limit)))
    if as_json:
        for r in rows:
            document = {
                "batch_id": str(r.batch_id),
                "state": r.state,
                "attempts": r.attempts,
                "rows": r.rows,
                "created_at": r.created_at.isoformat(),
                "updated_at": r.updated_at.isoformat(),
                "positions": [f"{p.topic}:{p.partition}:{p.offset}" for p in r.positions],
                "last_error": r.last_error,
            }
            typer.echo(json.dumps(document))
        return
    from rich.table import Table  # noqa: PLC0415 - see common.py's note on imports

    table = Table(title=f"{len(rows)} outbox row(s)" + (f" (the first {limit})" if len(rows) == limit else ""))
    for column in ("batch", "state", "attempts", "since", "records", "last error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        first = f"{r.positions[0].topic}:{r.positions[0].partition}:{r.positions[0].offset}" if r.positions else "-"
        records = first + (f" and {len(r.positions) - 1} more" if len(r.positions) > 1 else "")
        since = r.updated_at.isoformat(timespec="seconds")
        # Text, not markup: an error message may quote a record's content.
        cells = (str(r.batch_id), r.state, str(r.attempts), since, records, printable((r.last_error or "")[:160]))
        table.add_row(*(Text(cell) for cell in cells))
    stdout().print(table)


@outbox_app.command("resolve")
def outbox_resolve(
    batch: Annotated[list[str] | None, typer.Argument(help="Batch ids, as `gpm outbox list` shows them.")] = None,
    state: Annotated[
        list[Resolvable] | None,
        typer.Option(help="Every row in this state (repeatable); with batch ids, only those in it."),
    ] = None,
    older_than_s: Annotated[float, typer.Option(min=0, help="Only rows unchanged for at least this many seconds.")] = 0,
    note: Annotated[str, typer.Option(help="Why: kept on the row until retention removes it.")] = "resolved by gpm",
    *,
    dry_run: Annotated[bool, typer.Option(help="Show how many rows would be resolved; change nothing.")] = False,
) -> None:
    """Mark compensated or failed rows resolved: counted no more, removed by retention after its window.

    Resolve 'failed' rows after `gpm check --repair` (and the replay it asks for): they are
    the record that the stores may disagree.
    """
    from worker.compose import using_relational  # noqa: PLC0415

    if not batch and not state:
        console.print("[red]name the rows to resolve: batch ids, or --state compensated / --state failed[/red]")
        raise typer.Exit(2)
    ids = [_batch_id(text) for text in batch] if batch else None
    states = [str(s) for s in state or Resolvable]
    resolved = run_op(
        using_relational(
            settings_or_exit(logging=True),  # the change is logged, as the worker logs
            lambda store: store.resolve_outbox(
                states, note=note, older_than_s=older_than_s, batch_ids=ids, dry_run=dry_run
            ),
        )
    )
    verb = "would resolve" if dry_run else "resolved"
    console.print(f"{verb} {len(resolved)} outbox row(s)")
    missed = sorted(str(i) for i in set(ids or ()) - set(resolved))
    if missed:
        console.print(
            Text(
                f"not resolved (no such row, not {' or '.join(states)}, or changed within --older-than-s): "
                + ", ".join(missed),
                style="red",
            )
        )
        raise typer.Exit(1)


def _batch_id(text: str) -> UUID:
    """A batch id from the command line, or exit 2 naming the one that is not."""
    try:
        return UUID(text)
    except ValueError:
        console.print(Text(f"not a batch id: {text}", style="red"))
        raise typer.Exit(2) from None
