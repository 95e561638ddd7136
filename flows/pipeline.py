"""The whole recipe: prepare -> base -> (expert -> dsa_warmup -> generate -> verify) per domain -> distill, baseline -> evaluate."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.base import base
from flows.baseline import baseline
from flows.config import PipelineConfig, default_config
from flows.distill import distill
from flows.dsa_warmup import dsa_warmup
from flows.evaluate import evaluate
from flows.generate import generate
from flows.prepare import prepare
from flows.report import write_report
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
    baseline(config)
    scores_id = evaluate(config)
    report = write_report(config, scores_id)
    return {"run_root": config.run_root, "scores": scores_id, "report": str(report)}
