"""The whole recipe: (index ->) prepare -> base -> (expert -> dsa_warmup -> generate -> verify) per domain -> mixture, distill (-> opd) (-> mixed_rl), baseline -> evaluate -> report."""

from __future__ import annotations

from pathlib import Path

from prefect import Flow, flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from data.doctor import QUARANTINE
from data.temporary import sweep_under
from flows.base import base
from flows.baseline import baseline
from flows.config import PipelineConfig, resolve
from flows.distill import distill
from flows.dsa_warmup import dsa_warmup
from flows.evaluate import evaluate
from flows.generate import generate
from flows.index import index
from flows.mixed_rl import mixed_rl
from flows.mixture import mixture
from flows.opd import opd
from flows.prepare import prepare
from flows.report import report
from flows.stages import AFTER_DISTILL
from flows.train_expert import train_expert
from flows.verify import verify


def with_retries(stage: Flow, config: PipelineConfig) -> Flow:
    """The stage flow with the config's retries: a retried stage re-plans and resumes from what it saved (generate's shards)."""
    return stage.with_options(retries=config.execution.retries, retry_delay_seconds=config.execution.retry_delay_seconds)


# Stages skip themselves from the catalog; Prefect's own task caching keys on the run, so it is off.
@task(cache_policy=NONE)
def domain_branch(domain: str, config: PipelineConfig) -> str:
    """One domain's specialist, its indexer warm-up, its generations and their verification."""
    for stage in (train_expert, dsa_warmup, generate):
        with_retries(stage, config)(domain, config)
    return with_retries(verify, config)(domain, config)


@task(cache_policy=NONE)
def no_expert_baseline(config: PipelineConfig) -> str:
    """The baseline needs only the base and the seed data: it trains while the domain branches run."""
    return with_retries(baseline, config)(config)


@flow(name="pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def pipeline(config: PipelineConfig | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run every stage; stages whose outputs are already in the catalog skip themselves.

    Args:
        config: the whole configuration, every field; leave it empty to read config_file instead.
        config_file: a YAML config in the checkout (default: configs/tiny.yaml).
        overrides: settings over the file as on the command line's --set, e.g. distill.steps=800.
    """
    config = resolve(config, config_file, overrides)
    # What writers killed in an earlier run left: half-written, so nothing complete is lost.
    for path in sweep_under(Path(config.run_root), exclude=QUARANTINE):
        get_run_logger().info("removed %s, left by a writer that is no longer running", path)
    with_retries(index, config)(config)  # only for search questions over a user's corpus
    with_retries(prepare, config)(config)
    with_retries(base, config)(config)
    branches = [domain_branch.submit(d, config) for d in config.domains]
    reference = no_expert_baseline.submit(config)
    for future in branches:
        future.result()
    with_retries(mixture, config)(config)
    with_retries(distill, config)(config)
    # Then those of the stages after distill that this config turns on, in flows.stages' order.
    for name, runs in AFTER_DISTILL:
        if runs(config, None):
            with_retries({"opd": opd, "mixed_rl": mixed_rl}[name], config)(config)
    reference.result()
    scores = with_retries(evaluate, config)(config)
    report_id = with_retries(report, config)(config)
    return {"run_root": config.run_root, "scores": scores, "report": report_id}
