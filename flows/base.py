from __future__ import annotations

from prefect import flow

from experts.model import build_model
from experts.sft import train_sft
from experts.tokenizer import train_tokenizer
from flows.artifacts import Progress, load_rows, run_stage, save_model
from flows.config import PipelineConfig, default_config


@flow(name="base", log_prints=True)
def base(config: PipelineConfig = default_config()) -> str:
    """Train the tokenizer and pretrain the base model on the mixture of all domains' seed data."""

    def compute(catalog, p, items):
        rows = [r for d in config.domains for r in load_rows(catalog, p[("prepare", d, "seed")])]
        tokenizer = train_tokenizer((r["prompt"] + r["completion"] for r in rows), config.model.vocab_size)
        model = build_model(config.model, tokenizer, seed=config.seed)
        losses = train_sft(model, tokenizer, rows, config.base, Progress("base: pretraining"))
        return [save_model(catalog, items["model"], model, tokenizer, losses)]

    return run_stage(config, "base", None, compute)[0].id
