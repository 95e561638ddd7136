"""Generation streamed into Parquet shards: memory is bounded by the batch, and a re-run resumes.

Jobs are (job, request) pairs, produced lazily: `job` is a dict of the row fields the job's
completion is stored with, and its `key_columns` (e.g. task id and sample number) identify it, which
is how a re-run finds the jobs already in a shard. A job's sampling seed comes from its position
among all jobs, so a resumed run samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from data.shards import ShardDir
from domains.base import Domain
from generation.backends import generate_stream
from generation.logprobs import TeacherLogprobsConfig, generation_columns
from generation.types import Completion, EngineConfig, ProgressFn, Request, SamplingConfig, request_seed


class GenerateConfig(BaseModel):
    """The generate stage: how many completions of each prompt, drawn how, by which engine."""

    model_config = ConfigDict(extra="forbid")

    samples_per_prompt: int = Field(4, ge=1, description="completions sampled per prompt (rejection sampling keeps the verified ones)")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.8, top_p=0.95))
    engine: EngineConfig = Field(default_factory=EngineConfig)
    shard_rows: int = Field(128, ge=1, description="completions per shard: what an interrupted run can lose, and what one teacher log-prob pass holds")
    parts: int = Field(
        1, ge=1, description="tasks the stage splits its prompts into (prompt i goes to part i mod parts), each with its own shards, "
        "run side by side on Ray workers (one after another on threads); the dataset is the parts one after another, so the "
        "count sets its row order and is part of its identity")


# Finished (job, completion) pairs -> the shard's rows (with the key columns) and its metrics.
ToTable = Callable[[list[tuple[dict, Completion]]], tuple[pa.Table, dict[str, Any]]]


def generate_shards(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    jobs: Iterable[tuple[dict, Request]],
    sampling: SamplingConfig,
    engine: EngineConfig,
    work: ShardDir,
    to_table: ToTable,
    key_columns: Sequence[str],
    rows_per_shard: int,
    *,
    seed: int,
    total: int | None = None,
    progress: ProgressFn | None = None,
) -> int:
    """Generate every job not yet in `work`'s shards, writing a shard per `rows_per_shard` completions; returns rows written now."""
    done = work.keys(key_columns)
    in_flight: dict[int, dict] = {}  # request index in this run -> job, for unfinished jobs only
    issued = itertools.count()

    def todo() -> Iterator[Request]:
        for position, (job, request) in enumerate(jobs):
            if tuple(job[c] for c in key_columns) not in done:
                in_flight[next(issued)] = job
                yield Request(request.prompt, request.env, request_seed(seed, position) if request.seed is None else request.seed)

    buffer: list[tuple[dict, Completion]] = []
    written = 0
    for index, completion in generate_stream(model, tokenizer, todo(), sampling, engine, seed=seed):
        buffer.append((in_flight.pop(index), completion))
        if len(buffer) == rows_per_shard:
            work.write(*to_table(buffer))
            written += len(buffer)
            buffer.clear()
        if progress is not None and total is not None:
            progress(len(done) + written + len(buffer), total)
    if buffer:
        work.write(*to_table(buffer))
        written += len(buffer)
    return written


def sample_domain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    domain: Domain,
    tasks: Iterable[dict],
    num_tasks: int,
    cfg: GenerateConfig,
    teacher: TeacherLogprobsConfig,
    work: ShardDir,
    *,
    seed: int,
    part: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """One part of the generate stage's work: `cfg.samples_per_prompt` completions of every task of
    part `part` (of `cfg.parts`), with the domain's tools, into `work`'s shards.

    Each row is the task, its sample number, the completion and, for distillation, the expert's exact
    token ids and (with `teacher.topk`) its top-k log-probs per generated token. A job samples with
    the seed of its position among every part's jobs, so the parts together sample what one would.
    Returns the metrics of every shard of the part (this run's and earlier ones') merged.
    """
    n = cfg.samples_per_prompt
    mine = ((i, t) for i, t in enumerate(tasks) if i % cfg.parts == part)
    jobs = (({**t, "sample": k}, Request(t["prompt"], domain.environment(t), request_seed(seed, i * n + k))) for i, t in mine for k in range(n))

    def to_table(batch: list[tuple[dict, Completion]]) -> tuple[pa.Table, dict[str, Any]]:
        rows = [
            {**job, "completion": c.text, "finish_reason": c.finish_reason, "model_tokens": c.model_tokens, "tool_calls": c.tool_calls}
            for job, c in batch
        ]
        columns, metrics = generation_columns(model, tokenizer, [(c.ids, c.prompt_len) for _, c in batch], teacher)
        table = pa.Table.from_pylist(rows)
        for name, column in columns.items():
            table = table.append_column(name, column)
        return table, {**metrics, "generated_tokens": sum(c.model_tokens for _, c in batch)}

    total = len(range(part, num_tasks, cfg.parts)) * n
    generate_shards(
        model, tokenizer, jobs, cfg.sampling, cfg.engine, work, to_table, ("task_id", "sample"), cfg.shard_rows, seed=seed, total=total, progress=progress
    )
    return merged_metrics(work.metrics())


def merged_metrics(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Token counts add up; bytes per token is averaged over tokens."""
    out: dict[str, Any] = {"generated_tokens": sum(m["generated_tokens"] for m in shards)}
    if shards and "logprob_tokens" in shards[0]:
        tokens = sum(m["logprob_tokens"] for m in shards)
        out["logprob_topk"] = shards[0]["logprob_topk"]
        out["logprob_tokens"] = tokens
        out["logprob_bytes_per_token"] = sum(m["logprob_bytes_per_token"] * m["logprob_tokens"] for m in shards) / max(1, tokens)
    return out
