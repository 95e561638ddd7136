"""The verify stage's judging of code completions: throughput by number of threads.

    .venv/bin/python -m benchmarks.verify      # ~40 s on 2 cores; writes the "verify" section of docs/benchmarks.md

2048 code generations (512 `domains.code` tasks, seed 0), four of each task: its reference, a wrong
return value, a syntax error and an exception at the first call. Each is judged in a sandboxed
process of its own (`domains.sandbox`). `domains.verify.verify_shards` judges the same file with 1, 2 and 4
threads, one after the other in this process; every run must give the same shards' rows.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data.shards import ShardDir
from domains import get_domain
from domains.verify import verdict_tables, verify_shards

COMMAND = ".venv/bin/python -m benchmarks.verify"
TASKS = 512
THREADS = (1, 2, 4)


def generations(path: Path) -> int:
    tasks = get_domain("code").make_tasks(TASKS, 0)
    wrong = ["    return None\n", "def f(:\n", "    raise ValueError('no')\n"]
    rows = [{**t, "sample": k, "completion": c} for t in tasks for k, c in enumerate([t["completion"], *wrong])]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generations.parquet"
        n = generations(path)
        results, runs = [], []
        for threads in THREADS:
            work = ShardDir(Path(tmp) / f"work-{threads}")
            start = time.perf_counter()
            verify_shards("code", path, work, workers=threads)
            runs.append((threads, time.perf_counter() - start))
            results.append([t.to_pylist() for ok in (True, False) for t in verdict_tables(work, ok)])
        assert all(r == results[0] for r in results), "the threads changed the verdicts"
    one = runs[0][1]
    lines = [
        "## Verify: judging code completions on threads",
        "",
        f"`{COMMAND}`: {n} code completions ({TASKS} tasks x reference, wrong value, syntax error, exception), "
        f"each judged in a sandboxed process; the same file with each thread count, one after the other; {os.cpu_count()} cores.",
        "",
        "| threads | seconds | completions/s | vs 1 thread |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {k} | {s:.1f} | {n / s:.1f} | {one / s:.2f}x |" for k, s in runs]
    lines += ["", "Every thread count gave the same verified and rejected rows."]
    body = "\n".join(lines)
    print(body)
    from benchmarks.record import write_section

    write_section("verify", body)


if __name__ == "__main__":
    main()
