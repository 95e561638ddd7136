"""Content fingerprints: recorded when an artifact is written, checked before a stage reads it.

A dataset's fingerprint is the sha256 of its Parquet file, known only once the file is written,
so it lives in the catalog row (the footer cannot hold a hash of itself). A directory's (a
checkpoint, a report) covers every file but its manifest (a linked file by its target and size), so the manifest holds it too and the
directory checks itself even without a catalog.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from data.errors import ArtifactError
from data.lineage import MANIFEST, LineageRecord

_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _content_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST)


def fingerprint(path: Path) -> str:
    """sha256 of a file; of a directory, over each file's relative path and sha256 (its manifest excluded)."""
    if path.is_file():
        return _file_sha256(path)
    h = hashlib.sha256()
    for f in _content_files(path):
        # A link (an adopted pretrained checkpoint's weights, data.checkpoints.save_reference) counts by its
        # target and size: re-reading a model of hundreds of GB at every check would cost more than the
        # stage; the target's sha256, taken once at adoption, is in the lineage.
        digest = f"link {os.readlink(f)} {f.stat().st_size}" if f.is_symlink() else _file_sha256(f)
        h.update(f"{f.relative_to(path).as_posix()}\0{digest}\n".encode())
    return h.hexdigest()


def content_bytes(path: Path) -> int:
    """The size `LineageRecord.bytes` records: the file's, or a directory's files' but its manifest."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in _content_files(path))


def damage(record: LineageRecord, path: Path) -> str | None:
    """What is wrong with the artifact at ``path`` against what ``record`` says was written, or None.

    Size first (cheap: a cut-short file), then the fingerprint. A record from before fingerprints
    were kept has none, and only its size is checked.
    """
    if not path.exists():
        return "its file is missing"
    if record.bytes is not None and (size := content_bytes(path)) != record.bytes:
        return f"{size} bytes, {record.bytes} when written"
    if record.sha256 is not None and fingerprint(path) != record.sha256:
        return "its content changed since it was written (sha256 differs)"
    return None


def _signature(path: Path) -> tuple:
    """Changes when any file of the artifact is rewritten: sizes and modification times."""
    files = [path] if path.is_file() else _content_files(path)
    return tuple((f.as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


# Artifacts found intact in this process, by what they looked like then: a stage reads an input
# several times, and hashing a checkpoint of many gigabytes once is enough.
_intact: set[tuple] = set()


def check(record: LineageRecord, path: Path, root: Path) -> None:
    """Raise `ArtifactError` naming the artifact, and what to do, if it is damaged."""
    key = (record.id, record.sha256, _signature(path)) if path.exists() else None
    if key in _intact:
        return
    problem = damage(record, path)
    if problem is None:
        _intact.add(key)
    else:
        raise ArtifactError(f"artifact {record.id} ({record.label}) at {path}: {problem}; "
                            f"run `distillery doctor --root {root}` to see every problem, `--repair` to quarantine it")
