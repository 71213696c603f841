"""The project's exception tree; every adapter maps driver errors onto it.

    GpmError
    ├── ConfigError              a setting is missing or invalid (raised at start)
    │   └── PreflightError       a server too old, or a right missing (raised at start)
    ├── EventError               an event is malformed or violates its contract (permanent:
    │                            dead-lettered with the reason, never retried)
    ├── SnapshotError            a backup, restore or export cannot go on (corrupt file,
    │                            stores not empty, snapshot newer than this release)
    ├── Halted                   errors.tolerance=none: a record would have been
    │                            dead-lettered, so the worker stops before committing it
    ├── OperationRefused         an operator's command or a library call would do what it
    │                            must not (re-drive to a topic the worker does not consume,
    │                            write through a read query)
    └── StoreError               a store call failed
        ├── StoreUnavailable     transient: connection lost, timeout, deadlock, leader
        │   │                    switch. Retried with bounded backoff; never dead-letters.
        │   ├── DatabaseMissing  the graph database does not exist (yet)
        │   └── AccessRefused    a server (a store or the broker) refused the credentials or
        │                        the certificates, or speaks another protocol on that port:
        │                        stops the start; after it, retried and reported as such
        └── StoreRejected        permanent: the store refused the data (constraint, type,
            │                    syntax). The saga isolates the event and dead-letters it.
            └── UnexpectedFailure  any other exception while applying a batch: handled like
                                 a rejection (confirmed, isolated, dead-lettered with its
                                 class and message), so one event cannot crash-loop the worker.

Adapters raise the most specific class with ``raise ... from exc`` so the driver's own
error stays attached for logs, while callers only ever match on these classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class GpmError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(GpmError):
    """A setting is missing or invalid; the message names the setting, never its secret value."""


class EventError(GpmError):
    """An event cannot be accepted as it is; ``reason`` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[EventError], tuple[str, str]]:
        # Pickled back from the decoder process: rebuild from both fields, not from str().
        return (type(self), (self.reason, self.detail))


class StoreError(GpmError):
    """A store call failed."""


class StoreUnavailable(StoreError):  # noqa: N818 - reads as a state, like httpx's TimeoutException family
    """Transient failure: retry later, never dead-letter."""


class StoreRejected(StoreError):  # noqa: N818 - same reason as above
    """Permanent failure caused by the data: isolate and dead-letter the offending event."""


class UnexpectedFailure(StoreRejected):
    """An exception outside the error tree while applying a batch (a bug, a driver surprise).

    Treated as a rejection of the batch: one event that triggers it is dead-lettered with
    the reason ``apply-failed`` instead of crashing the worker on every restart.
    """


class DatabaseMissing(StoreUnavailable):
    """The configured graph database does not exist (yet).

    Transient while running: a dropped or not yet created database is an operator's problem,
    never the data's, so events are retried, not dead-lettered. At start it is waited for
    only for a bounded time (``GPM_WORKER__DATABASE_WAIT_S``) and then fails the start.
    """


class AccessRefused(StoreUnavailable):
    """A server refused this worker: credentials, certificates, or TLS against a plain port.

    Waiting will not fix it, so the start stops at once with this one line (``server``, the
    ``setting`` to fix, the ``reason``). After a start (a password rotated on the server, a
    certificate renewed under another CA) it is retried like an outage, since the server
    side may be put right, and reported as what it is: log, metric and /readyz. The message
    never holds the secret: the detail comes from the driver's or the ssl module's reason.
    """

    def __init__(self, server: str, setting: str, reason: str, detail: str = "") -> None:
        self.server = server
        self.setting = setting
        self.reason = reason
        self.detail = detail
        super().__init__(
            f"{server} refused the connection: {reason}" + (f" ({detail})" if detail else "") + f"; check {setting}"
        )

    @property
    def brief(self) -> str:
        """What a probe shows: the reason and the setting, without the server's detail."""
        return f"refused: {self.reason}; check {self.setting}"

    def __reduce__(self) -> tuple[type[AccessRefused], tuple[str, str, str, str]]:
        return (type(self), (self.server, self.setting, self.reason, self.detail))


class Halted(GpmError):  # noqa: N818 - reads as what happened
    """A record would have been dead-lettered and GPM_WORKER__ERRORS_TOLERANCE=none: stop, commit nothing past it."""


class OperationRefused(GpmError):  # noqa: N818 - reads as what happened
    """An operator command or a library call refused to do what was asked; nothing was done."""


class SnapshotError(GpmError):
    """A backup, restore or export cannot go on: unreadable or corrupt snapshot, non-empty target."""


class PreflightError(ConfigError):
    """The servers or the users' rights do not meet the requirements; the message lists each failure."""


@contextmanager
def translated(driver_errors: tuple[type[Exception], ...], to_own: Callable[[Exception], Exception]) -> Iterator[None]:
    """Re-raise a driver's errors as this project's (``raise ... from``), as an adapter's block."""
    try:
        yield
    except driver_errors as exc:
        raise to_own(exc) from exc
