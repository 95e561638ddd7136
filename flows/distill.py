from __future__ import annotations

import time
from collections import Counter

from prefect import flow

from data.errors import ArtifactError
from distill.mixture import decontaminate_table, mix_verified
from distill.train import train_student
from flows.artifacts import Progress, curve, load_model, load_rows, load_table, run_stage, save_model, save_rows
from flows.config import PipelineConfig, default_config
from flows.plan import Plan
from kernels.warmup import warmup_indexer


def eval_prompts(catalog, p: Plan, config: PipelineConfig) -> list[str]:
    """Every domain's held-out prompts: what training data must not overlap."""
    return [r["prompt"] for d in config.domains for r in load_rows(catalog, p[("prepare", d, "eval")])]


def warm_up_indexer(model, tokenizer, rows: list[dict], config: PipelineConfig, label: str) -> dict:
    """The student is trained dense like the experts; its indexer needs the same warm-up before it runs sparse."""
    # Few training rows (smoke runs) leave fewer to hold out for the recall measurement.
    cfg = config.dsa_warmup.model_copy(update={"eval_examples": min(config.dsa_warmup.eval_examples, len(rows) // 2)})
    warm = warmup_indexer(model, tokenizer, rows, cfg, Progress(f"{label}: indexer warm-up"))
    warm.pop("losses")
    return warm


def train_curves(curves: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each loss term's curve (ce, kd) as lineage metrics; the total is save_model's loss_curve."""
    return {f"{name}_curve": curve(values) for name, values in curves.items() if name != "loss"}


@flow(name="distill", log_prints=True)
def distill(config: PipelineConfig = default_config()) -> str:
    """Train the generalist student from the base on every expert's verified samples, then warm up its indexer."""

    def compute(catalog, p, items):
        cfg = config.distill
        verified = {d: load_table(catalog, p[("verify", d, "verified")]) for d in config.domains}
        mixture, decontam = decontaminate_table(mix_verified(verified, config.seed), eval_prompts(catalog, p, config), cfg.decontam_ngram, cfg.decontam_overlap)
        if mixture.num_rows == 0:
            raise ArtifactError(f"no expert produced a verified sample in {config.run_root}: train the experts longer or sample more")
        per_domain = Counter(mixture.column("domain").to_pylist())
        counts = {f"rows_{d}": per_domain[d] for d in config.domains}
        mix_record = save_rows(catalog, items["mixture"], mixture, **counts, **decontam)
        rows = mixture.to_pylist()
        model, tokenizer = load_model(catalog, p[("base", None, "model")])
        started = time.monotonic()
        curves = train_student(model, tokenizer, rows, cfg, Progress("distill: student"))
        train_seconds = time.monotonic() - started
        warm = warm_up_indexer(model, tokenizer, rows, config, "distill")
        return [mix_record, save_model(catalog, items["model"], model, tokenizer, curves["loss"], **train_curves(curves), train_seconds=train_seconds, **warm)]

    return run_stage(config, "distill", None, compute)[-1].id
