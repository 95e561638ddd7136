"""The run's report: report.md and PNG figures in the run root, and the same text as a Prefect markdown artifact."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from data.catalog import Catalog
from distill.report import acceptance_table, bar_chart, calls_table, curves_chart, dsa_table, rl_table, score_table, to_markdown
from flows.config import PipelineConfig
from flows.evaluate import model_items
from flows.plan import Plan, plan

FIGURES = {"scores": "report-scores.png", "curves": "report-curves.png"}


def training_curves(catalog: Catalog, p: Plan, config: PipelineConfig) -> dict[str, tuple[list[int], list[float]]]:
    """Label -> (steps, loss) for every trained model, from the loss curves their checkpoints record."""
    items = {"base": p[("base", None, "model")], **{f"expert:{d}": p[("train_expert", d, "model")] for d in config.domains}}
    items |= {"student": p[("distill", None, "model")], "baseline": p[("baseline", None, "model")]}
    curves = {}
    for label, item in items.items():
        metrics = catalog.get(item.id).metrics
        # save_model keeps every `stride`-th step of a run of `steps`.
        stride = max(1, item.params["train"]["steps"] // 50)
        for key in ("loss_curve", "ce_curve", "kd_curve"):
            values = metrics.get(key)
            if values and not (key == "ce_curve" and "kd_curve" not in metrics):  # without KD, ce is the loss
                name = label if key == "loss_curve" else f"{label} ({key.removesuffix('_curve')})"
                curves[name] = ([i * stride for i in range(len(values))], values)
    return curves


def write_report(config: PipelineConfig, scores_id: str) -> Path:
    """Write report.md and its figures into the run root, publish the markdown to Prefect; returns report.md's path."""
    catalog, p, root = Catalog(config.run_root), plan(config), Path(config.run_root)
    metrics = catalog.get(scores_id).metrics
    bar_chart(metrics, config.domains, root / FIGURES["scores"])
    curves_chart(training_curves(catalog, p, config), root / FIGURES["curves"])
    table = to_markdown(score_table(metrics, list(model_items(config, p)), config.domains))
    accept = to_markdown(acceptance_table(metrics, config.domains))
    warmup = to_markdown(dsa_table(metrics, {d: catalog.get(p[("dsa_warmup", d, "model")].id).metrics for d in config.domains}))
    calls_rows = calls_table(metrics, config.domains)
    calls = f"Tool-use tasks by the number of tool calls their reference solution makes: held-out accuracy (%).\n\n{to_markdown(calls_rows)}\n\n" if calls_rows else ""
    rl_rows = rl_table({d: catalog.get(p[("train_expert", d, "model")].id).metrics for d in config.domains})
    rl = (
        "Expert RL (GRPO on the prompts split, verifier reward): held-out accuracy (%) before and after, dense attention; greedy, and pass@1 "
        "of 4 samples per task drawn with the generate stage's temperature and top-p; changes ± paired 95% CI.\n\n"
        f"{to_markdown(rl_rows)}\n\n"
        if rl_rows
        else ""
    )
    mixture = catalog.get(p[("distill", None, "mixture")].id)
    removed = mixture.metrics.get("decontam_removed", 0)
    text = (
        f"# Distillery run: {config.run_root}\n\n"
        f"Held-out accuracy (%) ± 95% CI; `*` marks an expert on its own domain. `baseline`: the student's budget on the seed data only.\n\n{table}\n\n"
        f"Student vs experts (target: ≥ 0.95 × the expert on its domain) and vs the no-expert baseline; "
        f"student KD: `{config.distill.kd.loss}`.\n\n{accept}\n\n"
        f"{calls}{rl}"
        f"DSA indexer warm-up: recall (share of dense attention mass inside the top-{config.model.index_topk}) and each expert's own-domain accuracy with sparse vs dense attention.\n\n{warmup}\n\n"
        f"Student training data: `{mixture.id}` ({mixture.rows} rows; {removed} dropped by decontamination against the eval prompts); "
        f"trace it with `distillery lineage <id> --root {config.run_root}`.\n"
    )
    figures = "\n\n".join(f"![{name}]({file})" for name, file in FIGURES.items())
    path = root / "report.md"
    _write_atomic(path, f"{text}\n{figures}\n")
    # The UI cannot reach files in the run root: the artifact carries the tables and names the figures.
    create_markdown_artifact(
        key="pipeline-report", markdown=f"{text}\nFigures: {', '.join(f'`{root / f}`' for f in FIGURES.values())}\n", description="scores of every model on every domain"
    )
    print(text)
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
