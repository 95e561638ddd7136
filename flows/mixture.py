from __future__ import annotations

from prefect import flow

from distill.mixture import student_mixture
from flows.artifacts import StageRun, publish_lineage, run_stage
from flows.config import PipelineConfig, resolve


def eval_prompts(run: StageRun) -> list[str]:
    """Every domain's held-out prompts: what training data must not overlap."""
    return [r["prompt"] for role in run.each("eval").values() for r in run.rows(role)]


@flow(name="mixture", log_prints=True)
def mixture(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """The student's data: every expert's verified samples in one shuffled dataset, without those
    overlapping the eval prompts; its lineage published as a picture."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list:
        verified = {d: run.table(role) for d, role in run.each("verified").items()}
        table, counts = student_mixture(verified, eval_prompts(run), run.seed, config.distill.decontam_ngram, config.distill.decontam_overlap)
        return [run.save_rows("mixture", table, **counts)]

    (record,) = run_stage(config, "mixture", None, compute)
    publish_lineage(config.open_catalog(), record)
    return record.id
