from __future__ import annotations

from prefect import flow

from experts.prepare import prepare_domain
from flows.artifacts import run_stage, save_rows
from flows.config import PipelineConfig, default_config


@flow(name="prepare", log_prints=True)
def prepare(config: PipelineConfig = default_config(), domain: str | None = None) -> list[str]:
    """Write each domain's seed, prompts and eval datasets."""
    ids = []
    for d in [domain] if domain else config.domains:

        def compute(catalog, p, items, d=d):
            splits = prepare_domain(d, config.prepare_config(d), config.seed)
            return [save_rows(catalog, item, splits[name], generator=f"experts.domains.{d}") for name, item in items.items()]

        ids += [r.id for r in run_stage(config, "prepare", d, compute)]
    return ids
