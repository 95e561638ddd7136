"""Plumbing every stage flow shares: load inputs by id, skip when outputs exist, save with lineage."""

from __future__ import annotations

import atexit
import base64
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run
from rich import progress as rich_progress
from transformers.utils import logging as hf_logging

from data import integrity, locks, tables, temporary
from data.catalog import Catalog
from data.checkpoints import load_checkpoint, save_checkpoint, save_directory, save_reference
from data.errors import ArtifactError
from data.lineage import LineageRecord, code_version
from data.lineage_view import render_picture
from domains.corpus import indexes_in
from experts.snapshot import Snapshot
from flows.config import PipelineConfig
from flows.plan import Planned, inputs, outputs, plan

# Per-file loading bars from every checkpoint load would drown the stage logs.
hf_logging.disable_progress_bar()


def record_for(item: Planned, **metrics: Any) -> LineageRecord:
    return LineageRecord(
        id=item.id,
        kind=item.kind,  # type: ignore[arg-type]
        stage=item.stage,
        domain=item.domain,
        name=item.name,
        uri=item.uri,
        parents=list(item.parents),
        params=item.params,
        code_version={**code_version(), "stage_code": item.code},
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        metrics=metrics,
    )


def require(catalog: Catalog, item: Planned) -> LineageRecord:
    """The record of an input a stage is about to read, its file checked against the fingerprint recorded at write."""
    record = catalog.find(item.id)
    if record is None:
        where = "/".join(x for x in (item.stage, item.domain, item.name) if x)
        raise ArtifactError(f"missing input {where} (id {item.id}) in {catalog.root}: run the stage '{item.stage}' first")
    integrity.check(record, catalog.resolve(record), catalog.root)
    return record


CURVE_POINTS = 50


def curve_stride(steps: int) -> int:
    """Every how many steps `curve` keeps a value of a run of `steps`."""
    return max(1, steps // CURVE_POINTS)


def curve(values: Sequence[float]) -> list[float]:
    """About `CURVE_POINTS` evenly spaced values of a per-step curve, to keep in lineage metrics."""
    return list(values[:: curve_stride(len(values))])


class StageRun:
    """One stage's run: its inputs by role, its outputs by name, its seed, and saving with lineage."""

    def __init__(self, config: PipelineConfig, stage: str, domain: str | None, catalog: Catalog) -> None:
        self.config, self.stage, self.domain, self.catalog = config, stage, domain, catalog
        p = plan(config, catalog)
        self.inputs = inputs(p, config, stage, domain)
        self.outputs = {item.name: item for item in outputs(p, stage, domain)}
        self.seed = config.seed_for(stage, domain)
        self.label = f"{stage}[{domain}]" if domain else stage
        first = next(iter(self.outputs.values())).id
        self.key = f"{stage}-{domain or 'all'}-{first}"  # names the lock on what this run computes
        self.work = self.catalog.root / temporary.WORK / first
        self.started = time.monotonic()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def existing(self) -> list[LineageRecord] | None:
        """The records of every output if all are already in the catalog with intact files, else None."""
        found = [self.catalog.find(item.id) for item in self.outputs.values()]
        return None if any(r is None for r in found) else found  # type: ignore[return-value]

    def each(self, role: str) -> dict[str, str]:
        """Domain -> role of the per-domain inputs `<role>:<domain>`."""
        return {r.split(":", 1)[1]: r for r in self.inputs if r.startswith(f"{role}:")}

    def record(self, role: str) -> LineageRecord:
        return require(self.catalog, self.inputs[role])

    def path(self, role: str) -> Path:
        return self.catalog.resolve(self.record(role))

    def rows(self, role: str) -> list[dict]:
        return tables.read_rows(self.path(role))

    def table(self, role: str):
        return tables.read_table(self.path(role))

    def model(self, role: str):
        return load_checkpoint(self.path(role))

    def progress(self, what: str = "", metric: str = "loss") -> Progress:
        return Progress(f"{self.label}: {what}" if what else self.label, metric)

    def snapshot(self, phase: str) -> Snapshot | None:
        """Where training phase `phase` keeps its state as it goes (`experts.snapshot`), in the stage's
        work directory; None when `execution.snapshot_minutes` is None."""
        minutes = self.config.execution.snapshot_minutes
        return None if minutes is None else Snapshot(self.work / f"{phase}.pt", minutes * 60)

    def record_of(self, name: str, **metrics: Any) -> LineageRecord:
        """A new record for output `name`, with the stage's wall time so far and, on a GPU, the peak
        memory torch allocated since the stage started (concurrent domain branches share one peak)."""
        if torch.cuda.is_available():
            metrics["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        return record_for(self.outputs[name], seconds=round(time.monotonic() - self.started, 1), **metrics)

    def save_rows(self, name: str, rows, schema=None, **metrics: Any) -> LineageRecord:
        record = tables.write_table(rows, self.catalog.root / self.outputs[name].uri, self.record_of(name, **metrics), schema=schema)
        self.catalog.add(record)
        return record

    def save_stream(self, name: str, parts: Iterable[pa.Table], rows: int, schema: pa.Schema, **metrics: Any) -> LineageRecord:
        """Save a dataset of `rows` rows from tables that come one at a time (`data.tables.write_stream`)."""
        record = self.record_of(name, **metrics)
        record.rows = rows
        tables.write_stream(parts, self.catalog.root / self.outputs[name].uri, record, schema)
        self.catalog.add(record)
        return record

    def save_model(self, name: str, model, tokenizer, curves: dict[str, Sequence[float]], **metrics: Any) -> LineageRecord:
        """Save a model with its final loss and 50-point curves (`loss` and any other term; none when it was not trained) as metrics,
        and with `trained_tokens` (their sum) when the curves count the tokens that carried loss each step."""
        kept = {f"{k}_curve": curve(v) for k, v in curves.items()}
        if "loss" in curves:
            kept["final_loss"] = curves["loss"][-1]
        if "tokens" in curves:
            kept["trained_tokens"] = sum(curves["tokens"])
        record = self.record_of(name, **kept, **metrics)
        save_checkpoint(model, tokenizer, self.catalog.root / self.outputs[name].uri, record)
        self.catalog.add(record)
        return record

    def save_reference(self, name: str, source: Path, provenance: dict[str, Any], tokenizer) -> LineageRecord:
        """Save a checkpoint that links to the files of `source` (`data.checkpoints.save_reference`), its provenance as metrics."""
        record = save_reference(self.catalog.root / self.outputs[name].uri, self.record_of(name, **provenance), source, provenance, tokenizer)
        self.catalog.add(record)
        return record

    def save_files(self, name: str, write: Callable[[Path], None], **metrics: Any) -> LineageRecord:
        """Save a directory of files that `write(directory)` fills (a report)."""
        record = save_directory(self.catalog.root / self.outputs[name].uri, self.record_of(name, **metrics), write)
        self.catalog.add(record)
        return record


def run_stage(config: PipelineConfig, stage: str, domain: str | None, compute: Callable[[StageRun], list[LineageRecord]]) -> list[LineageRecord]:
    """Skip when every output of (stage, domain) is already in the catalog, else compute them under
    the run root's lock on them (another run computing them is waited for); publish either way."""
    run = StageRun(config, stage, domain, config.open_catalog())
    records = run.existing()
    skipped = records is not None
    if records is None:
        ids = ", ".join(item.id for item in run.outputs.values())
        logger = get_run_logger()
        waiting = lambda who: logger.info("%s: waiting for another run on %s computing %s (%s)", run.label, config.run_root, ids, who)  # noqa: E731
        with locks.exclusive(run.catalog.root, run.key, waiting):
            records = run.existing()  # the run we waited for saved them
            skipped = records is not None
            if records is None:
                for item in run.inputs.values():
                    require(run.catalog, item)
                for item in run.outputs.values():  # what a killed attempt half-wrote
                    temporary.sweep(run.catalog.root / item.uri)
                logger.info("%s: computing %s", run.label, ids)
                with indexes_in(run.catalog.root):  # where the corpus index a search task names is
                    records = compute(run)
    shutil.rmtree(run.work, ignore_errors=True)  # the outputs are saved: nothing left to resume
    publish(run.label, stage, domain, records, skipped)
    return records


def publish_lineage(catalog: Catalog, record: LineageRecord) -> None:
    """The record's ancestry as a picture, in a Prefect markdown artifact: a PNG inlined as a data
    URL, since the UI cannot reach files in the run root."""
    png = base64.b64encode(render_picture(catalog.ancestry(record.id), "png")).decode()
    create_markdown_artifact(
        key=f"{record.stage}-lineage".replace("_", "-"),
        markdown=f"![lineage of {record.label} {record.id}](data:image/png;base64,{png})\n\n"
                 f"As text: `distillery lineage {record.id}`; as SVG: `distillery lineage {record.id} --format svg`.",
        description=f"where {record.label} came from, down to the raw tasks",
    )


def publish(label: str, stage: str, domain: str | None, records: Sequence[LineageRecord], skipped: bool) -> None:
    """A Prefect table artifact of the stage's outputs with their lineage; logs the skip."""
    if skipped:
        get_run_logger().info("%s: skipped, outputs already in the catalog (%s)", label, ", ".join(r.id for r in records))
    create_table_artifact(
        key=f"{stage}-{domain or 'all'}".replace("_", "-"),
        table=[
            {
                "id": r.id,
                "kind": r.kind,
                "name": r.name,
                "uri": r.uri,
                "rows": r.rows,
                "bytes": r.bytes,
                "parents": ", ".join(r.parents),
                "skipped": skipped,
                "metrics": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.metrics.items() if not isinstance(v, (list, dict))),
            }
            for r in records
        ],
        description=f"{label} outputs and lineage",
    )


_BAR: rich_progress.Progress | None = None
_BAR_LOCK = threading.Lock()


def _terminal_bar() -> rich_progress.Progress | None:
    """One live multi-row progress bar per process, only when a person is watching a terminal."""
    global _BAR
    with _BAR_LOCK:
        if _BAR is None and sys.stderr.isatty():
            _BAR = rich_progress.Progress(
                rich_progress.TextColumn("{task.description}"), rich_progress.BarColumn(), rich_progress.MofNCompleteColumn(),
                rich_progress.TimeRemainingColumn(), rich_progress.TextColumn("{task.fields[loss]}"),
            )
            _BAR.start()
            atexit.register(_BAR.stop)
        return _BAR


class Progress:
    """Reports long work as a Prefect progress artifact and log lines every 10% or so, and as a bar in a terminal."""

    def __init__(self, label: str, metric: str = "loss"):
        self.label, self.metric = label, metric
        # Made at the first report, so that work which never starts (GRPO of 0 steps) leaves no 0% behind.
        self.artifact_id = None
        self.last = 0.0
        self.bar = self.task = None

    def __call__(self, done: int, total: int, loss: float | None = None) -> None:
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(progress=0.0, description=self.label)
            self.bar = _terminal_bar()
            self.task = None if self.bar is None else self.bar.add_task(self.label, total=None, loss="")
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, loss="" if loss is None else f"{self.metric} {loss:.4f}")
        pct = 100.0 * done / total
        if pct - self.last < 10 and done < total:
            return
        self.last = pct
        update_progress_artifact(self.artifact_id, pct)
        extra = f" {self.metric} {loss:.4f}" if loss is not None else ""
        get_run_logger().info("%s: %d/%d%s", self.label, done, total, extra)
