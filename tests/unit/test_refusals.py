"""TLS failures read out of the exceptions drivers raise (pure logic; real servers: test_secure_connections)."""

from __future__ import annotations

import ssl

import pytest

from worker.errors import AccessRefused, StoreUnavailable
from worker.refusals import (
    CERTIFICATE_DATES,
    CLIENT_CERTIFICATE,
    HOST_NAME_MISMATCH,
    PROTOCOL_MISMATCH,
    UNKNOWN_CA,
    tls_refusal,
)


def _verification(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code = code
    error.verify_message = message
    return error


def _wrapped(inner: BaseException) -> Exception:
    """As redis-py and the Neo4j driver do: their own error raised from the ssl module's."""
    outer = ConnectionError("Error 1 connecting to 10.0.0.5:6380.")
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (_verification(20, "unable to get local issuer certificate"), UNKNOWN_CA),
        (_verification(19, "self-signed certificate in certificate chain"), UNKNOWN_CA),
        (_verification(62, "Hostname mismatch, certificate is not valid for 'db'."), HOST_NAME_MISMATCH),
        (_verification(64, "IP address mismatch"), HOST_NAME_MISMATCH),
        (_verification(10, "certificate has expired"), CERTIFICATE_DATES),
    ],
)
def test_certificate_verification_failures_are_named(error: ssl.SSLCertVerificationError, reason: str) -> None:
    """OpenSSL's verify code, found under the driver's own error, gives the reason."""
    found = tls_refusal(_wrapped(error))
    assert found is not None
    assert found[0] == reason


def test_a_handshake_with_a_plain_server_or_refusing_our_certificate_is_named() -> None:
    """WRONG_VERSION_NUMBER is a plain server on a TLS setting; an alert about our certificate is ours to fix."""
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert tls_refusal(plain) == (PROTOCOL_MISMATCH, "the server does not speak TLS on that port, or speaks only TLS")
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert tls_refusal(alert) == (CLIENT_CERTIFICATE, "TLSV13_ALERT_CERTIFICATE_REQUIRED")


def test_outages_are_not_refusals() -> None:
    """A refused or reset connection outside a TLS handshake is an outage: waited for, never a stop."""
    assert tls_refusal(_wrapped(ConnectionRefusedError(111, "Connection refused"))) is None
    assert tls_refusal(ConnectionResetError(104, "reset")) is None
    assert tls_refusal(ConnectionResetError(104, "reset"), in_handshake=True)[0] == PROTOCOL_MISMATCH  # type: ignore[index]


def test_an_access_refusal_is_an_outage_to_the_saga_and_names_what_to_fix() -> None:
    """After a start it is retried like an outage (a StoreUnavailable), and it survives the decoder's pickling."""
    import pickle

    refused = AccessRefused(
        "PostgreSQL", "GPM_POSTGRES__DSN", "wrong credentials", 'password authentication failed for user "gpm"'
    )
    assert isinstance(refused, StoreUnavailable)
    assert str(refused) == (
        'PostgreSQL refused the connection: wrong credentials (password authentication failed for user "gpm"); '
        "check GPM_POSTGRES__DSN"
    )
    assert str(pickle.loads(pickle.dumps(refused))) == str(refused)  # noqa: S301 - our own bytes
