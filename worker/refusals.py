"""Why a secure connection failed, read from the error a driver raised, in words an operator acts on.

Drivers wrap the ssl module's error in their own (redis-py's ConnectionError, Neo4j's
ServiceUnavailable around BoltSecurityError) or drop it (aiokafka's bootstrap error):
``tls_refusal`` walks an exception's causes for it. A certificate or protocol problem is
not an outage: waiting will not fix it, so the caller raises ``AccessRefused`` instead of
retrying in silence. The reasons are the ssl module's, which never hold a secret.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

WRONG_CREDENTIALS = "wrong credentials"
UNKNOWN_CA = "unknown certificate authority"
HOST_NAME_MISMATCH = "host name mismatch"
CERTIFICATE_DATES = "certificate expired or not yet valid"
CERTIFICATE_REFUSED = "certificate not accepted"
CLIENT_CERTIFICATE = "client certificate refused or missing"
PROTOCOL_MISMATCH = "protocol mismatch"
NOT_PERMITTED = "not permitted by the server's access rules"

# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code).
_UNKNOWN_CA_CODES = frozenset({2, 18, 19, 20, 21, 27})
_HOST_CODES = frozenset({62, 64})  # host name, IP address mismatch
_DATE_CODES = frozenset({9, 10})  # not yet valid, expired
# What OpenSSL reports when the other end does not speak TLS at all.
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG"}
)
# Alerts the server sends when it does not take our client certificate (or wants one).
_CLIENT_CERT_ALERTS = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
    }
)
NOT_TLS_DETAIL = "the server does not speak TLS on that port, or speaks only TLS"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every cause or context behind it, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def tls_refusal(exc: BaseException, *, in_handshake: bool = False) -> tuple[str, str] | None:
    """(reason, detail) when ``exc`` comes from a TLS handshake that cannot succeed; None for anything else.

    ``in_handshake``: the driver says the connection broke during the TLS handshake (Neo4j's
    BoltSecurityError), so a reset or an early end there is a plain server on a TLS setting.
    """
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _verification(cause)
        if isinstance(cause, ssl.SSLError) and (found := _handshake(cause)):
            return found
    if in_handshake and any(isinstance(c, ConnectionResetError | EOFError) for c in causes(exc)):
        return PROTOCOL_MISMATCH, _CLOSED_IN_HANDSHAKE
    return None


_CLOSED_IN_HANDSHAKE = "the server closed the connection during the TLS handshake: " + NOT_TLS_DETAIL


def _verification(error: ssl.SSLCertVerificationError) -> tuple[str, str]:
    """Our side refused the server's certificate: why, by OpenSSL's code."""
    code = error.verify_code
    message = error.verify_message or str(error)
    if code in _HOST_CODES:
        return HOST_NAME_MISMATCH, message
    if code in _UNKNOWN_CA_CODES:
        return UNKNOWN_CA, f"{message}: the server's certificate is not signed by a CA this client trusts"
    if code in _DATE_CODES:
        return CERTIFICATE_DATES, message
    return CERTIFICATE_REFUSED, message


def _handshake(error: ssl.SSLError) -> tuple[str, str] | None:
    """A handshake that broke: a plain server, or the server refusing our certificate."""
    reason = error.reason or ""
    if reason in _NOT_TLS:
        return PROTOCOL_MISMATCH, NOT_TLS_DETAIL
    if reason in _CLIENT_CERT_ALERTS:
        return CLIENT_CERTIFICATE, reason
    if isinstance(error, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return PROTOCOL_MISMATCH, _CLOSED_IN_HANDSHAKE
    return None


async def speaks_tls(host: str, port: int, timeout_s: float = 5.0) -> bool | None:
    """Whether the server at ``host:port`` completes a TLS handshake; None when it cannot be reached.

    The certificate is not checked here (the driver does that): the question is only which
    protocol the port speaks, asked after a connection failed, to tell a plain server on a
    TLS URI (or the reverse) from an outage.
    """
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return None
    anything = ssl.create_default_context()
    anything.check_hostname = False
    anything.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout_s):
            await writer.start_tls(anything)
    except (OSError, TimeoutError):  # ssl.SSLError is an OSError
        return False
    else:
        return True
    finally:
        writer.close()
