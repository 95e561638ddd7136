"""The prepare stage: per domain, seed tasks (with reference solutions), new prompts, held-out eval."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from domains import get_domain
from domains.formats import FORMATS
from domains.corpus import COLUMNS as CORPUS_COLUMNS
from domains.sources import SourceDomain, read_columns

SPLITS = ("seed", "prompts", "eval")


class TaskSource(BaseModel):
    """A user's dataset that replaces a domain's task generator (its verifier and tools stay)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Parquet file, JSONL file, or a local Hugging Face datasets directory")
    format: Literal["columns", "gsm8k", "math", "mbpp", "qa", "agents"] = Field(
        "columns", description="a published dataset shape (domains/formats.py), or columns: the mapping in `columns`"
    )
    columns: dict[str, Any] | None = Field(None, description="format columns only: task field -> column or template, see domains/sources.py")
    split: str | None = Field(None, description="split of a DatasetDict directory")
    corpus: str | None = Field(None, description="format qa only: the documents searched (id, title, text), indexed once by the index stage")
    top_k: int = Field(1, ge=1, le=20, description="format qa only: documents the search tool returns per query")

    @model_validator(mode="after")
    def _mapping(self) -> TaskSource:
        if self.format == "columns" and self.columns is None:
            raise ValueError("columns: the column mapping is required with format: columns (or name a format: gsm8k, math, mbpp)")
        if self.format != "columns" and self.columns is not None:
            raise ValueError(f"columns: format {self.format} reads its own columns; drop the mapping or use format: columns")
        if (self.format == "qa") != (self.corpus is not None):
            raise ValueError("corpus: format qa needs a corpus to search" if self.corpus is None else f"corpus: only format qa searches a corpus, not {self.format}")
        if self.corpus is not None:
            if not Path(self.corpus).exists():
                raise ValueError(f"corpus: not found: {self.corpus}")
            have = read_columns(self.corpus)
            if have is not None and (missing := [c for c in CORPUS_COLUMNS if c not in have]):
                raise ValueError(f"corpus: {self.corpus} has no column {missing[0]!r} (a corpus needs {', '.join(CORPUS_COLUMNS)}); columns: {', '.join(have)}")
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
        return content_hash(self.path)


def content_hash(source: str | Path) -> str:
    """A hash of a file's bytes, or of every file under a directory with its relative path."""
    root = Path(source)
    digest = hashlib.sha256()
    for f in sorted([root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]):
        digest.update(str(f.relative_to(root.parent)).encode())
        with f.open("rb") as stream:  # a corpus can be gigabytes: hash it in blocks
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


class PrepareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed_tasks: int = Field(600, ge=1, description="tasks with reference solutions, per domain (base and expert training)")
    prompt_tasks: int = Field(200, ge=1, description="new prompts per domain for the experts to answer")
    eval_tasks: int = Field(100, ge=1, description="held-out tasks per domain")
    sources: dict[str, TaskSource] = Field(default_factory=dict, description="domain -> user data read instead of the built-in generator")


def prepare_domain(domain_name: str, cfg: PrepareConfig, seed: int, index: Path | None = None) -> dict[str, list[dict]]:
    """Three disjoint splits: no prompt of `prompts` or `eval` appears in an earlier split.

    `index`: the corpus index a `qa` source searches (the index stage's output)."""
    domain = get_domain(domain_name)
    if (source := cfg.sources.get(domain_name)) is not None:
        if source.format == "qa":
            if index is None:
                raise ValueError(f"prepare.sources.{domain_name}: format qa needs its corpus index: run the index stage first")
            domain = domain.with_corpus(index, source.top_k)  # type: ignore[attr-defined]  # checked at load: qa is search's
        domain = SourceDomain(domain, source.path, source.columns, split=source.split, name=domain_name, fmt=source.format)
    sizes = {"seed": cfg.seed_tasks, "prompts": cfg.prompt_tasks, "eval": cfg.eval_tasks}
    if isinstance(domain, SourceDomain):
        return _split_pool(domain, sizes, seed)
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


def _split_pool(domain: SourceDomain, sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    """A file's tasks are a fixed pool: one seeded shuffle of its distinct prompts, cut into the
    splits in turn, so that every row can be used (three independent samples of a small file would
    leave too few unseen rows for the later splits)."""
    pool, seen = [], set()
    for task in domain.make_tasks(len(domain.tasks), seed=seed * 1000):
        if task["prompt"] not in seen:
            seen.add(task["prompt"])
            pool.append(task)
    if len(pool) < sum(sizes.values()):
        wanted = " + ".join(f"{n} {split}" for split, n in sizes.items())
        raise ValueError(f"{domain.source} holds {len(pool)} distinct {domain.name} tasks, fewer than the {wanted} tasks prepare asks for")
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = pool[start : start + sizes[split]]
        start += sizes[split]
    return splits
