"""``gpm dlq``: list, inspect and re-drive dead-lettered events."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

# The rest is imported by the command that needs it, to keep `gpm --help` fast (see common.py).
from worker.cli.common import app, console, printable, progress_bars, run_op, settings_or_exit, stdout
from worker.errors import OperationRefused

dlq_app = typer.Typer(
    help="List, inspect and re-drive dead-lettered events.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(dlq_app, name="dlq")


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

    letters = run_op(read_letters(settings_or_exit().kafka, reason=reason, topic=topic, grep=grep))
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
        table.add_row(*(Text(printable(cell)) for cell in cells))
    stdout().print(table)


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

    letters = [x for x in run_op(read_letters(settings_or_exit().kafka)) if x.position == position]
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

    settings = settings_or_exit()
    letters = run_op(read_letters(settings.kafka, reason=reason, topic=topic, grep=grep))
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
    with progress_bars() as progress:
        task = progress.add_task("re-driving", total=len(letters))
        sent = run_op(redrive(settings.kafka, letters, lambda _: progress.advance(task)))
    console.print(f"re-drove {sent} dead letter(s) to their original topics")
