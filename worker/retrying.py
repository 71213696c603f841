"""What every retry loop of the worker shares: the backoff and the log line before each wait."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from tenacity import RetryCallState, wait_exponential_jitter

from worker.config import WorkerSettings

log = structlog.get_logger(__name__)


def backoff(settings: WorkerSettings) -> wait_exponential_jitter:
    """The wait between tries of anything that may succeed later: exponential, jittered, capped."""
    return wait_exponential_jitter(multiplier=settings.retry_initial_s, max=settings.retry_max_s)


def log_before_retry(
    message: str, *, counted: Callable[[], None] | None = None, **context: object
) -> Callable[[RetryCallState], None]:
    """A tenacity ``before_sleep`` hook: ``message`` at warning level, with the attempt and its error.

    ``counted`` is called once per retry (a metric's ``inc``).
    """

    def hook(state: RetryCallState) -> None:
        if counted is not None:
            counted()
        error = state.outcome.exception() if state.outcome else None
        log.warning(message, **context, attempt=state.attempt_number, error=str(error) if error else None)

    return hook
