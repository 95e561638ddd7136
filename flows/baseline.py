from __future__ import annotations

import pyarrow as pa
from prefect import flow

from distill.mixture import decontaminate_table
from distill.train import train_student
from flows.artifacts import Progress, load_model, load_table, run_stage, save_model
from flows.config import PipelineConfig, default_config
from flows.distill import eval_prompts, train_curves, warm_up_indexer


@flow(name="baseline", log_prints=True)
def baseline(config: PipelineConfig = default_config()) -> str:
    """The reference the student must beat: the student's training budget spent on the seed data alone, no expert."""

    def compute(catalog, p, items):
        budget = config.distill.budget()
        seeds = pa.concat_tables([load_table(catalog, p[("prepare", d, "seed")]) for d in config.domains])
        seeds, decontam = decontaminate_table(seeds, eval_prompts(catalog, p, config), config.distill.decontam_ngram, config.distill.decontam_overlap)
        rows = seeds.to_pylist()
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        curves = train_student(model, tokenizer, rows, budget, Progress("baseline: seed data only"))
        warm = warm_up_indexer(model, tokenizer, rows, config, "baseline")
        return [save_model(catalog, items["model"], model, tokenizer, curves["loss"], **train_curves(curves), **warm, **decontam)]

    return run_stage(config, "baseline", None, compute)[0].id
