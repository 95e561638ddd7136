from __future__ import annotations

from prefect import flow

from distill.opd import train_opd
from distill.train import warm_up
from flows.artifacts import StageRun, run_stage
from flows.config import PipelineConfig, resolve


@flow(name="opd", log_prints=True)
def opd(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """On-policy distillation of the distilled student: it samples on every domain's prompts, that domain's
    expert grades each of its tokens (reverse KL), then its indexer is warmed up again on its own samples."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        model, tokenizer = run.model("student")
        teachers = {d: run.model(role)[0] for d, role in run.each("expert").items()}
        tasks = {d: run.rows(role) for d, role in run.each("prompts").items()}
        curves, samples = train_opd(model, tokenizer, teachers, tasks, config.opd, seed=run.seed,
                                    progress=run.progress("on-policy distillation", "reverse KL"), snapshot=run.snapshot("opd"))
        warm = warm_up(model, tokenizer, samples, config.dsa_warmup, seed=run.seed, progress=run.progress("indexer warm-up"),
                       snapshot=run.snapshot("warmup"))
        return [run.save_model("model", model, tokenizer, curves, **warm, architecture=model.config.model_type)]

    return run_stage(config, "opd", None, compute)[0].id
