"""The snapshot file: one tar holding a manifest and gzip-compressed members.

Layout (``format_version`` 1)::

    manifest.json                     what is inside, with each member's rows and SHA-256
    graph/<kind>_nodes.jsonl.gz       one node a line: {"labels": [...], "props": {...}}
    graph/<kind>_edges.jsonl.gz       one relationship a line: {"start", "type", "end", "props"}
    postgres/<table>.tsv.gz           the table in COPY text format, primary-key order

Members are written deterministically (sorted keys, pages in key order, gzip without a
timestamp), so the same data always gives the same bytes and the same checksums: a
backup of a restored snapshot is identical to the original. Checksums are taken of the
uncompressed bytes. The file appears under its final name only once complete.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from worker.errors import SnapshotError

FORMAT = "gpm-snapshot"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class MemberDigest:
    """A member's row count and the SHA-256 of its uncompressed bytes."""

    rows: int
    sha256: str


class Digest:
    """Counts rows and hashes bytes as they pass; with a file, also writes them gzip-compressed."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self._sha = hashlib.sha256()
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) if out is not None else None
        self.rows = 0

    def write(self, data: bytes) -> None:
        """Take bytes made of whole lines."""
        self._sha.update(data)
        self.rows += data.count(b"\n")
        if self._gzip is not None:
            self._gzip.write(data)

    async def write_async(self, data: bytes) -> None:
        """The same, as the awaitable sink asyncpg's COPY wants."""
        self.write(data)

    def write_json_lines(self, records: list[dict[str, Any]]) -> None:
        """One JSON document a line, keys sorted."""
        self.write(b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in records))

    def close(self) -> MemberDigest:
        """Finish the compressed stream (if any) and return the digest."""
        if self._gzip is not None:
            self._gzip.close()
        return MemberDigest(self.rows, self._sha.hexdigest())


class SnapshotWriter:
    """Collects members in a scratch folder next to the target, then writes the tar atomically."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        self.members: dict[str, MemberDigest] = {}

    @contextmanager
    def member(self, name: str) -> Iterator[Digest]:
        """A member to write; its digest is recorded when the block ends."""
        path = self._scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            digest = Digest(out)
            yield digest
            self.members[name] = digest.close()

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write manifest and members into the tar under a temporary name, then rename it into place."""
        partial = self.target.with_name(self.target.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
            for name in sorted(self.members):
                path = self._scratch / name
                with path.open("rb") as data:
                    _add(tar, name, data, path.stat().st_size)
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        partial.replace(self.target)
        self.abort()

    def abort(self) -> None:
        """Remove the scratch folder (and a partial tar)."""
        shutil.rmtree(self._scratch, ignore_errors=True)
        self.target.with_name(self.target.name + ".partial").unlink(missing_ok=True)


def _add(tar: tarfile.TarFile, name: str, data: bytes | IO[bytes], size: int | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if isinstance(data, bytes):
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        info.size = size or 0
        tar.addfile(info, data)


class SnapshotReader:
    """Reads a snapshot file: its manifest, and its members checked against their checksums."""

    def __init__(self, source: Path) -> None:
        if not source.is_file():
            msg = f"no snapshot at {source}"
            raise SnapshotError(msg)
        try:
            self._tar = tarfile.open(source, "r:")  # noqa: SIM115 - closed by close()
            self.manifest: dict[str, Any] = orjson.loads(self._extract(MANIFEST).read())
        except (tarfile.TarError, KeyError, orjson.JSONDecodeError) as exc:
            msg = f"{source} is not a graph-postgres-manager snapshot: {exc}"
            raise SnapshotError(msg) from exc
        if self.manifest.get("format") != FORMAT:
            msg = f"{source} is not a graph-postgres-manager snapshot (format {self.manifest.get('format')!r})"
            raise SnapshotError(msg)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            msg = (
                f"{source} has snapshot format {self.manifest.get('format_version')}; "
                f"this release reads format {FORMAT_VERSION}"
            )
            raise SnapshotError(msg)

    def _extract(self, name: str) -> IO[bytes]:
        member = self._tar.extractfile(name)
        if member is None:
            msg = f"snapshot member {name} is not a file"
            raise SnapshotError(msg)
        return member

    def digest(self, name: str) -> MemberDigest:
        """The manifest's record of a member."""
        entry = self.manifest["members"][name]
        return MemberDigest(entry["rows"], entry["sha256"])

    def chunks(self, name: str) -> Iterator[bytes]:
        """The member's uncompressed bytes, in chunks of whole lines."""
        with gzip.GzipFile(fileobj=self._extract(name), mode="rb") as data:
            rest = b""
            while chunk := data.read(_READ_CHUNK):
                chunk = rest + chunk
                cut = chunk.rfind(b"\n") + 1
                rest = chunk[cut:]
                if cut:
                    yield chunk[:cut]
            if rest:
                yield rest

    def records(self, name: str) -> Iterator[dict[str, Any]]:
        """A JSON-lines member, one document at a time."""
        for chunk in self.chunks(name):
            for line in chunk.splitlines():
                yield orjson.loads(line)

    def verify(self, name: str) -> None:
        """Read the whole member and compare it with the manifest; raise SnapshotError if it differs."""
        digest = Digest()
        try:
            for chunk in self.chunks(name):
                digest.write(chunk)
        except (OSError, EOFError, KeyError, tarfile.TarError) as exc:
            msg = f"snapshot member {name} cannot be read: {exc}"
            raise SnapshotError(msg) from exc
        if (found := digest.close()) != self.digest(name):
            msg = f"snapshot member {name} is corrupt: {found} but the manifest says {self.digest(name)}"
            raise SnapshotError(msg)

    def close(self) -> None:
        """Close the file."""
        self._tar.close()
