from __future__ import annotations

from prefect import flow

from distill.train import train_and_warm_up
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="distill", log_prints=True)
def distill(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Train the generalist student from the base on the mixture of every expert's verified samples, then warm up its indexer."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        model, tokenizer = run.model("base")
        curves, warm = train_and_warm_up(
            model, tokenizer, run.table("mixture").to_pylist(), config.distill, config.dsa_warmup, seed=run.seed,
            train_progress=run.progress("student"), warmup_progress=run.progress("indexer warm-up"),
        )
        return [run.save_model("model", model, tokenizer, curves, **warm)]

    return run_stage(config, "distill", None, compute)[0].id
