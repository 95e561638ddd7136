"""Generation streamed to Parquet shards: a killed run loses no finished shard, and a re-run does not redo them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from data import tables
from data.lineage import LineageRecord
from data.shards import ShardDir, merge
from data.temporary import temporary
from domains import get_domain
from experts.model import ModelConfig, build_model
from experts.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parent.parent
JOBS = 48
ROWS_PER_SHARD = 4

# Run in a fresh process: python -c CHILD <checkpoint dir> <work dir>
CHILD = """
import sys
import pyarrow as pa
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from data.shards import ShardDir
from domains import get_domain
from generation.streaming import generate_shards
from generation.types import EngineConfig, Request, SamplingConfig

torch.set_num_threads(1)
ckpt, work = sys.argv[1], ShardDir(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(ckpt)
tok = PreTrainedTokenizerFast.from_pretrained(ckpt)
dom = get_domain("agents")
tasks = dom.make_tasks(%(prompts)d, 2)
jobs = (({"task_id": t["task_id"], "sample": k}, Request(t["prompt"], dom.environment(t))) for t in tasks for k in range(2))

def to_table(batch):
    rows = [{**job, "token_ids": c.ids, "finish_reason": c.finish_reason} for job, c in batch]
    return pa.Table.from_pylist(rows), {"generated_tokens": sum(c.model_tokens for _, c in batch)}

sampling = SamplingConfig(temperature=1.0, max_new_tokens=40)
generate_shards(model, tok, jobs, sampling, EngineConfig(batch_size=4), work, to_table, ("task_id", "sample"), %(rows)d, seed=5)
""" % {"prompts": JOBS // 2, "rows": ROWS_PER_SHARD}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tasks = get_domain("agents").make_tasks(100, 0)
    tok = train_tokenizer([t["prompt"] + t["completion"] for t in tasks], 300)
    model = build_model(ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2, index_topk=8, max_position_embeddings=256), tok, seed=0)
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_child(checkpoint: Path, work: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(checkpoint), str(work)], env=env, cwd=REPO)


def snapshot(work: ShardDir) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in work.paths()}


def rows(path: Path) -> list[tuple]:
    return sorted((r["task_id"], r["sample"], tuple(r["token_ids"])) for r in tables.read_rows(path))


@pytest.mark.slow  # three child processes: about 30 s
def test_killed_generation_resumes_without_redoing_shards(checkpoint, tmp_path) -> None:
    work = ShardDir(tmp_path / "work")
    child = run_child(checkpoint, work.root)
    deadline = time.monotonic() + 120
    while len(work.paths()) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = snapshot(work)
    assert 3 <= len(before) < JOBS // ROWS_PER_SHARD, "the kill must land mid-run"

    assert run_child(checkpoint, work.root).wait() == 0
    after = snapshot(work)
    assert all(after[name] == stat for name, stat in before.items()), "a finished shard was rewritten"
    assert len(after) == JOBS // ROWS_PER_SHARD  # no job generated twice: every shard is full

    record = LineageRecord(id="g", kind="dataset", stage="generate", domain="agents", name="generations", uri="g.parquet", parents=[], params={}, code_version={})
    resumed = merge([work], tmp_path / "resumed.parquet", record)
    assert resumed.rows == JOBS and not work.root.exists()
    assert tables.read_record(tmp_path / "resumed.parquet").rows == JOBS

    # The same rows as a run that was never interrupted: seeds follow the job, not the run.
    straight = ShardDir(tmp_path / "straight")
    assert run_child(checkpoint, straight.root).wait() == 0
    merge([straight], tmp_path / "straight.parquet", record)
    got = rows(tmp_path / "resumed.parquet")
    assert len({r[:2] for r in got}) == JOBS and got == rows(tmp_path / "straight.parquet")


def test_shards_are_atomic_and_keyed(tmp_path) -> None:
    work = ShardDir(tmp_path / "work")
    (tmp_path / "work").mkdir()
    temporary(tmp_path / "work" / "shard-00000.parquet", 1).write_bytes(b"half a shard")  # a kill mid-write
    work.write(pa.Table.from_pylist([{"task_id": "a", "sample": 0}, {"task_id": "a", "sample": 1}]), {"generated_tokens": 3})
    work.write(pa.Table.from_pylist([{"task_id": "b", "sample": 0}]), {"generated_tokens": 4})
    assert [p.name for p in work.paths()] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert work.keys(["task_id", "sample"]) == {("a", 0), ("a", 1), ("b", 0)}
    assert [m["generated_tokens"] for m in work.metrics()] == [3, 4]


def test_parts_sample_what_one_part_does(checkpoint, tmp_path) -> None:
    """Prompt i goes to part i mod parts, and each job keeps the seed of its place among all jobs: any
    split samples the same completions as one part; a part with no prompt writes nothing, and the
    merge reads the parts in order."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from generation.logprobs import TeacherLogprobsConfig
    from generation.streaming import GenerateConfig, sample_domain
    from generation.types import EngineConfig, SamplingConfig

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tok = PreTrainedTokenizerFast.from_pretrained(checkpoint)
    dom = get_domain("agents")
    tasks = dom.make_tasks(4, 3)
    record = LineageRecord(id="g", kind="dataset", stage="generate", domain="agents", name="generations", uri="g.parquet", parents=[], params={}, code_version={})

    def split(parts: int) -> list[dict]:
        cfg = GenerateConfig(samples_per_prompt=2, parts=parts, shard_rows=3, sampling=SamplingConfig(temperature=1.0, max_new_tokens=20),
                             engine=EngineConfig(batch_size=3))
        dirs = [ShardDir(tmp_path / f"{parts}" / f"part-{p}") for p in range(parts)]
        for p, work in enumerate(dirs):
            sample_domain(model, tok, dom, tasks, len(tasks), cfg, TeacherLogprobsConfig(topk=0), work, seed=7, part=p)
        written = [tables.read_rows(path) for work in dirs for path in work.paths()]
        merge(dirs, tmp_path / f"{parts}.parquet", record)
        rows = tables.read_rows(tmp_path / f"{parts}.parquet")
        assert rows == [r for shard in written for r in shard]  # part after part, each part's shards in order
        return rows

    one = split(1)
    assert len(one) == 8
    for parts in (3, 5):  # 5: a part without a prompt
        rows = split(parts)
        first = range(0, len(tasks), parts)  # part 0's prompts
        assert {r["task_id"] for r in rows[: 2 * len(first)]} == {tasks[i]["task_id"] for i in first}
        key = lambda r: (r["task_id"], r["sample"])  # noqa: E731
        assert sorted(((key(r), r["token_ids"]) for r in rows)) == sorted(((key(r), r["token_ids"]) for r in one))
        assert not (tmp_path / f"{parts}").exists() or not any((tmp_path / f"{parts}").iterdir())
