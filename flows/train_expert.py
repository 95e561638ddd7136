from __future__ import annotations

from prefect import flow

from experts.sft import train_sft
from flows.artifacts import Progress, load_model, load_rows, run_stage, save_model
from flows.config import PipelineConfig, default_config


@flow(name="train_expert", log_prints=True)
def train_expert(domain: str, config: PipelineConfig = default_config()) -> str:
    """Fine-tune the base model on one domain's seed data: that domain's specialist."""

    def compute(catalog, p, items):
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        rows = load_rows(catalog, p[("prepare", domain, "seed")])
        losses = train_sft(model, tokenizer, rows, config.expert_config(domain), Progress(f"train_expert[{domain}]"))
        return [save_model(catalog, items["model"], model, tokenizer, losses)]

    return run_stage(config, "train_expert", domain, compute)[0].id
