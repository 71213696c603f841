"""Child-process helpers shared by the embedded services."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class ServiceStartError(RuntimeError):
    """A service did not come up; the message says which and where its log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    name: str, args: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        try:
            return subprocess.Popen(  # noqa: S603 - args are built by this package, never from user input
                args, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
            )
        except OSError as exc:
            msg = f"{name}: cannot start {args[0]}: {exc}"
            raise ServiceStartError(msg) from exc


def wait_until(
    name: str, proc: subprocess.Popen[bytes] | None, ready: Callable[[], bool], timeout_s: float, log_path: Path
) -> None:
    """Poll ``ready`` until it is true, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"{name} exited with code {proc.returncode} while starting; see {log_path}"
            raise ServiceStartError(msg)
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.1)
    msg = f"{name} did not become ready within {timeout_s:.0f}s; see {log_path}"
    raise ServiceStartError(msg)


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
