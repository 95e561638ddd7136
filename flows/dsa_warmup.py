from __future__ import annotations

from prefect import flow

from experts.warmup import warmup_indexer
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="dsa_warmup", log_prints=True)
def dsa_warmup(domain: str, config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Train the expert's DSA indexer toward its dense attention, main model frozen (V3.2's dense warm-up)."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        model, tokenizer = run.model("expert")
        metrics = warmup_indexer(model, tokenizer, run.rows("seed"), config.dsa_warmup, seed=run.seed, progress=run.progress())
        return [run.save_model("model", model, tokenizer, {"loss": metrics.pop("losses")}, **metrics)]

    return run_stage(config, "dsa_warmup", domain, compute)[0].id
