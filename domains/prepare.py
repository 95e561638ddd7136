"""The prepare stage: per domain, seed tasks (with reference solutions), new prompts, held-out eval."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from domains import get_domain
from domains.formats import FORMATS
from domains.sources import SourceDomain, read_columns

SPLITS = ("seed", "prompts", "eval")


class TaskSource(BaseModel):
    """A user's dataset that replaces a domain's task generator (its verifier and tools stay)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Parquet file, JSONL file, or a local Hugging Face datasets directory")
    format: Literal["columns", "gsm8k", "math", "mbpp"] = Field(
        "columns", description="a published dataset shape (domains/formats.py), or columns: the mapping in `columns`"
    )
    columns: dict[str, Any] | None = Field(None, description="format columns only: task field -> column or template, see domains/sources.py")
    split: str | None = Field(None, description="split of a DatasetDict directory")

    @model_validator(mode="after")
    def _mapping(self) -> TaskSource:
        if self.format == "columns" and self.columns is None:
            raise ValueError("columns: the column mapping is required with format: columns (or name a format: gsm8k, math, mbpp)")
        if self.format != "columns" and self.columns is not None:
            raise ValueError(f"columns: format {self.format} reads its own columns; drop the mapping or use format: columns")
        # Checked at load, from the schema alone: a missing column found at the prepare stage would fail the run
        # after it started.
        have = read_columns(self.path, self.split) if self.format != "columns" else None
        if have is not None and (missing := [c for c in FORMATS[self.format].columns if c not in have]):
            raise ValueError(f"{self.path} has no column {missing[0]!r} ({self.format} needs {', '.join(FORMATS[self.format].columns)}); "
                             f"columns: {', '.join(have)}")
        return self

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str) -> str:
        if not Path(path).exists():
            raise ValueError(f"task source not found: {path}")
        return path

    def content_hash(self) -> str:
        """Identity of the data itself, so that editing the file re-runs what depends on it."""
        root = Path(self.path)
        digest = hashlib.sha256()
        for f in sorted([root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]):
            digest.update(str(f.relative_to(root.parent)).encode())
            digest.update(f.read_bytes())
        return digest.hexdigest()[:16]


class PrepareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed_tasks: int = Field(600, ge=1, description="tasks with reference solutions, per domain (base and expert training)")
    prompt_tasks: int = Field(200, ge=1, description="new prompts per domain for the experts to answer")
    eval_tasks: int = Field(100, ge=1, description="held-out tasks per domain")
    sources: dict[str, TaskSource] = Field(default_factory=dict, description="domain -> user data read instead of the built-in generator")


def prepare_domain(domain_name: str, cfg: PrepareConfig, seed: int) -> dict[str, list[dict]]:
    """Three disjoint splits: no prompt of `prompts` or `eval` appears in an earlier split."""
    domain = get_domain(domain_name)
    if (source := cfg.sources.get(domain_name)) is not None:
        domain = SourceDomain(domain, source.path, source.columns, split=source.split, name=domain_name, fmt=source.format)
    sizes = {"seed": cfg.seed_tasks, "prompts": cfg.prompt_tasks, "eval": cfg.eval_tasks}
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for i, split in enumerate(SPLITS):
        # Over-generate so that dropping duplicates still leaves the requested count.
        candidates = domain.make_tasks(sizes[split] * 3, seed=seed * 1000 + i)
        rows = []
        for task in candidates:
            if task["prompt"] in seen:
                continue
            seen.add(task["prompt"])
            rows.append(task)
            if len(rows) == sizes[split]:
                break
        if len(rows) < sizes[split]:
            raise ValueError(f"domain {domain_name!r} produced only {len(rows)} distinct {split} tasks, {sizes[split]} requested")
        splits[split] = rows
    return splits
