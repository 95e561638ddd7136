"""Where the pipeline's parallel work runs: threads of its own process, or tasks on a Ray cluster.

The domain branches (expert, warm-up, generate, verify) and the baseline are the work that can run
side by side. Under `execution.runner: ray` they go through prefect-ray's `RayTaskRunner`, each a
Ray task with the resources `execution.resources` names, so a branch lands on whichever node has
its GPU free; the stages they run write to the shared run root and catalog exactly as they do in one
process, and their artifact ids do not depend on the runner (execution is in no stage's identity).
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.config import ExecutionConfig


def task_runner(execution: ExecutionConfig) -> TaskRunner:
    """A fresh (unstarted) runner for the pipeline's parallel tasks; enter it to start it."""
    if execution.runner == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=execution.address)
    return ThreadPoolTaskRunner(max_workers=8)


def submit(runner: TaskRunner, execution: ExecutionConfig, role: str, task: Task, **parameters: Any) -> PrefectFuture:
    """`task(**parameters)` on `runner`, asking Ray for `execution.resources[role]` when the runner is Ray."""
    options = execution.resources.get(role)
    wanted = {} if options is None else options.model_dump(exclude_none=True)
    with _remote_options(execution, wanted):
        return runner.submit(task, parameters)


def set_task_threads(execution: ExecutionConfig, role: str) -> None:
    """In a Ray task: torch's intra-op threads, `execution.threads` or else the CPUs the task asked Ray for.

    A result's last bits depend on the thread count (reductions split differently), so a run on Ray
    makes the same artifacts as one on threads only with the same count; Ray starts its workers with
    OMP_NUM_THREADS=1 whatever the machine has. Threads of the pipeline's own process keep its setting.
    """
    if execution.runner != "ray":
        return
    import torch

    options = execution.resources.get(role)
    cpus = None if options is None else options.num_cpus
    torch.set_num_threads(execution.threads or max(1, int(cpus or 1)))


def _remote_options(execution: ExecutionConfig, options: dict[str, float]) -> contextlib.AbstractContextManager:
    if execution.runner != "ray" or not options:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(**options)
