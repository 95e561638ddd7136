"""Tasks from the user's own data instead of a domain's generator.

A source is a Parquet file, a JSONL file (``.jsonl`` or ``.jsonl.gz``, one JSON object a line),
or a directory holding a Hugging Face ``datasets`` dataset: one written by ``save_to_disk``, or
data files that ``datasets.load_dataset`` reads from a local directory. Nothing is fetched over
the network.

A column mapping says where each field of the task row comes from::

    {
        "prompt": "Q: {question}\\nA:",          # a template over columns
        "completion": "solution",                # a column, taken as it is
        "meta": {"answer": "final"},            # meta JSON key -> column or template
        "task_id": "id",                         # optional
    }

Each value is either a column name, whose value is taken as it is, or a ``str.format`` template
over the columns, recognised by containing "{" (write "{{" for a literal brace). ``prompt`` and
``completion`` are required and must come out as strings. ``meta`` values taken from a column
keep their JSON type (a list of tests stays a list). ``task_id`` defaults to
``<domain>-<source name>-<row index>``. A column that a row lacks is an error naming it, the
row and the columns there are; so is a path that does not exist.

``SourceDomain`` turns a source into a domain: tasks from the file, verification and tool
environment from an existing domain; its rows come from the column mapping, or from a published
dataset shape (``fmt``: gsm8k, math, mbpp; domains/formats.py). The pipeline builds one for every
``prepare.sources`` entry::

    SourceDomain(get_domain("math"), "gsm8k.parquet", {...}, name="math")
"""

from __future__ import annotations

import gzip
import json
import random
import string
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from domains.base import Domain, SourceError, ToolEnv, Verdict
from domains.formats import format_tasks

FIELDS = ("prompt", "completion", "meta", "task_id")
_REQUIRED = ("prompt", "completion")


def read_records(source: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``source`` as dicts of plain Python values, in file order.

    ``split`` picks one split of a dataset directory that has several; files have none.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"task source not found: {path}")
    if path.is_dir():
        return _read_dataset_dir(path, split)
    if split is not None:
        raise SourceError(f"{path}: split={split!r} applies only to a datasets directory")
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq  # imported here: only Parquet sources need it

        return pq.read_table(path).to_pylist()
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    raise SourceError(f"{path}: unsupported format; expected .parquet, .jsonl, .jsonl.gz or a datasets directory")


def read_columns(source: str | Path, split: str | None = None) -> list[str] | None:
    """The column names of ``source`` without reading its rows (a JSONL file: its first record's
    keys), or None where that needs the whole read (data files in a directory)."""
    path = Path(source)
    if path.is_dir():
        if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            return None
        import datasets  # imported here: slow to import, and only directory sources need it

        data = datasets.load_from_disk(str(path))  # memory-mapped: no rows are read
        if isinstance(data, datasets.DatasetDict):
            if split is None and len(data) == 1:
                split = next(iter(data))
            return data[split].column_names if split in data else None
        return data.column_names
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), None)
        try:
            record = json.loads(first) if first else None
        except json.JSONDecodeError:
            return None  # the full read names the line
        return list(record) if isinstance(record, dict) else None
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    records = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise SourceError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def _read_dataset_dir(path: Path, split: str | None) -> list[dict[str, Any]]:
    import datasets  # imported here: slow to import, and only directory sources need it

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        data = datasets.load_from_disk(str(path))  # written by save_to_disk
    else:
        data = datasets.load_dataset(str(path))  # data files in a local directory
    if isinstance(data, datasets.DatasetDict):
        if split is None and len(data) == 1:
            split = next(iter(data))
        if split not in data:
            raise SourceError(f"{path}: choose a split with split=...; splits: {', '.join(data)}")
        data = data[split]
    elif split is not None:
        raise SourceError(f"{path}: split={split!r} given but the dataset has no splits")
    return data.to_list()


def _check_columns_spec(columns: Mapping[str, Any]) -> None:
    unknown = set(columns) - set(FIELDS)
    if unknown:
        raise SourceError(f"column mapping: unknown fields {sorted(unknown)}; fields: {', '.join(FIELDS)}")
    for field in _REQUIRED:
        if field not in columns:
            raise SourceError(f"column mapping: {field!r} is required")
    meta = columns.get("meta", {})
    if not isinstance(meta, Mapping):
        raise SourceError("column mapping: 'meta' must map meta keys to columns or templates")
    specs = {f: columns[f] for f in FIELDS if f in columns and f != "meta"} | {f"meta.{k}": v for k, v in meta.items()}
    for field, spec in specs.items():
        if not isinstance(spec, str):
            raise SourceError(f"column mapping: {field} must be a column name or a template, got {spec!r}")
        try:
            list(string.Formatter().parse(spec))
        except ValueError as e:
            raise SourceError(f"column mapping: {field}: bad template {spec!r} ({e})") from None


def _value(record: dict[str, Any], spec: str, field: str, where: str) -> Any:
    """The value ``spec`` (a column name or a template) gives for ``record``."""
    names = [name for _, name, _, _ in string.Formatter().parse(spec) if name is not None] if "{" in spec else [spec]
    for name in names:
        column = name.split(".", 1)[0].split("[", 1)[0]  # "{a.b}" and "{a[0]}" read column a
        if column not in record:
            raise SourceError(f"{where}: no column {column!r} (for {field}); columns: {', '.join(record)}")
    return spec.format_map(record) if "{" in spec else record[spec]


def to_tasks(records: list[dict[str, Any]], domain: str, columns: Mapping[str, Any], source_name: str) -> list[dict]:
    """Map ``records`` into task rows (see the module docstring for ``columns``)."""
    _check_columns_spec(columns)
    tasks = []
    for i, record in enumerate(records):
        where = f"{source_name} row {i}"
        row = {"task_id": f"{domain}-{source_name}-{i}", "domain": domain}
        for field in ("prompt", "completion", "task_id"):
            if field in columns:
                row[field] = _value(record, columns[field], field, where)
        row["task_id"] = str(row["task_id"])  # integer ids are common
        for field in _REQUIRED:
            if not isinstance(row[field], str):
                raise SourceError(f"{where}: {field} from {columns[field]!r} is {type(row[field]).__name__}, not a string")
        meta = {key: _value(record, spec, f"meta.{key}", where) for key, spec in columns.get("meta", {}).items()}
        try:
            row["meta"] = json.dumps(meta, sort_keys=True)
        except TypeError as e:
            raise SourceError(f"{where}: meta is not JSON-serialisable ({e})") from None
        tasks.append(row)
    return tasks


def load_tasks(source: str | Path, domain: str, columns: Mapping[str, Any], split: str | None = None) -> list[dict]:
    """Task rows for ``domain`` from ``source`` mapped by ``columns``."""
    name = Path(source).name.split(".", 1)[0]
    return to_tasks(read_records(source, split), domain, columns, name)


def sample_tasks(tasks: list[dict], n: int, seed: int) -> list[dict]:
    """A deterministic random sample of ``min(n, len(tasks))`` distinct tasks: a fixed pool
    cannot give more than it holds, and the caller (``prepare``) reports a shortfall."""
    return random.Random(seed).sample(tasks, min(n, len(tasks)))


class SourceDomain:
    """A domain whose tasks come from ``source``; ``base`` verifies them and builds their tool
    environment. The file is read on first use, the path and mapping are checked at once."""

    def __init__(self, base: Domain, source: str | Path, columns: Mapping[str, Any] | None, *,
                 split: str | None = None, name: str | None = None, fmt: str = "columns") -> None:
        if fmt == "columns":
            _check_columns_spec(columns or {})
        if not Path(source).exists():
            raise FileNotFoundError(f"task source not found: {source}")
        self.base, self.source, self.columns, self.split, self.fmt = base, Path(source), columns, split, fmt
        self.name = name or base.name

    @cached_property
    def tasks(self) -> list[dict]:
        if self.fmt == "columns":
            return load_tasks(self.source, self.name, self.columns, self.split)
        return format_tasks(read_records(self.source, self.split), self.base, self.name, self.fmt, str(self.source))

    def make_tasks(self, n: int, seed: int) -> list[dict]:
        return sample_tasks(self.tasks, n, seed)

    def verify(self, task: dict, completion: str) -> Verdict:
        return self.base.verify(task, completion)

    def environment(self, task: dict) -> ToolEnv | None:
        return self.base.environment(task)
