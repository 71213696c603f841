"""The command tree: every command builds and shows its help, without a service."""

from __future__ import annotations

import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from worker.cli import app


def _paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(command, TyperGroup):
        return [p for name, sub in sorted(command.commands.items()) for p in _paths(sub, (*path, name))]
    return [path]


def test_every_command_builds_and_shows_its_help() -> None:
    """An option typer cannot build fails here, not as a worker that exits at start in an integration test."""
    paths = _paths(typer.main.get_command(app))
    assert ("outbox", "resolve") in paths
    assert ("run",) in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output, path


def test_the_outbox_commands_offer_the_states_the_store_knows() -> None:
    """The CLI spells the states out (importing the store slows --help): they stay the store's."""
    from worker.cli.outbox import Resolvable, State
    from worker.stores.postgres_bookkeeping import RESOLVABLE
    from worker.telemetry import OUTBOX_STATES

    assert [s.value for s in State] == list(OUTBOX_STATES)
    assert [s.value for s in Resolvable] == list(RESOLVABLE)
