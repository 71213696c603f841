"""Named points where a fault test can make the worker die as if by ``kill -9``.

Armed only through the ``GPM_WORKER__CRASH_AT`` setting, which production never sets;
unarmed, :func:`hit` is a comparison. The points are the saga's steps, so a test can
prove that a crash at each of them converges to the same state after a restart.
"""

from __future__ import annotations

import os
import signal
from typing import Literal

CrashPoint = Literal["after-outbox", "mid-graph", "after-graph", "after-postgres", "before-commit"]
_armed: CrashPoint | None = None


def arm(point: CrashPoint | None) -> None:
    """Arm one point (or none)."""
    global _armed  # noqa: PLW0603 - process-wide by nature: it kills the process
    _armed = point


def hit(point: CrashPoint) -> None:
    """Die with SIGKILL if ``point`` is armed: no cleanup, no flush, exactly like kill -9."""
    if _armed == point:
        os.kill(os.getpid(), signal.SIGKILL)
