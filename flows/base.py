from __future__ import annotations

from prefect import flow

from data.catalog import Catalog
from experts.model import build_model
from experts.sft import train_sft
from experts.tokenizer import train_tokenizer
from flows.artifacts import Progress, existing, load_rows, publish, save_model
from flows.config import PipelineConfig, default_config
from flows.plan import outputs, plan


@flow(name="base", log_prints=True)
def base(config: PipelineConfig = default_config()) -> str:
    """Train the tokenizer and pretrain the base model on the mixture of all domains' seed data."""
    catalog, p = Catalog(config.run_root), plan(config)
    (item,) = outputs(p, "base")
    records = existing(catalog, [item])
    if records is None:
        rows = [r for d in config.domains for r in load_rows(catalog, p[("prepare", d, "seed")])]
        tokenizer = train_tokenizer((r["prompt"] + r["completion"] for r in rows), config.model.vocab_size)
        model = build_model(config.model, tokenizer, seed=config.seed)
        losses = train_sft(model, tokenizer, rows, config.base, Progress("base: pretraining"))
        records = [save_model(catalog, item, model, tokenizer, final_loss=losses[-1], loss_curve=losses[:: max(1, len(losses) // 50)])]
        publish("base", None, records, skipped=False)
    else:
        publish("base", None, records, skipped=True)
    return records[0].id
