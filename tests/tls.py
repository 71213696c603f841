"""Certificates and a TLS front end for the secure-connection tests.

``Pki.make(dir)`` writes a private CA, a server certificate it signs for 127.0.0.1 and
localhost, one for another host name, and a second CA that signed nothing the servers
show: what a wrong ``*_CAFILE`` setting looks like. ``TlsFrontEnd`` serves TLS on a port
of its own and forwards the plain bytes to a server that has no TLS (FalkorDB's bundled
redis-server is built without it), as a load balancer or stunnel would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from worker.devstack.process import free_port

_VALID = dt.timedelta(days=2)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA: its certificate file, and what it signs with."""

    cert_file: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls, directory: Path, name: str) -> Authority:
        """A self-signed CA named ``name``, its certificate written to ``directory``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(_write_cert(cert, directory / f"{name}.crt"), cert, key)

    def issue(self, directory: Path, name: str, hosts: list[str]) -> tuple[Path, Path]:
        """A server certificate for ``hosts`` (names or IP addresses): (certificate file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alternative: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alternative.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alternative.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return _write_cert(cert, directory / f"{name}.crt"), _write_key(key, directory / f"{name}.key")


@dataclass(frozen=True, slots=True)
class Pki:
    """The files a TLS test needs, all in one temporary directory."""

    ca_file: Path  # the CA that signed the servers' certificates
    other_ca_file: Path  # a CA that signed nothing here: "unknown CA"
    cert_file: Path  # for 127.0.0.1 and localhost
    key_file: Path
    wrong_host_cert_file: Path  # for db.example.internal only: "host name mismatch"
    wrong_host_key_file: Path

    @classmethod
    def make(cls, directory: Path) -> Pki:
        """Every file, made anew in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = Authority.make(directory, "gpm-test-ca")
        other = Authority.make(directory, "gpm-other-ca")
        cert, key = ca.issue(directory, "server", ["127.0.0.1", "localhost"])
        wrong_cert, wrong_key = ca.issue(directory, "elsewhere", ["db.example.internal"])
        return cls(ca.cert_file, other.cert_file, cert, key, wrong_cert, wrong_key)


class TlsFrontEnd:
    """TLS on ``port`` in front of a plain TCP server on ``target_port`` (both on 127.0.0.1)."""

    def __init__(self, target_port: int, cert_file: Path, key_file: Path, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert_file, key_file)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        # Open connections, closed on exit: a front end that goes away takes its clients' links with it.
        self._open: set[socket.socket] = set()
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tls-front-end", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in list(self._open):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(10)
            secure = self._context.wrap_socket(client, server_side=True)
            secure.settimeout(None)
        except (OSError, ssl.SSLError):
            client.close()  # a client that does not speak TLS, or refuses our certificate
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self._open.update((secure, upstream))
        threading.Thread(target=_pump, args=(upstream, secure), daemon=True).start()
        _pump(secure, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes one way until either side closes, then close both."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for side in (source, sink):
            with contextlib.suppress(OSError):
                side.close()
