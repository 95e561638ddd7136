from __future__ import annotations

from prefect import flow

from flows.artifacts import Progress, load_model, load_rows, run_stage, save_model
from flows.config import PipelineConfig, default_config
from kernels.warmup import warmup_indexer


@flow(name="dsa_warmup", log_prints=True)
def dsa_warmup(domain: str, config: PipelineConfig = default_config()) -> str:
    """Train the expert's DSA indexer toward its dense attention, main model frozen (V3.2's dense warm-up)."""

    def compute(catalog, p, items):
        model, tokenizer = load_model(catalog, p[("train_expert", domain, "model")])
        rows = load_rows(catalog, p[("prepare", domain, "seed")])
        metrics = warmup_indexer(model, tokenizer, rows, config.dsa_warmup, Progress(f"dsa_warmup[{domain}]"))
        losses = metrics.pop("losses")
        return [save_model(catalog, items["model"], model, tokenizer, losses, **metrics)]

    return run_stage(config, "dsa_warmup", domain, compute)[0].id
