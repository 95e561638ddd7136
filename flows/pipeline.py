"""The whole recipe: prepare -> base -> (expert -> dsa_warmup -> generate -> verify) per domain -> distill -> evaluate."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from data.catalog import Catalog
from distill.report import dsa_table, score_table, to_markdown
from flows.base import base
from flows.config import PipelineConfig, default_config
from flows.distill import distill
from flows.dsa_warmup import dsa_warmup
from flows.evaluate import evaluate, model_items
from flows.generate import generate
from flows.plan import plan
from flows.prepare import prepare
from flows.train_expert import train_expert
from flows.verify import verify


@task(cache_policy=NONE)
def domain_branch(domain: str, config: PipelineConfig) -> str:
    """One domain's specialist, its indexer warm-up, its generations and their verification."""
    train_expert(domain, config)
    dsa_warmup(domain, config)
    generate(domain, config)
    return verify(domain, config)


@flow(name="pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=4))
def pipeline(config: PipelineConfig = default_config()) -> dict:
    """Run every stage; stages whose outputs are already in the catalog skip themselves."""
    prepare(config)
    base(config)
    for future in [domain_branch.submit(d, config) for d in config.domains]:
        future.result()
    distill(config)
    scores_id = evaluate(config)
    catalog = Catalog(config.run_root)
    metrics = catalog.get(scores_id).metrics
    p = plan(config)
    table = to_markdown(score_table(metrics, list(model_items(config, p)), config.domains))
    warmup = to_markdown(dsa_table(metrics, {d: catalog.get(p[("dsa_warmup", d, "model")].id).metrics for d in config.domains}))
    report = (
        f"# Distillery run: {config.run_root}\n\n"
        f"Held-out accuracy (%) ± 95% CI; `*` marks an expert on its own domain.\n\n{table}\n\n"
        f"DSA indexer warm-up: recall (share of dense attention mass inside the top-{config.model.index_topk}) and each expert's own-domain accuracy with sparse vs dense attention.\n\n{warmup}\n\n"
        f"Student training data: `{p[('distill', None, 'mixture')].id}`; "
        f"trace it with `distillery lineage <id> --root {config.run_root}`.\n"
    )
    _write_atomic(Path(config.run_root) / "report.md", report)
    create_markdown_artifact(key="pipeline-report", markdown=report, description="scores of every model on every domain")
    print(report)
    return {"run_root": config.run_root, "scores": scores_id, "report": str(Path(config.run_root) / "report.md")}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
