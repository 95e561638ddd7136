"""The lineage catalog: one SQLite file at the run root, one row per artifact.

Artifact files live under the run root and their records store paths relative to it, so a run
root can be moved or copied whole.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data import tables
from data.checkpoints import read_manifest
from data.errors import ArtifactError
from data.lineage import LineageRecord

CATALOG_FILE = "catalog.sqlite"
LOCK_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    stage TEXT NOT NULL,
    domain TEXT,
    name TEXT NOT NULL,
    uri TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
)
"""


class Catalog:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / CATALOG_FILE

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        if not write and not self.path.exists():
            raise ArtifactError(f"no catalog at {self.path}: run the pipeline (or the prepare stage) first")
        if self.path.exists() and not self.path.is_file():
            raise ArtifactError(f"catalog {self.path} is not a file")
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
        # Domain branches and other runs on the run root write concurrently: wait for the lock instead
        # of failing. The journal stays SQLite's default rollback journal: WAL needs memory shared
        # between the writers, which a run root on NFS or Lustre, written from several machines, lacks.
        conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S)
        try:
            # An empty file is a catalog with no rows: a run killed between opening the file and its
            # first commit leaves one.
            if write or self.path.stat().st_size == 0:
                conn.execute(_SCHEMA)
            yield conn
            conn.commit()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise ArtifactError(f"catalog {self.path} stayed locked by another writer for {LOCK_TIMEOUT_S:g} s: a stuck "
                                    "process holds it (`fuser` names it); nothing was written") from None
            raise ArtifactError(f"corrupt catalog {self.path}: {e}; `distillery doctor --root {self.root} --repair` "
                                "rebuilds it from the artifacts' own lineage records") from e
        finally:
            conn.close()

    def _record(self, text: str) -> LineageRecord:
        try:
            return LineageRecord.from_json(text)
        except ValueError as e:
            raise ArtifactError(f"corrupt catalog {self.path}: a row is not a lineage record ({e}); "
                                f"`distillery doctor --root {self.root} --repair` rebuilds it") from None

    def exists(self) -> bool:
        return self.path.exists()

    def add(self, record: LineageRecord) -> None:
        with self._connect(write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.kind, record.stage, record.domain, record.name, record.uri, record.created_at, record.to_json()),
            )

    def remove(self, artifact_id: str) -> None:
        with self._connect(write=True) as conn:
            conn.execute("DELETE FROM artifacts WHERE id = ?", (artifact_id,))

    def get(self, artifact_id: str) -> LineageRecord:
        with self._connect() as conn:
            row = conn.execute("SELECT record FROM artifacts WHERE id = ? OR id LIKE ?", (artifact_id, f"{artifact_id}%")).fetchall()
        if not row:
            raise ArtifactError(f"unknown artifact id {artifact_id!r} in {self.path}")
        if len(row) > 1:
            raise ArtifactError(f"artifact id prefix {artifact_id!r} is ambiguous in {self.path}")
        return self._record(row[0][0])

    def find(self, artifact_id: str) -> LineageRecord | None:
        """The record if the catalog has it and its file is intact; None if absent.

        A record whose file is missing counts as absent (the work is redone); a file that is
        present but unreadable raises, so that nothing is silently overwritten.
        """
        if not self.path.exists():
            return None
        with self._connect() as conn:
            row = conn.execute("SELECT record FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()
        if row is None:
            return None
        record = self._record(row[0])
        target = self.resolve(record)
        if not target.exists():
            return None
        on_disk = tables.read_record(target) if record.kind == "dataset" else read_manifest(target)
        if on_disk.id != record.id:
            raise ArtifactError(f"{target} holds artifact {on_disk.id}, but the catalog says {record.id}")
        return record

    def list(self, stage: str | None = None, domain: str | None = None, kind: str | None = None) -> list[LineageRecord]:
        if not self.path.exists():
            return []
        query, args = "SELECT record FROM artifacts WHERE 1=1", []
        for column, value in (("stage", stage), ("domain", domain), ("kind", kind)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY created_at, stage, domain, name", args).fetchall()
        return [self._record(r[0]) for r in rows]

    def resolve(self, record: LineageRecord) -> Path:
        return self.root / record.uri

    def ancestry(self, artifact_id: str) -> dict[str, Any]:
        """The record and, recursively, its parents: a tree down to the raw sources."""
        record = self.get(artifact_id)
        return {"record": json.loads(record.to_json()), "parents": [self.ancestry(p) for p in record.parents]}
