"""A work directory of Parquet shards: results saved as they complete, so an interrupted stage resumes.

Each shard is written to a temporary name and renamed, so a shard that exists is whole; a kill
loses at most the rows not yet in one. Shards carry their own metrics (JSON in the footer), merged
into the final dataset's lineage when the shards are streamed into it.

A stage split into parts (one per worker) gives each part its own directory: shard numbers are
never shared between two writers, and `merge` reads the parts in order.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data import tables
from data.errors import ArtifactError
from data.lineage import LineageRecord
from data.temporary import sweep_under, temporary

METRICS_KEY = b"distillery.shard_metrics"


class ShardDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        sweep_under(self.root)  # a killed run's half-written shard: its rows are redone

    def paths(self) -> list[Path]:
        """Finished shards, in the order they were written."""
        return sorted(self.root.glob("shard-*.parquet"))

    def keys(self, columns: Sequence[str]) -> set[tuple]:
        """The (columns...) tuples of every row already in a finished shard."""
        done: set[tuple] = set()
        for path in self.paths():
            done.update(zip(*tables.read_table(path, list(columns)).to_pydict().values()))
        return done

    def write(self, table: pa.Table, metrics: dict[str, Any]) -> Path:
        """Add a shard atomically; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        existing = self.paths()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.root / f"shard-{number:05d}.parquet"
        tmp = temporary(path)
        try:
            metadata = {**(table.schema.metadata or {}), METRICS_KEY: json.dumps(metrics).encode()}
            pq.write_table(table.replace_schema_metadata(metadata), tmp, compression="zstd")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def metrics(self) -> list[dict[str, Any]]:
        """Each finished shard's metrics, in order."""
        return [json.loads((pq.read_schema(p).metadata or {}).get(METRICS_KEY, b"{}")) for p in self.paths()]


def merge(parts: Sequence[ShardDir], path: str | Path, record: LineageRecord) -> LineageRecord:
    """Stream the shards of every part, part after part, into the dataset at `path` (atomically,
    lineage in the footer), then remove the parts' directories."""
    paths = [p for part in parts for p in part.paths()]
    if not paths:
        raise ArtifactError(f"cannot write {path}: no shards in {', '.join(str(part.root) for part in parts)}")
    record.rows = sum(pq.read_metadata(p).num_rows for p in paths)
    schema = pq.read_schema(paths[0]).remove_metadata()
    tables.write_stream((tables.read_table(p) for p in paths), path, record, schema)
    for part in parts:
        if part.root.exists():  # a part with no prompts wrote nothing
            shutil.rmtree(part.root)
    return record
