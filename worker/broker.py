"""Why the broker cannot be used: an outage to wait out, or a refusal to report and stop on.

aiokafka retries a bootstrap that fails for any reason and then says only "Unable to
bootstrap from [...]": a wrong SASL password, a CA that does not match and a plaintext
client on a TLS port read alike, and the worker would wait for ever. ``check_broker``
connects as the clients will, one step at a time, and tells them apart:

1. a TCP connection (refused, no route, no such host: an outage, retried);
2. the TLS handshake and the SASL exchange (``AccessRefused``: unknown CA, host name,
   credentials, mechanism);
3. one metadata request: a broker that closes the connection here expects TLS or SASL
   on that port (``AccessRefused``, protocol mismatch).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from aiokafka.protocol.metadata import MetadataRequest

from worker.config import KafkaSettings
from worker.errors import AccessRefused, GpmError, StoreUnavailable
from worker.refusals import PROTOCOL_MISMATCH, WRONG_CREDENTIALS, tls_refusal

SERVER = "the Kafka broker"
CREDENTIALS = "GPM_KAFKA__SASL_USERNAME/PASSWORD"
TLS_SETTINGS = "GPM_KAFKA__SECURITY_PROTOCOL and GPM_KAFKA__SSL_CAFILE"
PROBE_TIMEOUT_S = 10.0
# A TLS handshake takes milliseconds; one unanswered this long is a plain listener waiting
# for the rest of what it took for a request's length.
HANDSHAKE_TIMEOUT_S = 5.0


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


async def check_broker(kafka: KafkaSettings, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Return when a bootstrap server answers as the settings expect; else raise why not.

    ``AccessRefused`` as soon as one server refuses (the others share its settings);
    ``StoreUnavailable`` naming each server's failure when none can be reached.
    """
    unreachable = []
    for server in kafka.bootstrap_servers.split(","):
        try:
            await _check_one(kafka, server, timeout_s)
        except StoreUnavailable as exc:
            if isinstance(exc, AccessRefused):
                raise
            unreachable.append(str(exc))
        else:
            return
    raise StoreUnavailable("; ".join(unreachable))


async def _check_one(kafka: KafkaSettings, server: str, timeout_s: float) -> None:
    host, port = _host_port(server)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        msg = f"{SERVER} at {server} is unreachable: {reason}"
        raise StoreUnavailable(msg) from None
    # Reachable: from here on, a failure is the broker refusing what the settings send.
    options = kafka.client_options()
    options.pop("bootstrap_servers")
    try:
        async with asyncio.timeout(min(timeout_s, HANDSHAKE_TIMEOUT_S) if options.get("ssl_context") else timeout_s):
            conn = await create_conn(
                host, port, client_id=f"{kafka.client_id}-probe", request_timeout_ms=int(timeout_s * 1000), **options
            )
    except TimeoutError:
        if not options.get("ssl_context"):
            raise StoreUnavailable(f"{SERVER} at {server} did not answer the SASL handshake in {timeout_s}s") from None
        # A plaintext listener reads a TLS greeting as the length of a request and waits for it.
        detail = f"{server} did not answer the TLS handshake: it may not speak TLS on that port"
        raise AccessRefused(SERVER, "GPM_KAFKA__SECURITY_PROTOCOL", PROTOCOL_MISMATCH, detail) from None
    except Exception as exc:  # noqa: BLE001 - every failure past TCP is classified below
        raise _refusal(kafka, server, exc) from None
    try:
        async with asyncio.timeout(timeout_s):
            await conn.send(MetadataRequest([]))
    except Exception as exc:  # noqa: BLE001 - as above
        raise _refusal(kafka, server, exc) from None
    finally:
        conn.close()


def _refusal(kafka: KafkaSettings, server: str, exc: Exception) -> GpmError:
    """What a failure after a TCP connection succeeded says about the settings."""
    if isinstance(exc, SaslAuthenticationFailed):
        return AccessRefused(SERVER, CREDENTIALS, WRONG_CREDENTIALS, _first_line(exc))
    if isinstance(exc, UnsupportedSaslMechanismError):
        return AccessRefused(SERVER, "GPM_KAFKA__SASL_MECHANISM", "SASL mechanism not enabled", _first_line(exc))
    if isinstance(exc, KeyError) and kafka.security_protocol.startswith("SASL"):
        # aiokafka's SCRAM client fails this way when the broker ends the exchange with an
        # error ("e=unknown-user", "e=invalid-proof") instead of its signature.
        return AccessRefused(
            SERVER, CREDENTIALS, WRONG_CREDENTIALS, "the broker ended the SCRAM exchange with an error"
        )
    if refused := tls_refusal(exc):
        return AccessRefused(SERVER, TLS_SETTINGS, *refused)
    if isinstance(exc, KafkaError | OSError | TimeoutError):
        expects = {
            "PLAINTEXT": "TLS or SASL",
            "SASL_PLAINTEXT": "TLS",
            "SSL": "SASL",
            "SASL_SSL": "another protocol",
        }[kafka.security_protocol]
        detail = (
            f"{server} took the connection but closed it at the first request under "
            f"{kafka.security_protocol}: it expects {expects} on that port"
        )
        return AccessRefused(SERVER, "GPM_KAFKA__SECURITY_PROTOCOL", PROTOCOL_MISMATCH, detail)
    return StoreUnavailable(f"{SERVER} at {server} failed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


@contextlib.asynccontextmanager
async def explained(kafka: KafkaSettings) -> AsyncIterator[None]:
    """A Kafka client's failure inside becomes the broker check's finding, in one line.

    aiokafka's own error ("Unable to bootstrap from [...]") names no cause; the check says
    whether the broker is down or refuses the settings, and which.
    """
    try:
        yield
    except KafkaError as exc:
        try:
            await check_broker(kafka)
        except GpmError as found:
            raise found from exc
        msg = f"{SERVER} at {kafka.bootstrap_servers} failed: {type(exc).__name__}: {_first_line(exc)}"
        raise StoreUnavailable(msg) from exc


async def start_producer(producer: AIOKafkaProducer, kafka: KafkaSettings) -> None:
    """Start a producer; if it cannot, close what it opened and raise the broker check's finding."""
    try:
        async with explained(kafka):
            await producer.start()
    except BaseException:
        await producer.stop()
        raise
