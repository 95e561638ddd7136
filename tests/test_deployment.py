"""End to end through Prefect's deployment machinery: a throwaway `prefect server`, the work pool,
`prefect deploy --all` from prefect.yaml, a process worker, and the `pipeline/pipeline`
deployment run through the API on configs/micro.yaml.

The worker is started outside the repo with DISTILLERY_ROOT pointing at it, so the run only finds
the code if prefect.yaml's pull steps resolve the working directory on the worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"  # the CLI of the interpreter running the tests
# configs/micro.yaml takes about two minutes on 2 idle cores; allow for a busy machine.
RUN_TIMEOUT_S = float(os.environ.get("DISTILLERY_DEPLOY_TEST_TIMEOUT", 900))
STAGE_TABLES = [
    "prepare-{d}", "base-all", "train-expert-{d}", "dsa-warmup-{d}", "generate-{d}", "verify-{d}", "mixture-all", "distill-all", "baseline-all",
    "evaluate-all", "report-all",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"({path.name}: no output)"
    text = path.read_text(errors="replace").splitlines()
    return f"--- last {min(lines, len(text))} lines of {path} ---\n" + "\n".join(text[-lines:])


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group we started and every descendant (flow runs get their own groups), then SIGKILL."""
    pids = [proc.pid, *_descendants(proc.pid)]
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for pid in pids[1:]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids[1:]):
        time.sleep(0.2)
    for pid in [p for p in pids if _alive(p)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]
    logs: Path
    worker_cwd: Path
    processes: dict[str, subprocess.Popen]

    def dump_logs(self) -> None:
        for name in ["server", "work-pool", "deploy", "worker"]:
            print(_tail(self.logs / f"{name}.log"), file=sys.stderr)

    def start(self, name: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = proc
        return proc

    def cli(self, name: str, args: list[str], cwd: Path, timeout: float) -> None:
        with open(self.logs / f"{name}.log", "wb") as out:
            rc = subprocess.run(args, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        if rc != 0:
            self.dump_logs()
            pytest.fail(f"`{' '.join(map(str, args[1:]))}` exited {rc}\n{_tail(self.logs / f'{name}.log')}")


@pytest.fixture
def prefect_stack(tmp_path: Path):
    logs, home, worker_cwd = tmp_path / "logs", tmp_path / "prefect-home", tmp_path / "worker-cwd"
    for d in (logs, home, worker_cwd):
        d.mkdir()
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DISTILLERY_ROOT"}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    stack = Stack(api_url, env, logs, worker_cwd, {})
    try:
        server = stack.start("server", [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path, env)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not become healthy\n{_tail(logs / 'server.log')}")
            time.sleep(1)
        stack.cli("work-pool", [str(PREFECT), "work-pool", "create", "distillery", "--type", "process"], tmp_path, 120)
        # Deploy without DISTILLERY_ROOT in the environment, as prefect.yaml asks.
        stack.cli("deploy", [str(PREFECT), "--no-prompt", "deploy", "--all"], REPO, 300)
        stack.start(
            "worker",
            [str(PREFECT), "worker", "start", "--pool", "distillery", "--type", "process"],
            worker_cwd,  # not the repo: the pull step must move the run there
            {**env, "DISTILLERY_ROOT": str(REPO)},
        )
        yield stack
    finally:
        for name in ["worker", "server"]:
            if name in stack.processes:
                _stop(stack.processes[name])


def test_pipeline_deployment_runs_on_a_process_worker(prefect_stack: Stack, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
        LogFilterLevel,
    )
    from prefect.client.schemas.sorting import LogSort
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.config import load_config

    run_root = tmp_path / "run"
    config = load_config(REPO / "configs" / "micro.yaml", [f"run_root={run_root}"])
    stack = prefect_stack
    started = time.monotonic()
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.api_url, PREFECT_HOME: stack.env["PREFECT_HOME"]}):
            with get_client(sync_client=True) as client:
                deployments = {
                    f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()
                }
                assert sorted(deployments) == sorted(
                    [
                        "pipeline/pipeline", "prepare/prepare", "base/base", "train_expert/train-expert", "dsa_warmup/dsa-warmup",
                        "generate/generate", "verify/verify", "mixture/mixture", "distill/distill", "baseline/baseline", "evaluate/evaluate",
                        "report/report",
                    ]
                )
                for d in deployments.values():
                    assert d.work_pool_name == "distillery"
                    # Resolved on the worker, not frozen to the deployer's path.
                    assert d.pull_steps[0] == {
                        "prefect.deployments.steps.set_working_directory": {"directory": "{{ $DISTILLERY_ROOT }}"}
                    }
                pipeline_schema = deployments["pipeline/pipeline"].parameter_openapi_schema
                assert {"config", "config_file", "overrides"} <= set(pipeline_schema["properties"])
                assert "PipelineConfig" in pipeline_schema["definitions"]  # the UI form knows every field

                # As a user fills the form: a config file and command-line style overrides.
                flow_run = run_deployment(
                    "pipeline/pipeline",
                    client=client,
                    parameters={"config_file": "configs/micro.yaml", "overrides": [f"run_root={run_root}"]},
                    timeout=0,
                )
                timed_out = False
                while not flow_run.state.is_final():
                    if time.monotonic() - started > RUN_TIMEOUT_S:
                        timed_out = True
                        break
                    if stack.processes["worker"].poll() is not None:
                        pytest.fail(f"the worker exited with {stack.processes['worker'].returncode}")
                    time.sleep(3)
                    flow_run = client.read_flow_run(flow_run.id)
                elapsed = time.monotonic() - started

                runs, todo = {flow_run.id: flow_run}, [flow_run.id]
                while todo:  # the stage subflows, nested ones included
                    children = client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[todo.pop()]))
                    )
                    for child in children:
                        if child.id not in runs:
                            runs[child.id] = child
                            todo.append(child.id)
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=list(runs)), type=ArtifactFilterType(not_any_=["progress"])
                    ),
                    limit=200,
                )
                by_key = {a.key: a for a in artifacts if a.key}
                pull_logs = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])), limit=200, sort=LogSort.TIMESTAMP_ASC
                )
                errors = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(runs)), level=LogFilterLevel(ge_=40)),
                    limit=50,
                    sort=LogSort.TIMESTAMP_ASC,
                )

        flow_names = {d.flow_id: name.split("/")[0] for name, d in deployments.items()}
        subflows = sorted(f"{flow_names.get(r.flow_id, r.flow_id)}:{r.state.type.value}" for r in runs.values() if r.id != flow_run.id)
        print(
            f"\nflow run {flow_run.name} ({flow_run.id}): {flow_run.state.type.value} after {elapsed:.0f}s on "
            f"work pool {flow_run.work_pool_name!r}; {len(subflows)} subflow runs ({', '.join(subflows)}); "
            f"artifact keys: {sorted(by_key)}"
        )
        assert not timed_out, f"flow run still {flow_run.state.type.value} after {RUN_TIMEOUT_S:.0f}s (subflows: {', '.join(subflows)})"
        assert flow_run.work_pool_name == "distillery" and flow_run.deployment_id == deployments["pipeline/pipeline"].id
        messages = [log.message for log in pull_logs]
        assert any("set_working_directory" in m and "completed successfully" in m for m in messages), messages[:20]
        assert flow_run.state.is_completed(), (
            f"flow run {flow_run.state.type.value}: {flow_run.state.message}\n"
            + "\n".join(f"[{log.level}] {log.message[-2000:]}" for log in errors)
        )

        assert (run_root / "report.md").exists()
        report = by_key.get("pipeline-report")
        assert report is not None and report.type == "markdown", sorted(by_key)
        assert "Held-out accuracy" in report.data
        expected = sorted({key.format(d=d) for key in STAGE_TABLES for d in config.domains})
        missing = [key for key in expected if key not in by_key]
        assert not missing, f"missing stage artifacts {missing}; got {sorted(by_key)}"
        assert all(by_key[key].type == "table" for key in expected)
        assert all(r.state.is_completed() for r in runs.values())
        assert {r.flow_id for r in runs.values()} >= {deployments[n].flow_id for n in deployments if n != "pipeline/pipeline"}
    except BaseException:
        stack.dump_logs()
        raise
