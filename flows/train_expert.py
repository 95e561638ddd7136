from __future__ import annotations

from prefect import flow

from data.catalog import Catalog
from experts.sft import train_sft
from flows.artifacts import Progress, existing, load_model, load_rows, publish, save_model
from flows.config import PipelineConfig, default_config
from flows.plan import outputs, plan


@flow(name="train_expert", log_prints=True)
def train_expert(domain: str, config: PipelineConfig = default_config()) -> str:
    """Fine-tune the base model on one domain's seed data: that domain's specialist."""
    catalog, p = Catalog(config.run_root), plan(config)
    (item,) = outputs(p, "train_expert", domain)
    records = existing(catalog, [item])
    if records is None:
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        rows = load_rows(catalog, p[("prepare", domain, "seed")])
        losses = train_sft(model, tokenizer, rows, config.expert_config(domain), Progress(f"train_expert[{domain}]"))
        records = [save_model(catalog, item, model, tokenizer, final_loss=losses[-1], loss_curve=losses[:: max(1, len(losses) // 50)])]
        publish("train_expert", domain, records, skipped=False)
    else:
        publish("train_expert", domain, records, skipped=True)
    return records[0].id
