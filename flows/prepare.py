from __future__ import annotations

from pathlib import Path

from prefect import flow

from domains.prepare import prepare_domain
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="prepare", log_prints=True)
def prepare(config: PipelineConfig | None = None, domain: str | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> list[str]:
    """Write each domain's seed, prompts and eval datasets (all configured domains, or `domain`)."""
    config = resolve(config, config_file, overrides)
    ids = []
    for d in [domain] if domain else config.domains:

        def compute(run: StageRun, d: str = d) -> list:
            # By its path inside the run root: the tasks name it so (domains.corpus.indexes_in).
            index = Path(run.record("index").uri) if "index" in run.inputs else None
            splits = prepare_domain(d, config.prepare_config(d), run.seed, index)
            return [run.save_rows(name, splits[name], generator=f"domains.{d}") for name in run.outputs]

        ids += [r.id for r in run_stage(config, "prepare", d, compute)]
    return ids
