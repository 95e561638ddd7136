from __future__ import annotations

from prefect import flow

from data.catalog import Catalog
from data.errors import ArtifactError
from distill.mixture import mix_verified
from experts.sft import train_sft
from flows.artifacts import Progress, existing, load_model, load_rows, publish, save_model, save_rows
from flows.config import PipelineConfig, default_config
from flows.plan import outputs, plan


@flow(name="distill", log_prints=True)
def distill(config: PipelineConfig = default_config()) -> str:
    """Train the generalist student from the base on every expert's verified samples."""
    catalog, p = Catalog(config.run_root), plan(config)
    items = {i.name: i for i in outputs(p, "distill")}
    records = existing(catalog, list(items.values()))
    if records is None:
        verified = {d: load_rows(catalog, p[("verify", d, "verified")]) for d in config.domains}
        mixture = mix_verified(verified, config.seed)
        if not mixture:
            raise ArtifactError(f"no expert produced a verified sample in {config.run_root}: train the experts longer or sample more")
        per_domain = {f"rows_{d}": len(v) for d, v in verified.items()}
        mix_record = save_rows(catalog, items["mixture"], mixture, **per_domain)
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        losses = train_sft(model, tokenizer, mixture, config.distill, Progress("distill: student"))
        records = [mix_record, save_model(catalog, items["model"], model, tokenizer, final_loss=losses[-1], loss_curve=losses[:: max(1, len(losses) // 50)])]
        publish("distill", None, records, skipped=False)
    else:
        publish("distill", None, records, skipped=True)
    return records[-1].id
