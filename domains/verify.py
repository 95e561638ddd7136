"""Rejection sampling: keep the generations the domain's verifier accepts, the rest with the reason.

A generate stage can hold many thousands of completions, and judging a code completion costs a
sandboxed process: `verify_shards` judges them on a pool of threads (the sandbox processes run side
by side; the other verifiers are quick), a chunk at a time into shards, so that a killed stage goes
on from its last chunk. Its output is the same, row for row, whatever the chunk size, the pool's
size or the interruptions.
"""

from __future__ import annotations

import contextvars
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data import tables
from data.shards import ShardDir
from domains import get_domain
from domains.base import OK

# (generations judged, of total, their accept rate so far)
VerifyProgress = Callable[[int, int, float], None]


def verify_rows(
    domain_name: str, rows: Sequence[dict], seen: set[tuple[str, str]] | None = None, pool: Executor | None = None
) -> tuple[list[dict], list[dict]]:
    """Split generations into (verified, rejected), in their order; a duplicate of an accepted
    completion (in `rows` or already in `seen`, which this adds to) is dropped."""
    domain = get_domain(domain_name)
    seen = set() if seen is None else seen
    if pool is None:
        verdicts = [domain.verify(row, row["completion"]) for row in rows]
    else:
        # Each call in a copy of this context: a search task finds its corpus index through a context variable.
        context = contextvars.copy_context()
        verdicts = list(pool.map(lambda row: context.copy().run(domain.verify, row, row["completion"]), rows))
    verified, rejected = [], []
    for row, verdict in zip(rows, verdicts):
        out = {**row, "score": verdict.score, "reason": verdict.reason}
        if not verdict.ok:
            rejected.append(out)
        elif (row["task_id"], row["completion"]) not in seen:
            seen.add((row["task_id"], row["completion"]))
            verified.append(out)
    return verified, rejected


def verdict_schema(generations: str | Path) -> pa.Schema:
    """The generations' schema (its narrow token and log-prob types included) plus the verdict."""
    schema = pq.read_schema(generations).remove_metadata()
    return schema.append(pa.field("score", pa.float64())).append(pa.field("reason", pa.string()))


def verify_shards(
    domain_name: str, generations: str | Path, work: ShardDir, *, chunk_rows: int = 256, workers: int = 1, progress: VerifyProgress | None = None
) -> None:
    """Judge every generation not yet in `work`'s shards, a shard per `chunk_rows` generations
    (its verified and rejected rows, duplicates dropped), on `workers` threads."""
    schema = verdict_schema(generations)
    total = pq.read_metadata(generations).num_rows
    shards = work.metrics()
    done = sum(m["generations"] for m in shards)
    rejected_so_far = sum(sum(m["reasons"].values()) for m in shards)
    seen = {(t, c) for t, c, r in work.keys(("task_id", "completion", "reason")) if r == OK.reason}
    rows = itertools.islice(tables.iter_rows(generations), done, None)
    with ThreadPoolExecutor(workers) as pool:
        while chunk := list(itertools.islice(rows, chunk_rows)):
            verified, rejected = verify_rows(domain_name, chunk, seen, pool)
            reasons = Counter(r["reason"] for r in rejected)
            work.write(pa.Table.from_pylist(verified + rejected, schema=schema),
                       {"generations": len(chunk), "verified": len(verified), "reasons": dict(reasons)})
            done += len(chunk)
            rejected_so_far += len(rejected)
            if progress is not None:
                progress(done, total, 1 - rejected_so_far / done)


def verdict_tables(work: ShardDir, ok: bool) -> Iterator[pa.Table]:
    """The verified (`ok`) or the rejected rows of `work`'s shards, a shard at a time, in order."""
    for path in work.paths():
        table = tables.read_table(path)
        accepted = pc.equal(table["reason"], OK.reason)
        yield table.filter(accepted if ok else pc.invert(accepted))


def verdict_counts(work: ShardDir) -> tuple[int, int, Counter[str]]:
    """(generations judged, verified rows, rejected rows by reason) in `work`'s shards."""
    shards = work.metrics()
    reasons: Counter[str] = Counter()
    for m in shards:
        reasons.update(m["reasons"])
    return sum(m["generations"] for m in shards), sum(m["verified"] for m in shards), reasons
