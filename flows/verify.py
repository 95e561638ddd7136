from __future__ import annotations

import torch
from prefect import flow

from data.shards import ShardDir
from domains.verify import verdict_counts, verdict_schema, verdict_tables, verify_shards
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="verify", log_prints=True)
def verify(domain: str, config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Check every generation with the domain's verifier; rejected samples keep their reason.

    Judged on `execution.verify_workers` threads, a chunk at a time into shards in the stage's work
    directory: a killed stage goes on from its last chunk."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        generations, work = run.path("generations"), ShardDir(run.work)
        workers = config.execution.verify_workers or torch.get_num_threads()
        verify_shards(domain, generations, work, workers=workers, progress=run.progress("verifying", metric="accepted"))
        judged, verified, reasons = verdict_counts(work)
        rejected = sum(reasons.values())
        schema = verdict_schema(generations)
        return [
            run.save_stream("verified", verdict_tables(work, ok=True), verified, schema, accept_rate=1 - rejected / max(1, judged)),
            run.save_stream("rejected", verdict_tables(work, ok=False), rejected, schema, **{f"reason_{k}": v for k, v in sorted(reasons.items())}),
        ]

    return run_stage(config, "verify", domain, compute)[0].id
