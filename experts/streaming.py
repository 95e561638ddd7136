"""Generation streamed into Parquet shards: memory is bounded by the batch, and a re-run resumes.

Jobs are (job, request) pairs, produced lazily: `job` is a dict of the row fields the job's
completion is stored with, and its `key_columns` (e.g. task id and sample number) identify it, which
is how a re-run finds the jobs already in a shard. A job's sampling seed comes from its position among all jobs, so a resumed run
samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from data.shards import ShardDir
from experts.engine.sequence import request_seed
from experts.generation import Completion, GenerateConfig, ProgressFn, Request, generate_stream

# Finished (job, completion) pairs -> the shard's rows (with the key columns) and its metrics.
ToTable = Callable[[list[tuple[dict, Completion]]], tuple[pa.Table, dict[str, Any]]]


def generate_shards(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    jobs: Iterable[tuple[dict, Request]],
    cfg: GenerateConfig,
    work: ShardDir,
    to_table: ToTable,
    key_columns: Sequence[str],
    rows_per_shard: int,
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
                yield Request(request.prompt, request.env, request_seed(cfg.seed, position) if request.seed is None else request.seed)

    buffer: list[tuple[dict, Completion]] = []
    written = 0
    for index, completion in generate_stream(model, tokenizer, todo(), cfg):
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
