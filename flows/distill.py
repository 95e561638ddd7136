from __future__ import annotations

from prefect import flow
from transformers import AutoTokenizer

from distill.train import train_and_warm_up
from experts.pretrained import load_pretrained, same_vocabulary
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


def student_start(run: StageRun, config: PipelineConfig):
    """(model, tokenizer, whether it shares the experts' vocabulary): the base, or `distill.student` when set."""
    if config.distill.student is None:
        return *run.model("base"), True
    model, tokenizer = load_pretrained(config.distill.student, "distill.student.pretrained")
    return model, tokenizer, same_vocabulary(tokenizer, AutoTokenizer.from_pretrained(run.path("base")))


@flow(name="distill", log_prints=True)
def distill(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Train the generalist student (the base, or `distill.student`) on the mixture of every expert's verified samples,
    then warm up its indexer when it has one."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        model, tokenizer, shared = student_start(run, config)
        curves, warm = train_and_warm_up(
            model, tokenizer, run.table("mixture").to_pylist(), config.distill, config.dsa_warmup, seed=run.seed,
            train_progress=run.progress("student"), warmup_progress=run.progress("indexer warm-up"), teacher_ids=shared,
            train_snapshot=run.snapshot("student"), warmup_snapshot=run.snapshot("warmup"),
        )
        return [run.save_model("model", model, tokenizer, curves, **warm, architecture=model.config.model_type)]

    return run_stage(config, "distill", None, compute)[0].id
