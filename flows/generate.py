from __future__ import annotations

import pyarrow.parquet as pq
from prefect import flow

from data import tables
from data.shards import ShardDir
from domains import get_domain
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve
from generation.streaming import sample_domain


@flow(name="generate", log_prints=True)
def generate(domain: str, config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """The domain's expert answers new prompts, several samples each, with sparse attention and its tools.

    Completions stream into shards under <run_root>/.work/<artifact id>/; a re-run after an
    interruption generates only the jobs not yet in a shard, then the shards become the dataset.
    """
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        # The expert after its indexer warm-up: sparse attention needs a trained indexer.
        model, tokenizer = run.model("expert")
        prompts = run.path("prompts")
        item = run.outputs["generations"]
        work = ShardDir(run.catalog.root / ".work" / item.id)
        metrics = sample_domain(
            model, tokenizer, get_domain(domain), tables.iter_rows(prompts), pq.read_metadata(prompts).num_rows,
            config.generate_config(domain), config.teacher_logprobs, work, seed=run.seed, progress=run.progress(),
        )
        record = work.merge(run.catalog.root / item.uri, run.record_of("generations", index_topk=model.config.index_topk, **metrics))
        run.catalog.add(record)
        return [record]

    return run_stage(config, "generate", domain, compute)[0].id
