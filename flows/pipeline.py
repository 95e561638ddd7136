"""The whole recipe: (index ->) prepare -> base -> (expert -> dsa_warmup -> generate -> verify) per domain -> mixture, distill (-> opd) (-> mixed_rl), baseline -> evaluate -> report."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from prefect import Flow, flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from data.doctor import QUARANTINE
from data.temporary import sweep_under
from flows.base import base
from flows.baseline import baseline
from flows.config import PipelineConfig, resolve
from flows.distill import distill
from flows.dsa_warmup import dsa_warmup
from flows.evaluate import evaluate
from flows.execution import set_task_threads, submit, task_runner
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


def subflow(stage: Flow, config: PipelineConfig, *args: Any) -> Any:
    """Run a stage flow inside the current flow run, with the config's retries and no heartbeat of its own.

    The run it belongs to keeps its heartbeat (what a server's zombie detection watches). A flow run's
    heartbeat thread sleeps in 1 s steps and Prefect (3.9) waits for it when the run ends: about 1 s
    for every stage, most of a rerun that has nothing to compute.
    """
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return with_retries(stage, config)(*args)


def run_branch(domain: str, config: PipelineConfig) -> str:
    """One domain's specialist, its indexer warm-up, its generations and their verification."""
    set_task_threads(config.execution, "branch")
    get_run_logger().info("branch %s runs in pid %d on %s", domain, os.getpid(), socket.gethostname())
    for stage in (train_expert, dsa_warmup, generate):
        subflow(stage, config, domain, config)
    return subflow(verify, config, domain, config)


def run_baseline(config: PipelineConfig) -> str:
    """The baseline needs only the base and the seed data: it trains while the domain branches run."""
    set_task_threads(config.execution, "baseline")
    get_run_logger().info("baseline runs in pid %d on %s", os.getpid(), socket.gethostname())
    return subflow(baseline, config, config)


# The tasks wrap functions that keep their own module-level names, so that Ray's cloudpickle sends
# them by reference and the worker imports this module: a function reachable only through its Task
# travels by value, and so would the stage flows it calls, without the module namespace in which
# their parameters' annotations (PipelineConfig) resolve. Stages skip themselves from the catalog;
# Prefect's own task caching keys on the run, so it is off.
domain_branch = task(run_branch, name="domain_branch", cache_policy=NONE)
no_expert_baseline = task(run_baseline, name="no_expert_baseline", cache_policy=NONE)


@flow(name="pipeline", log_prints=True)
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
    subflow(index, config, config)  # only for search questions over a user's corpus
    subflow(prepare, config, config)
    subflow(base, config, config)
    # The branches and the baseline run side by side: as threads here, or as tasks on a Ray cluster.
    with task_runner(config.execution) as runner:
        branches = [submit(runner, config.execution, "branch", domain_branch, domain=d, config=config) for d in config.domains]
        reference = submit(runner, config.execution, "baseline", no_expert_baseline, config=config)
        for future in branches:
            future.result()
        subflow(mixture, config, config)
        subflow(distill, config, config)
        # Then those of the stages after distill that this config turns on, in flows.stages' order.
        for name, runs in AFTER_DISTILL:
            if runs(config, None):
                subflow({"opd": opd, "mixed_rl": mixed_rl}[name], config, config)
        reference.result()
    scores = subflow(evaluate, config, config)
    report_id = subflow(report, config, config)
    return {"run_root": config.run_root, "scores": scores, "report": report_id}
