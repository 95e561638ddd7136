from __future__ import annotations

import os
import socket
from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from data import tables
from data.checkpoints import load_checkpoint
from data.shards import ShardDir, merge
from domains import get_domain
from domains.corpus import indexes_in
from flows.artifacts import Progress, StageRun, run_stage
from flows.config import PipelineConfig, resolve
from flows.execution import set_task_threads, submit, task_runner
from generation.streaming import merged_metrics, sample_domain


def part_dir(work: Path, part: int, parts: int) -> Path:
    return work / f"part-{part:03d}-of-{parts:03d}"


def run_part(domain: str, config: PipelineConfig, root: str, expert: str, prompts: str, work: str, seed: int, label: str, part: int) -> int:
    """One part of a generate stage: the prompts i with i mod parts == part, into the part's own shards.
    Returns the number of keys the expert's indexer selects (for the dataset's lineage)."""
    set_task_threads(config.execution, "generate")
    cfg = config.generate_config(domain)
    get_run_logger().info("%s part %d/%d runs in pid %d on %s", label, part + 1, cfg.parts, os.getpid(), socket.gethostname())
    model, tokenizer = load_checkpoint(expert)
    with indexes_in(root):  # a Ray task starts in a context of its own
        sample_domain(
            model, tokenizer, get_domain(domain), tables.iter_rows(prompts), pq.read_metadata(prompts).num_rows, cfg, config.teacher_logprobs,
            ShardDir(part_dir(Path(work), part, cfg.parts)), seed=seed, part=part, progress=Progress(f"{label} part {part + 1}/{cfg.parts}"),
        )
    return model.config.index_topk


# A task over a module-level function, which Ray's cloudpickle sends by reference (flows/pipeline.py says why).
generate_part = task(run_part, name="generate_part", cache_policy=NONE)


@flow(name="generate", log_prints=True)
def generate(domain: str, config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """The domain's expert answers new prompts, several samples each, with sparse attention and its tools.

    The prompts are split into `generate.parts` parts, each a task (a Ray task on any worker under
    `execution.runner: ray`) that streams its completions into shards in the stage's work directory,
    <run_root>/.work/<artifact id>/part-*/; a re-run after an interruption, or Ray's re-run of a part
    whose worker died, generates only the jobs not yet in a shard. Then the parts' shards, part after
    part, become the dataset.
    """
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        item = run.outputs["generations"]
        # The expert after its indexer warm-up: sparse attention needs a trained indexer.
        expert, prompts = run.path("expert"), run.path("prompts")
        parts = config.generate_config(domain).parts
        # On threads the parts run one after another: each holds a copy of the expert.
        with task_runner(config.execution, threads=1) as runner:
            futures = [
                submit(runner, config.execution, "generate", generate_part, domain=domain, config=config, root=str(run.catalog.root), expert=str(expert),
                       prompts=str(prompts), work=str(run.work), seed=run.seed, label=run.label, part=part)
                for part in range(parts)
            ]
            index_topk = [future.result() for future in futures][0]
        shards = [ShardDir(part_dir(run.work, part, parts)) for part in range(parts)]
        metrics = merged_metrics([m for s in shards for m in s.metrics()])
        record = merge(shards, run.catalog.root / item.uri, run.record_of("generations", index_topk=index_topk, **metrics))
        run.catalog.add(record)  # run_stage then removes the work directory
        return [record]

    return run_stage(config, "generate", domain, compute)[0].id
