"""Parquet datasets with their lineage record in the footer key-value metadata."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data.errors import ArtifactError
from data.integrity import fingerprint
from data.lineage import LineageRecord
from data.temporary import temporary

LINEAGE_KEY = b"distillery.lineage"


def write_table(rows: list[dict[str, Any]] | pa.Table, path: str | Path, record: LineageRecord, schema: pa.Schema | None = None) -> LineageRecord:
    """Write rows to `path` atomically (temporary name, then rename) with `record` in the footer.

    An empty list needs `schema` (there is no row to infer it from); a dataset of rejects may be empty.
    """
    path = Path(path)
    if isinstance(rows, pa.Table):
        table = rows
    elif rows or schema is not None:
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        raise ArtifactError(f"cannot write {path}: no rows and no schema ({record.stage}/{record.domain}/{record.name})")
    record.rows = table.num_rows
    record.digest = digest(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        # Bytes are known only after writing; the footer keeps the row count, the catalog both.
        metadata = dict(table.schema.metadata or {})
        metadata[LINEAGE_KEY] = record.to_json().encode()
        pq.write_table(table.replace_schema_metadata(metadata), tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Known only now: the catalog row keeps them (a footer cannot hold the hash of its own file).
    record.bytes, record.sha256 = path.stat().st_size, fingerprint(path)
    return record


def digest(table: pa.Table) -> str:
    """A hash of the table's schema and values (not its metadata): equal for equal data, however it was made."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
        writer.write_table(table.replace_schema_metadata(None).combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def write_stream(tables: Iterable[pa.Table], path: str | Path, record: LineageRecord, schema: pa.Schema) -> LineageRecord:
    """Like `write_table`, from tables written one at a time, so memory holds one of them.

    The footer's schema metadata is fixed when the writer opens, so `record.rows` must already hold
    the total row count; a different count is an error and nothing is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    schema = schema.with_metadata({LINEAGE_KEY: record.to_json().encode()})
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in tables:
                writer.write_table(table.replace_schema_metadata(None).cast(schema.remove_metadata()).replace_schema_metadata(schema.metadata))
                rows += table.num_rows
        if rows != record.rows:
            raise ArtifactError(f"cannot write {path}: {rows} rows streamed, the lineage record says {record.rows}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Known only now: the catalog row keeps them (a footer cannot hold the hash of its own file).
    record.bytes, record.sha256 = path.stat().st_size, fingerprint(path)
    return record


def iter_rows(path: str | Path, batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """The rows of a dataset, read one record batch at a time."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"dataset file not found: {path}")
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise ArtifactError(f"corrupt Parquet file {path}: {e}") from e


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"dataset file not found: {path}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise ArtifactError(f"corrupt Parquet file {path}: {e}") from e


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return read_table(path).to_pylist()


def read_record(path: str | Path) -> LineageRecord:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"dataset file not found: {path}")
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise ArtifactError(f"corrupt Parquet file {path}: {e}") from e
    if LINEAGE_KEY not in metadata:
        raise ArtifactError(f"{path} has no lineage record in its Parquet footer")
    try:
        return LineageRecord.from_json(metadata[LINEAGE_KEY])
    except ValueError as e:  # json.JSONDecodeError is one
        raise ArtifactError(f"the lineage record in the footer of {path} is damaged: {e}") from None
