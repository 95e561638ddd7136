"""The verify stage's judging: on a pool of threads, a chunk at a time into shards, and a stopped
run goes on from its last chunk; the datasets are those of one plain pass over the generations."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.shards import ShardDir
from domains import get_domain
from domains.verify import verdict_counts, verdict_tables, verify_rows, verify_shards


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def generations(tmp_path_factory) -> tuple[str, list[dict]]:
    """Code generations as the generate stage stores them (a task's fields, its sample number and
    completion): references, wrong answers, syntax errors, and repeats of an accepted completion,
    some of them far from the first (in a later chunk)."""
    tasks = get_domain("code").make_tasks(12, 3)
    wrong = ["def f(:\n", "    return None\n", "    return 0\n"]
    rows = []
    for i, task in enumerate(tasks):
        completions = [task["completion"], wrong[i % 3], task["completion"] if i % 2 else wrong[(i + 1) % 3]]
        rows += [{**task, "sample": k, "completion": c} for k, c in enumerate(completions)]
    rows += [{**tasks[0], "sample": 3, "completion": tasks[0]["completion"]}, {**tasks[1], "sample": 3, "completion": "    return 1\n"}]
    path = tmp_path_factory.mktemp("generations") / "generations.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path), rows


def judged(work: ShardDir) -> tuple[list[dict], list[dict]]:
    return [r for t in verdict_tables(work, ok=True) for r in t.to_pylist()], [r for t in verdict_tables(work, ok=False) for r in t.to_pylist()]


@pytest.fixture(scope="module")
def plain(generations) -> tuple[list[dict], list[dict]]:
    verified, rejected = verify_rows("code", generations[1])
    assert verified and rejected and len(verified) + len(rejected) < len(generations[1])  # every case occurs: repeats were dropped
    return verified, rejected


@pytest.mark.parametrize("chunk_rows,workers", [(1, 1), (5, 3), (64, 4)])
def test_chunks_and_threads_change_nothing(generations, plain, tmp_path, chunk_rows: int, workers: int) -> None:
    work = ShardDir(tmp_path / "work")
    seen: list[tuple[int, int, float]] = []
    verify_shards("code", generations[0], work, chunk_rows=chunk_rows, workers=workers, progress=lambda *a: seen.append(a))
    assert judged(work) == plain
    total = len(generations[1])
    assert len(work.paths()) == -(-total // chunk_rows) and seen[-1][:2] == (total, total)
    judged_rows, verified, reasons = verdict_counts(work)
    assert (judged_rows, verified, sum(reasons.values())) == (total, len(plain[0]), len(plain[1]))
    assert seen[-1][2] == pytest.approx(1 - len(plain[1]) / total)


def test_a_stopped_run_goes_on_from_its_last_chunk(generations, plain, tmp_path) -> None:
    work = ShardDir(tmp_path / "work")

    def stop_after_two(done: int, total: int, rate: float) -> None:
        if done == 10:
            raise Stop

    with pytest.raises(Stop):
        verify_shards("code", generations[0], work, chunk_rows=5, workers=2, progress=stop_after_two)
    assert len(work.paths()) == 2
    reports: list[int] = []
    # Another chunk size after the stop: the shards say how many generations were judged, not which chunking.
    verify_shards("code", generations[0], ShardDir(work.root), chunk_rows=7, workers=2, progress=lambda done, *_: reports.append(done))
    assert reports[0] == 17  # the first ten were not judged again
    # The repeats of task 0's and task 1's accepted completions come after the stop: the shards' accepted rows must drop them.
    assert judged(work) == plain
