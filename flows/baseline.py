from __future__ import annotations

import pyarrow as pa
from prefect import flow

from distill.mixture import decontaminate_table
from distill.train import train_and_warm_up
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve
from flows.distill import student_start
from flows.mixture import eval_prompts


@flow(name="baseline", log_prints=True)
def baseline(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """The reference the student must beat: the student's training budget spent on the seed data alone, no expert."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        cfg = config.distill
        seeds = pa.concat_tables([run.table(role) for role in run.each("seed").values()])
        seeds, decontam = decontaminate_table(seeds, eval_prompts(run), cfg.decontam_ngram, cfg.decontam_overlap)
        model, tokenizer, _ = student_start(run, config)  # seed rows are text: any vocabulary reads them
        curves, warm = train_and_warm_up(
            model, tokenizer, seeds.to_pylist(), cfg.budget(), config.dsa_warmup, seed=run.seed,
            train_progress=run.progress("seed data only"), warmup_progress=run.progress("indexer warm-up"),
            train_snapshot=run.snapshot("student"), warmup_snapshot=run.snapshot("warmup"),
        )
        return [run.save_model("model", model, tokenizer, curves, **warm, **decontam, architecture=model.config.model_type)]

    return run_stage(config, "baseline", None, compute)[0].id
