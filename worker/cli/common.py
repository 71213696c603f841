"""What every ``gpm`` command shares: the app, the consoles, settings, and errors as exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from worker.errors import ConfigError, GpmError

# Everything else is imported by the command that needs it: `gpm --help` imports only typer
# and rich (about 0.2 s, where importing the stores, pydantic and the devstack took 2 s).
if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from worker.config import Settings
    from worker.library import GraphPostgresManager


# Plain help text (no rich rendering of it): half of `gpm --help`'s time went to drawing panels.
app = typer.Typer(
    help="graph-postgres-manager: Kafka → PostgreSQL + graph store ingestion worker.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
# Messages are never wrapped: a DSN or a path cut mid-token in a log helps nobody (tables use stdout()).
console = Console(stderr=True, soft_wrap=True)


def stdout() -> Console:
    """Standard output; in a pipe, wide enough that tables are not cut at 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


PIPE_WIDTH = 240
T = TypeVar("T")


def settings_or_exit(*, logging: bool = False) -> Settings:
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


TRACEBACK_VARIABLE = "GPM_TRACEBACK"


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, imported on first use (it is a sixth of `gpm --help`'s time)."""
    import asyncio  # noqa: PLC0415

    return asyncio.run(coro)


def progress_bars() -> Progress:
    """The progress bar every long command shows, on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def run_op(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operator command; a GpmError is a clear message and exit 1, not a traceback."""
    # The Kafka client logs each failed connection itself; the command's own message says it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return run_async(coro)
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


class StageBars:
    """A ProgressFn drawing one bar per stage."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        """Draw ``stage``'s bar at ``done`` of ``total``."""
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)


def with_manager(work: Callable[[GraphPostgresManager, StageBars], Awaitable[T]]) -> T:
    """Open the stores, run ``work`` with progress bars, and turn a GpmError into a clear exit 1."""
    from worker.library import GraphPostgresManager  # noqa: PLC0415

    async def run() -> T:
        with progress_bars() as progress:
            async with GraphPostgresManager(settings_or_exit(logging=True)) as gpm:
                return await work(gpm, StageBars(progress))

    return run_op(run())


def printable(text: str) -> str:
    r"""``text`` with every control or format character escaped (``\x1b``): a letter cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)
