from __future__ import annotations

from prefect import flow

from data.catalog import Catalog
from distill.evaluate import accuracy_with_ci, evaluate_model
from flows.artifacts import Progress, existing, load_model, load_rows, publish, save_rows
from flows.config import PipelineConfig, default_config
from flows.plan import outputs, plan


def model_items(config: PipelineConfig, p) -> dict:
    """Every model the evaluation scores, by the name shown in the table."""
    return {"base": p[("base", None, "model")], **{f"expert:{d}": p[("train_expert", d, "model")] for d in config.domains}, "student": p[("distill", None, "model")]}


@flow(name="evaluate", log_prints=True)
def evaluate(config: PipelineConfig = default_config()) -> str:
    """Score the base, every expert and the student on every domain's held-out set."""
    catalog, p = Catalog(config.run_root), plan(config)
    (item,) = outputs(p, "evaluate")
    records = existing(catalog, [item])
    if records is None:
        evals = {d: load_rows(catalog, p[("prepare", d, "eval")]) for d in config.domains}
        rows, metrics = [], {}
        for name, model_item in model_items(config, p).items():
            model, tokenizer = load_model(catalog, model_item)
            for d, tasks in evals.items():
                scored = evaluate_model(model, tokenizer, d, tasks, config.evaluate, Progress(f"evaluate[{name} on {d}]"))
                rows += [{"model": name, "model_id": model_item.id, **r} for r in scored]
                acc, ci = accuracy_with_ci([r["ok"] for r in scored])
                metrics[f"{name}|{d}"] = acc
                metrics[f"{name}|{d}|ci95"] = ci
        records = [save_rows(catalog, item, rows, **metrics)]
        publish("evaluate", None, records, skipped=False)
    else:
        publish("evaluate", None, records, skipped=True)
    return records[0].id
