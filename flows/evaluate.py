from __future__ import annotations

from prefect import flow

from distill.evaluate import accuracy_by_calls, accuracy_with_ci, evaluate_model, paired_difference
from flows.artifacts import Progress, load_model, load_rows, run_stage, save_rows
from flows.config import PipelineConfig, default_config
from flows.plan import Plan
from kernels.attention import dense_attention


def model_items(config: PipelineConfig, p: Plan) -> dict:
    """Every model the evaluation scores, by the name shown in the table; experts after indexer warm-up."""
    experts = {f"expert:{d}": p[("dsa_warmup", d, "model")] for d in config.domains}
    return {"base": p[("base", None, "model")], **experts, "student": p[("distill", None, "model")], "baseline": p[("baseline", None, "model")]}


@flow(name="evaluate", log_prints=True)
def evaluate(config: PipelineConfig = default_config()) -> str:
    """Score the base, every expert, the student and the no-expert baseline on every domain's held-out set."""

    def compute(catalog, p, items):
        evals = {d: load_rows(catalog, p[("prepare", d, "eval")]) for d in config.domains}
        rows, metrics, oks = [], {}, {}
        for name, model_item in model_items(config, p).items():
            model, tokenizer = load_model(catalog, model_item)
            for d, tasks in evals.items():
                if name.startswith("expert:") and name != f"expert:{d}":
                    continue  # a specialist off its domain scores ~0 (measured): not worth the time
                scored = evaluate_model(model, tokenizer, d, tasks, config.evaluate, Progress(f"evaluate[{name} on {d}]"))
                rows += [{"model": name, "model_id": model_item.id, **r} for r in scored]
                oks[name, d] = [r["ok"] for r in scored]
                metrics[f"{name}|{d}"], metrics[f"{name}|{d}|ci95"] = accuracy_with_ci(oks[name, d])
                for n, (acc, count) in accuracy_by_calls(tasks, oks[name, d]).items():
                    metrics[f"{name}|{d}|calls={n}"], metrics[f"{d}|calls={n}|tasks"] = acc, count
                if name in (f"expert:{d}", "student"):
                    # Sparse attention must cost (almost) nothing; for the student this separates
                    # what distillation taught from what its indexer warm-up got wrong.
                    with dense_attention(model):
                        dense = evaluate_model(model, tokenizer, d, tasks, config.evaluate)
                    metrics[f"{name}|{d}|dense"], metrics[f"{name}|{d}|dense|ci95"] = accuracy_with_ci([r["ok"] for r in dense])
        by_domain = {m: {d: oks[m, d] for d in config.domains} for m in ("student", "baseline")}
        metrics["student-baseline"], metrics["student-baseline|ci95"] = paired_difference(by_domain["student"], by_domain["baseline"])
        return [save_rows(catalog, items["scores"], rows, **metrics)]

    return run_stage(config, "evaluate", None, compute)[0].id
