from __future__ import annotations

from prefect import flow

from data.catalog import Catalog
from experts.prepare import prepare_domain
from flows.artifacts import existing, publish, save_rows
from flows.config import PipelineConfig, default_config
from flows.plan import outputs, plan


@flow(name="prepare", log_prints=True)
def prepare(config: PipelineConfig = default_config(), domain: str | None = None) -> list[str]:
    """Write each domain's seed, prompts and eval datasets."""
    catalog, p = Catalog(config.run_root), plan(config)
    ids = []
    for d in [domain] if domain else config.domains:
        items = outputs(p, "prepare", d)
        records = existing(catalog, items)
        if records is None:
            splits = prepare_domain(d, config.prepare, config.seed)
            records = [save_rows(catalog, item, splits[item.name], generator=f"experts.domains.{d}") for item in items]
            publish("prepare", d, records, skipped=False)
        else:
            publish("prepare", d, records, skipped=True)
        ids += [r.id for r in records]
    return ids
