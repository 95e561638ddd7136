from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow

from data import tables
from data.shards import ShardDir
from experts.domains import get_domain
from experts.generation import Completion, Request
from experts.logprobs import generation_columns
from experts.streaming import generate_shards
from flows.artifacts import Progress, load_model, record_for, require, run_stage
from flows.config import PipelineConfig, default_config

# Completions per shard: what an interrupted run can lose, and what the teacher log-prob pass holds at once.
ROWS_PER_SHARD = 128


@flow(name="generate", log_prints=True)
def generate(domain: str, config: PipelineConfig = default_config()) -> str:
    """The domain's expert answers new prompts, several samples each, with sparse attention and its tools.

    Completions stream into shards under <run_root>/.work/<artifact id>/; a re-run after an
    interruption generates only the jobs not yet in a shard, then the shards become the dataset.
    """

    def compute(catalog, p, items):
        cfg = config.generate_config(domain)
        dom = get_domain(domain)
        # The expert after its indexer warm-up (the lineage parent): sparse attention needs a trained indexer.
        model, tokenizer = load_model(catalog, p[("dsa_warmup", domain, "model")])
        prompts = catalog.resolve(require(catalog, p[("prepare", domain, "prompts")]))
        item = items["generations"]
        work = ShardDir(catalog.root / ".work" / item.id)
        jobs = (({**t, "sample": k}, Request(t["prompt"], dom.environment(t))) for t in tables.iter_rows(prompts) for k in range(cfg.samples_per_prompt))

        def to_table(batch: list[tuple[dict, Completion]]) -> tuple[pa.Table, dict[str, Any]]:
            rows = [
                {**job, "completion": c.text, "finish_reason": c.finish_reason, "model_tokens": c.model_tokens, "tool_calls": c.tool_calls}
                for job, c in batch
            ]
            # The expert's exact token ids and, for logit-level KD, its top-k log-probs per generated token.
            columns, metrics = generation_columns(model, tokenizer, [(c.ids, c.prompt_len) for _, c in batch], config.teacher_logprobs)
            table = pa.Table.from_pylist(rows)
            for name, column in columns.items():
                table = table.append_column(name, column)
            return table, {**metrics, "generated_tokens": sum(c.model_tokens for _, c in batch)}

        total = pq.read_metadata(prompts).num_rows * cfg.samples_per_prompt
        generate_shards(model, tokenizer, jobs, cfg, work, to_table, ("task_id", "sample"), ROWS_PER_SHARD, total, Progress(f"generate[{domain}]"))
        record = record_for(item, index_topk=model.config.index_topk, **_merged_metrics(work.metrics()))
        record = work.merge(catalog.root / item.uri, record)
        catalog.add(record)
        return [record]

    return run_stage(config, "generate", domain, compute)[0].id


def _merged_metrics(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Token counts add up; bytes per token is averaged over tokens."""
    out: dict[str, Any] = {"generated_tokens": sum(m["generated_tokens"] for m in shards)}
    if shards and "logprob_tokens" in shards[0]:
        tokens = sum(m["logprob_tokens"] for m in shards)
        out["logprob_topk"] = shards[0]["logprob_topk"]
        out["logprob_tokens"] = tokens
        out["logprob_bytes_per_token"] = sum(m["logprob_bytes_per_token"] * m["logprob_tokens"] for m in shards) / max(1, tokens)
    return out
