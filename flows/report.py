"""The report stage: report.md and its figures as an artifact, published to Prefect and beside the catalog."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from data.catalog import Catalog
from data.lineage import LineageRecord
from data.temporary import temporary
from distill.evaluate import Summary
from distill.report import FIGURES, Curves, ReportInputs, write_report
from flows.artifacts import StageRun, curve_stride, run_stage
from flows.config import PipelineConfig, resolve

REPORT_FILES = ("report.md", *FIGURES.values())


def training_curves(run: StageRun) -> Curves:
    """Label -> (steps, loss) for every trained model, from the curves their checkpoints record."""
    roles = {"base": "base", **{f"expert:{d}": role for d, role in run.each("sft").items()}, "student": "student", "baseline": "baseline",
             **({"student + OPD": "opd"} if "opd" in run.inputs else {})}  # mixed RL's curves are rewards: the report's own line
    curves: Curves = {}
    for label, role in roles.items():
        record = run.record(role)
        if "train" not in record.params:  # an adopted pretrained base: not trained here
            continue
        stride = curve_stride(record.params["train"]["steps"])
        for key in ("loss_curve", "ce_curve", "kd_curve"):  # OPD's loss: the reverse KL to the experts
            values = record.metrics.get(key)
            if values and not (key == "ce_curve" and "kd_curve" not in record.metrics):  # without KD, ce is the loss
                name = label if key == "loss_curve" else f"{label} ({key.removesuffix('_curve')})"
                curves[name] = ([i * stride for i in range(len(values))], values)
    return curves


def attention_of(record: LineageRecord) -> str:
    """"dsa" or "dense", with the architecture when the model did not start as a DeepseekV32 (a converted DeepseekV3, a Qwen)."""
    kind, arch = record.metrics.get("attention", "dsa"), record.metrics.get("architecture", "deepseek_v32")
    if arch == "deepseek_v32":
        return kind
    return f"{kind} ({arch}, converted)" if kind == "dsa" else f"{kind} ({arch})"


@flow(name="report", log_prints=True)
def report(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> str:
    """Build the run's report from the scores and the lineage records of every model."""
    config = resolve(config, config_file, overrides)

    def compute(run: StageRun) -> list[LineageRecord]:
        mixture = run.record("mixture")
        inputs = ReportInputs(
            domains=list(config.domains),
            rl={d: run.record(role).metrics for d, role in run.each("sft").items()},
            warmup={d: run.record(role).metrics for d, role in run.each("expert").items()},
            curves=training_curves(run),
            mixture_id=mixture.id,
            mixture_rows=mixture.rows or 0,
            decontam_removed=mixture.metrics.get("decontam_removed", 0),
            kd_loss=run.record("student").params["train"]["kd"]["loss"],
            index_topk=config.model.index_topk,
            attention={
                **{f"expert:{d}": attention_of(run.record(role)) for d, role in run.each("expert").items()},
                "student": attention_of(run.record("student")), "baseline": attention_of(run.record("baseline")),
                **{label: attention_of(run.record(role)) for label, role in (("student + OPD", "opd"), ("student + mixed RL", "mixed_rl"))
                   if role in run.inputs},
            },
            mixed_rl=run.record("mixed_rl").metrics if "mixed_rl" in run.inputs else None,
        )
        summary = Summary.from_metrics(run.record("scores").metrics)
        return [run.save_files("report", lambda directory: write_report(directory, summary, inputs))]

    record = run_stage(config, "report", None, compute)[0]
    catalog = config.open_catalog()
    path = publish_report(catalog, record)
    # The UI cannot reach files in the run root: the artifact carries the tables and names the figures.
    text = (path / "report.md").read_text().split("\n![")[0]
    figures = ", ".join(f"`{path / f}`" for f in FIGURES.values())
    create_markdown_artifact(key="pipeline-report", markdown=f"{text}\nFigures: {figures}\n", description="scores of every model on every domain")
    return record.id


def publish_report(catalog: Catalog, record: LineageRecord) -> Path:
    """Copy the report's files to the run root (report.md, the figures), each atomically; returns the run root."""
    source = catalog.resolve(record)
    for name in REPORT_FILES:
        tmp = temporary(catalog.root / name)
        shutil.copyfile(source / name, tmp)
        os.replace(tmp, catalog.root / name)
    return catalog.root
