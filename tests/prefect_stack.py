"""A throwaway Prefect stack, as `make ui` builds it: `prefect server` on a free loopback port, the
`distillery` process work pool, every deployment of prefect.yaml, and a process worker.

The worker is started outside the repo with DISTILLERY_ROOT pointing at a copy of the source, so
a run only finds the code if prefect.yaml's pull steps resolve the working directory on the
worker, and a run with the default relative `run_root` writes under the test's temp dir, never
into the checkout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"  # the CLI of the interpreter running the tests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
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
    url: str  # the UI; the API is under /api
    env: dict[str, str]
    logs: Path
    source: Path  # the worker's DISTILLERY_ROOT
    processes: dict[str, subprocess.Popen]

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def dump_logs(self) -> None:
        for name in ["server", "work-pool", "deploy", "worker"]:
            print(tail(self.logs / f"{name}.log"), file=sys.stderr)

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
            pytest.fail(f"`{' '.join(map(str, args[1:]))}` exited {rc}\n{tail(self.logs / f'{name}.log')}")


@contextmanager
def start_stack(base: Path, source: Path) -> Iterator[Stack]:
    """Server, work pool, deployments and worker under `base`; the worker runs flows in `source`."""
    logs, home, worker_cwd = base / "logs", base / "prefect-home", base / "worker-cwd"
    for d in (logs, home, worker_cwd):
        d.mkdir()
    url = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DISTILLERY_ROOT"}
    # The server hands PREFECT_API_URL to the UI it serves: without it the UI calls port 4200.
    env.update(
        PREFECT_HOME=str(home), PREFECT_API_URL=f"{url}/api", PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
    )
    stack = Stack(url, env, logs, source, {})
    try:
        server = stack.start("server", [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]], base, env)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{stack.api_url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not become healthy\n{tail(logs / 'server.log')}")
            time.sleep(1)
        stack.cli("work-pool", [str(PREFECT), "work-pool", "create", "distillery", "--type", "process"], base, 120)
        # Deploy without DISTILLERY_ROOT in the environment, as prefect.yaml asks.
        stack.cli("deploy", [str(PREFECT), "--no-prompt", "deploy", "--all"], REPO, 300)
        stack.start(
            "worker",
            [str(PREFECT), "worker", "start", "--pool", "distillery", "--type", "process"],
            worker_cwd,  # not the source: the pull step must move the run there
            {**env, "DISTILLERY_ROOT": str(source)},
        )
        yield stack
    finally:
        for name in ["worker", "server"]:
            if name in stack.processes:
                _stop(stack.processes[name])


def flow_runs_below(client, flow_run_id) -> dict:
    """Every flow run under `flow_run_id` (its stage subflows, nested ones included), by id; `client` a sync Prefect client."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    runs, todo = {}, [flow_run_id]
    while todo:
        for child in client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[todo.pop()]))):
            if child.id not in runs:
                runs[child.id] = child
                todo.append(child.id)
    return runs
