from __future__ import annotations

from prefect import flow

from domains.verify import verify_table
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="verify", log_prints=True)
def verify(domain: str, config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Check every generation with the domain's verifier; rejected samples keep their reason."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        verified, rejected, verified_metrics, rejected_metrics = verify_table(domain, run.table("generations"))
        return [run.save_rows("verified", verified, **verified_metrics), run.save_rows("rejected", rejected, **rejected_metrics)]

    return run_stage(config, "verify", domain, compute)[0].id
