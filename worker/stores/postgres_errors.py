"""How asyncpg's errors map onto the project's error tree (shared by the PostgreSQL modules)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import asyncpg

from worker.errors import AccessRefused, StoreRejected, StoreUnavailable
from worker.refusals import PROTOCOL_MISMATCH, WRONG_CREDENTIALS, tls_refusal

P = ParamSpec("P")
T = TypeVar("T")

# SQLSTATE classes that clear up by themselves: connection exceptions (08), insufficient
# resources (53), operator intervention (57, e.g. admin shutdown), and the two
# concurrency failures (40001 serialization, 40P01 deadlock).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57")
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})


SERVER = "PostgreSQL"
DSN_SETTING = "GPM_POSTGRES__DSN"
TLS_SETTING = "GPM_POSTGRES__DSN (its sslmode and sslrootcert)"
# What asyncpg says when sslmode asks for TLS and the server has none.
_NO_TLS_ON_SERVER = "rejected SSL upgrade"


def refusal(exc: BaseException) -> AccessRefused | None:
    """The login or the TLS handshake refused, as an operator reads it; None for anything else."""
    if isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "").startswith("28"):
        return _login_refused(exc)
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        # e.g. sslmode=verify-full with no sslrootcert and no ~/.postgresql/root.crt.
        return AccessRefused(SERVER, TLS_SETTING, "TLS settings incomplete", str(exc).splitlines()[0])
    if isinstance(exc, ConnectionError) and _NO_TLS_ON_SERVER in str(exc):
        return AccessRefused(SERVER, TLS_SETTING, PROTOCOL_MISMATCH, "the server does not offer TLS")
    if refused := tls_refusal(exc):
        return AccessRefused(SERVER, TLS_SETTING, *refused)
    return None


def _login_refused(exc: asyncpg.PostgresError) -> AccessRefused:
    """SQLSTATE class 28: a wrong password, a login pg_hba.conf does not allow, or one it allows only over TLS."""
    message = str(exc)
    if exc.sqlstate == "28P01":
        return AccessRefused(SERVER, DSN_SETTING, WRONG_CREDENTIALS, message)
    if "no encryption" in message:
        # pg_hba.conf has only hostssl lines for this user: TLS is required.
        return AccessRefused(SERVER, TLS_SETTING, PROTOCOL_MISMATCH, f"the server requires TLS: {message}")
    return AccessRefused(SERVER, DSN_SETTING, "login refused", message)


def map_error(exc: BaseException) -> Exception:
    """The project error for a driver error: an outage to retry, or a rejection of the data."""
    if refused := refusal(exc):
        return refused
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state in _TRANSIENT_SQLSTATES or state.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
            return StoreUnavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}")
        return StoreRejected(f"PostgreSQL rejected the write: {type(exc).__name__} [{state}]: {exc}")
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        # asyncpg's own DataError: a value it cannot encode for its column (the data, not the server).
        return StoreRejected(f"PostgreSQL cannot take the data: {type(exc).__name__}: {exc}")
    return StoreUnavailable(f"PostgreSQL unreachable: {type(exc).__name__}: {exc}")


DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


def mapped(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run ``fn`` and translate driver errors into the project's error tree."""

    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except DRIVER_ERRORS as exc:
            raise map_error(exc) from exc

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
