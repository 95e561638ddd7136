"""Where the pipeline's parallel work runs: threads of its own process, or tasks on a Ray cluster.

The domain branches (expert, warm-up, generate, verify), the baseline and the generate stage's
parts are the work that can run side by side. Under `execution.runner: ray` they go through
prefect-ray's `RayTaskRunner`, each a Ray task with the resources `execution.resources` names, so a
branch lands on whichever node has its GPU free. They write to the shared run root and catalog
exactly as they would in one process, and their artifact ids do not depend on the runner (execution
is in no stage's identity). Ray runs a task again when its worker process dies (three times by
default): a generate part then resumes from the shards it had finished.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.config import ExecutionConfig


def task_runner(execution: ExecutionConfig, threads: int = 8) -> TaskRunner:
    """A fresh (unstarted) runner for parallel tasks, with at most `threads` of them at once on threads;
    enter it to start it. Inside a Ray task, the Ray runner joins the cluster that task runs on."""
    if execution.runner == "ray":
        from prefect.client.orchestration import get_client
        from prefect_ray import RayTaskRunner

        # Workers report to the API this process reports to: set PREFECT_API_URL, or its temporary
        # local server (reachable from this machine's Ray workers only) which the tasks' context does not carry.
        with get_client(sync_client=True) as client:
            api = str(client.api_url)
        return RayTaskRunner(address=execution.address, init_kwargs={"runtime_env": {"env_vars": {"PREFECT_API_URL": api}}})
    return ThreadPoolTaskRunner(max_workers=threads)


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
