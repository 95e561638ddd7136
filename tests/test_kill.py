"""Kill anywhere: SIGKILL `distillery run` inside each stage at a random point, run it again, and
compare every artifact with an uninterrupted run's; and the uninterrupted runs themselves, on both
runners and one shared catalog.

The uninterrupted runs (configs/micro.yaml: code and math, every stage) start together: two
`distillery run`s on one run root on the threads runner (they meet on the stages' locks) and one on
a real Ray cluster on another root, all three against one catalog on a real PostgreSQL server. The
Ray run's artifacts must equal the threads runner's.

The kill runs form one chain: each run finishes the stage the previous one was killed in, then is
killed inside the next stage, either at a random fraction of that stage's wall time in the
uninterrupted run or at the moment its first write is under way (a temporary file appears in one
of its output directories: the window in which a half-written file could show under its final
name). CI kills four stages, one of each way a stage writes (tables, a trained checkpoint,
streamed generation shards, the report directory), within CI's time budget; the nightly-sized
test kills every stage at three more random points (`pytest -m nightly tests/test_kill.py`).

A kill the stage beats (a write too short for the poller to see, a sub-second stage faster than in
the reference run) is reported, not failed; more than half the kills must land inside their stage.

After every kill: no catalog row names an incomplete or changed file, and no file under a final
name is damaged (`doctor` finds nothing but dead writers' temporary files and complete files the
catalog had not been told of yet). The kill config snapshots its training phases every 0.6 s
(`experts.snapshot`): no later run trains a phase from its start while a snapshot of it is there
(it resumes from the snapshot, and says so, or never reaches that phase). After the last run: no
temporary file and no work directory anywhere, `doctor` finds nothing, and every artifact's
content equals the uninterrupted run's, resumed phases included.

The test of a Ray worker lost during generate starts from a copy of the threads runner's root.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from data import tables
from data.catalog import CATALOG_FILE, ROOT_ID_FILE, Catalog
from data.doctor import doctor
from data.integrity import fingerprint
from data.temporary import is_temporary, leftovers
from flows.config import load_config
from flows.plan import plan
from postgres_server import postgres_server
from prefect_stack import flow_runs_below
from ray_cluster import ray_cluster

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "micro.yaml"  # code and math, every stage: about two minutes
# Each stage in the order it first starts (the baseline trains beside the experts).
ORDER = [
    ("prepare", "code"), ("prepare", "math"), ("base", None), ("baseline", None), ("train_expert", "code"), ("train_expert", "math"),
    ("dsa_warmup", "code"), ("dsa_warmup", "math"), ("generate", "code"), ("generate", "math"), ("verify", "code"), ("verify", "math"),
    ("mixture", None), ("distill", None), ("evaluate", None), ("report", None),
]
# One stage of each way of writing; the others write the same ways (base, dsa_warmup, distill and
# baseline as train_expert: a checkpoint directory; verify, mixture and evaluate as prepare: tables;
# generate: shards, then their merge; report: a directory, then its copies beside the catalog).
CI_STAGES = [("prepare", "code"), ("train_expert", "code"), ("generate", "code"), ("report", None)]
COMPUTING = re.compile(r" - (\w+)(?:\[(\w+)\])?: computing ")
# What a kill may leave: a dead writer's temporary file (the next run sweeps it), a complete file
# whose catalog row was not written yet (the next run writes it again, atomically), no catalog yet
# in a run root that holds only the first stage's lock or its first half-written file, and the work
# directory of an artifact saved just before the kill (the next run removes it).
HARMLESS = {"orphan_temp", "uncatalogued", "catalog_missing", "finished_work"}
RUN_TIMEOUT_S = 900
SHARD_ROWS = 8  # the lost-worker test's shards and batches: small, for a kill window of some seconds
# One torch thread a run and a Ray task: runs of two threads each on two cores spin-wait on each
# other (evaluate 4 s alone, 35 s so), and the last bits of a result depend on the count, which
# must be the same on both runners for their artifacts to be equal.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ray_address():
    """A real Ray cluster, a head and one worker node on this machine, for the tests of the Ray runner."""
    with ray_cluster(workers=1) as (address, _):
        yield address


@pytest.fixture(scope="module")
def api_url():
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


class Run:
    """`distillery run` on the kill config in its own process group; its log goes to ``log``."""

    def __init__(self, root: Path, api_url: str, log: Path, kill_in: tuple[str, str | None] | None = None, settings: tuple[str, ...] = (),
                 command: tuple[str, ...] = ("run",), env: dict[str, str] | None = None):
        # Ray's driver prints every worker's log lines, the same lines of two workers too.
        env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0", **ONE_THREAD,
               **(env or {})}
        sets = [f"run_root={root}", *settings]
        args = [sys.executable, "-m", "flows.cli", *command, "--config", str(CONFIG), *(a for o in sets for a in ("--set", o))]
        self.log, self.kill_in = log, kill_in
        self.started: float | None = None  # when the stage to kill started computing
        self.computing = threading.Event()
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log, "a", buffering=1) as out:  # line by line: tests read the log while the run goes on
            for line in self.proc.stdout:
                out.write(line)
                match = COMPUTING.search(line)
                if match and match.groups() == self.kill_in and not self.computing.is_set():
                    self.started = time.monotonic()
                    self.computing.set()

    def finish(self) -> None:
        try:
            rc = self.proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            self.kill()
        assert rc == 0, f"run exited {rc}:\n{self.log.read_text()[-4000:]}"

    def kill_after(self, delay: float) -> None:
        """SIGKILL the whole process group ``delay`` seconds after the stage started computing."""
        self._wait_computing()
        time.sleep(max(0.0, self.started + delay - time.monotonic()))
        self.kill()

    def kill_at_write(self, directories: list[Path], done: Callable[[], bool]) -> bool:
        """SIGKILL the whole process group as soon as a temporary file in one of the stage's output
        ``directories`` shows that its write is under way; False if the stage was ``done`` first."""
        self._wait_computing()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        writing, next_check = False, time.monotonic() + 1
        # Only the stage's own directories, by listing: a small table's write is open for about a
        # millisecond, too short for a walk of the whole run root to see reliably.
        while not writing and self.proc.poll() is None and time.monotonic() < deadline:
            writing = any(_temporary_in(d) for d in directories)
            if not writing and time.monotonic() > next_check:
                if done():  # a write missed (the poller descheduled): stop before the next stage
                    break
                next_check = time.monotonic() + 1
            time.sleep(0.0002)
        self.kill()
        return writing

    def _wait_computing(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not self.computing.wait(timeout=1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{self.kill_in} never started computing (exit {self.proc.returncode}):\n{self.log.read_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the run's whole process group: the run, or after it exited whatever it left behind."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.reader.join(timeout=10)


def finish_all(runs: list[Run]) -> None:
    """Wait for every run to exit 0; if one fails, the others are killed rather than left running."""
    try:
        for run in runs:
            run.finish()
    finally:
        for run in runs:
            run.kill()


def _temporary_in(directory: Path) -> bool:
    try:
        return any(is_temporary(name) for name in os.listdir(directory))
    except FileNotFoundError:
        return False


def planned(root: Path, url: str | None = None, settings: tuple[str, ...] = ()) -> tuple[Catalog, dict]:
    """The run root's catalog (its own file, or the one at `url`) and the plan of the kill config there (with `settings`)."""
    catalog = Catalog(root, url)
    return catalog, plan(load_config(CONFIG, [f"run_root={root}", *settings]), catalog)


def contents(root: Path, url: str | None = None, settings: tuple[str, ...] = ()) -> dict[tuple, str]:
    """(stage, domain, name) -> a hash of the artifact's content: a dataset's values, a directory's files."""
    catalog, items = planned(root, url, settings)
    out = {}
    for key, item in items.items():
        path = catalog.resolve(catalog.get(item.id))
        out[key] = tables.digest(tables.read_table(path)) if item.kind == "dataset" else fingerprint(path)
    return out


def output_directories(root: Path, stage: str, domain: str | None) -> list[Path]:
    """Where (stage, domain) writes its outputs (the same whatever their ids)."""
    _, items = planned(root)
    return sorted({(root / item.uri).parent for (s, d, _), item in items.items() if (s, d) == (stage, domain)})


def missing_outputs(root: Path, stage: str, domain: str | None) -> list[str]:
    """The planned outputs of (stage, domain) the catalog does not list."""
    catalog, items = planned(root)
    done = {r.id for r in catalog.list()} if catalog.exists() else set()
    return [name for (s, d, name), item in items.items() if (s, d) == (stage, domain) and item.id not in done]


def unfinished_snapshots(root: Path) -> dict[Path, int]:
    """The training snapshots (`experts.snapshot`) of stages whose outputs are not saved yet: path -> the step it holds.
    A stage's snapshots are in its work directory, `.work/<first output id>/`."""
    catalog = Catalog(root)
    done = {r.id for r in catalog.list()} if catalog.exists() else set()
    found = root.glob(".work/*/*.pt")  # not a temporary name: those end in the writer's pid
    return {p: torch.load(p, map_location="cpu", weights_only=True)["step"] for p in sorted(found) if p.parent.name not in done}


def _steps(snapshots: dict[Path, int]) -> str:
    return ", ".join(f"{path.stem}@{step}" for path, step in snapshots.items()) or "-"


def check_resumed(snapshots: dict[Path, int], log: str) -> str:
    """A run never trains a phase again from its start when a snapshot of it is there: each snapshot
    the last kill left was resumed from (its line in this run's `log`), or is still there unchanged
    (this run never reached that phase). Returns the resumed ones."""
    resumed = {}
    for path, step in snapshots.items():
        if f"resumed from {path} at step {step}" in log:
            resumed[path] = step
        else:
            assert path.is_file() and torch.load(path, weights_only=True)["step"] == step, f"{path} (step {step}): neither resumed from nor left as it was"
    return _steps(resumed)


def copy_before(reference_root: Path, root: Path, stages: tuple[str, ...]) -> None:
    """Copy the reference run root to `root` without the outputs of `stages` and of every stage after
    them. The reference's rows are on the PostgreSQL server; the copy gets an id and a catalog file
    of its own, rebuilt from its artifacts' records (`distillery doctor --repair`)."""
    shutil.copytree(reference_root, root)
    (root / ROOT_ID_FILE).unlink()
    doctor(root, repair=True)
    catalog, items = planned(root)
    first = min(i for i, (stage, _) in enumerate(ORDER) if stage in stages)
    later = {stage for stage, _ in ORDER[first:]}
    for (stage, _, _), item in items.items():
        if stage in later:
            path = catalog.resolve(catalog.get(item.id))
            catalog.remove(item.id)
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def two_runs_at_once(root: Path, api_url: str) -> None:
    """Two `distillery run`s started together on one run root, as two people might (`check_two_runs`)."""
    logs = [root.parent / f"{root.name}-{i}.log" for i in (1, 2)]
    finish_all([Run(root, api_url, log) for log in logs])
    check_two_runs(root, logs)


def check_two_runs(root: Path, logs: list[Path], url: str | None = None) -> None:
    """Both runs finished, every stage was computed by one of them (the other waited on the stage's
    lock, told who held it, then skipped it), and nothing is left half-written or catalogued twice."""
    text = "".join(log.read_text() for log in logs)
    computed = [m.groups() for m in COMPUTING.finditer(text)]
    assert sorted(computed, key=str) == sorted(set(computed), key=str) and set(computed) == set(ORDER), computed
    assert re.search(r": waiting for another run on .* \(pid \d+ on ", text), "the two runs never met on a stage"
    ids = [r.id for r in Catalog(root, url).list()]
    assert len(ids) == len(set(ids)) and leftovers(root) == [] and doctor(root, url=url).problems == []


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, api_url, ray_address, postgres_url) -> tuple[dict[str, Path], int]:
    """The uninterrupted runs, all at once against one catalog on a real PostgreSQL server (started
    on loopback, stopped after the module): two `distillery run`s on the threads runner on one run
    root, and one on the Ray cluster on another. Their roots (tests only read them) and the Ray run's pid."""
    parent = tmp_path_factory.mktemp("reference")
    roots = {"threads": parent / "threads", "ray": parent / "ray"}
    catalog = f"catalog.url={postgres_url}"
    on_threads = [Run(roots["threads"], api_url, parent / f"threads-{i}.log", settings=(catalog,)) for i in (1, 2)]
    on_cluster = Run(roots["ray"], api_url, parent / "ray.log", settings=(catalog, *on_ray(ray_address)))
    finish_all([*on_threads, on_cluster])
    return roots, on_cluster.proc.pid


@pytest.fixture(scope="module")
def reference_root(uninterrupted) -> Path:
    return uninterrupted[0]["threads"]


@pytest.fixture(scope="module")
def reference(reference_root, postgres_url) -> tuple[dict[tuple, str], dict[tuple, float]]:
    """The uninterrupted run's every artifact's content hash, and each (stage, domain)'s wall time."""
    seconds = {(r.stage, r.domain): r.metrics["seconds"] for r in Catalog(reference_root, postgres_url).list()}
    return contents(reference_root, postgres_url), seconds


def test_two_runs_on_one_run_root_at_once(reference_root, postgres_url):
    check_two_runs(reference_root, sorted(reference_root.parent.glob("threads-*.log")), postgres_url)


def kill_stages(root: Path, api_url: str, reference: tuple[dict, dict], seed: int, stages: list[tuple[str, str | None]]) -> list[str]:
    """Kill a run inside each of `stages` in turn (in ORDER's order), at a random time or at a random
    stage's first write (where a half-written file could show); then one run to the end. A line per kill."""
    expected, seconds = reference
    rng = random.Random(seed)
    log = root.parent / f"seed-{seed}.log"
    lines, landed, left = [], 0, {}
    for stage, domain in stages:
        fraction, at_write = rng.uniform(0.05, 0.8), rng.random() < 0.5
        read = log.stat().st_size if log.exists() else 0
        run = Run(root, api_url, log, kill_in=(stage, domain))
        if at_write:
            writing = run.kill_at_write(output_directories(root, stage, domain), lambda: not missing_outputs(root, stage, domain))
        else:
            run.kill_after(fraction * seconds[stage, domain])
        problems = doctor(root).problems if root.exists() else []  # killed before the run root was made
        assert not [p for p in problems if p.kind not in HARMLESS], [str(p) for p in problems]
        missing = missing_outputs(root, stage, domain)
        where = f"{stage}[{domain}]" if domain else stage
        # A kill lands inside the stage unless the stage beat it: its write too short for the poller
        # to see, or a sub-second stage faster than in the reference run. Those are counted, not failed.
        if at_write:
            when = "during a write" if writing else "after (write not seen)"
        else:
            when = f"at {fraction:.2f} of {seconds[stage, domain]:.1f} s" + ("" if missing else " (after)")
        landed += bool(writing if at_write else missing)
        resumed = check_resumed(left, log.read_text()[read:])
        left = unfinished_snapshots(root)
        lines.append(f"{where:19} killed {when:21} missing: {', '.join(missing) or '-':18} left: {len(leftovers(root))} temporary, "
                     f"{sum(p.kind == 'uncatalogued' for p in problems)} uncatalogued, snapshots {_steps(left)}; resumed {resumed}")
    assert landed > len(stages) // 2, f"only {landed} of {len(stages)} kills landed inside their stage:\n" + "\n".join(lines)
    read = log.stat().st_size
    Run(root, api_url, log).finish()
    lines.append(f"last run resumed {check_resumed(left, log.read_text()[read:])}")
    assert not list(root.glob(".work/*")), "a finished stage left its work directory"
    assert leftovers(root) == []  # every writer has exited: any temporary name would be here
    assert doctor(root).problems == []
    assert contents(root) == expected
    return lines


def test_kill_a_stage_of_each_kind_and_recover(tmp_path, api_url, reference):
    assert set(CI_STAGES) <= set(ORDER)
    lines = kill_stages(tmp_path / "run", api_url, reference, int(os.environ.get("DISTILLERY_KILL_SEED", 0)), [s for s in ORDER if s in CI_STAGES])
    print("\n".join(lines))


def test_generate_on_ray_survives_a_lost_worker(tmp_path, api_url, reference_root, postgres_url, ray_address):
    """SIGKILL the Ray worker of one of the generate stage's two parts once it has finished a shard:
    Ray runs the part again in a new worker, which resumes after the part's finished shards, and the
    stage completes with every job exactly once and the completions of the uninterrupted run.

    Small shards and batches (`SHARD_ROWS`) give the kill a window of some seconds.
    """
    root, log = tmp_path / "run", tmp_path / "generate.log"
    copy_before(reference_root, root, ("generate",))
    killed, at_kill, inodes = None, 0, {}  # shard -> every inode seen under its name: two would be a rewrite
    settings = (*on_ray(ray_address), f"generate.shard_rows={SHARD_ROWS}", f"generate.engine.batch_size={SHARD_ROWS}")
    run = Run(root, api_url, log, settings=settings, command=("stage", "generate", "--domain", "code"))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while run.proc.poll() is None and time.monotonic() < deadline:
        for shard in root.glob(".work/*/part-*/shard-*.parquet"):
            with contextlib.suppress(FileNotFoundError):  # the merge removes the parts
                inodes.setdefault(shard.relative_to(root), set()).add(shard.stat().st_ino)
        second = sorted(root.glob(".work/*/part-001-of-002/shard-*.parquet"))
        pid = re.search(r"part 2/2 runs in pid (\d+)", log.read_text()) if log.exists() else None
        if killed is None and pid and second:
            killed, at_kill = int(pid.group(1)), len(second)
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    run.finish()
    text = log.read_text()
    jobs_per_part = 64  # 16 prompts of 8 samples, 2 parts
    assert killed is not None and at_kill < jobs_per_part // SHARD_ROWS, f"the kill must land inside the part ({at_kill} shards)"
    pids = set(re.findall(r"part 2/2 runs in pid (\d+)", text))
    assert str(killed) in pids and len(pids) == 2, f"Ray did not run the lost part again: {pids}"
    assert all(len(seen) == 1 for seen in inodes.values()), {str(k): v for k, v in inodes.items() if len(v) > 1}
    assert leftovers(root) == [] and doctor(root).problems == [] and not any((root / ".work").iterdir())

    def completions(run_root: Path, url: str | None = None) -> list[tuple]:
        catalog = Catalog(run_root, url)
        (record,) = catalog.list(stage="generate", domain="code")
        rows = tables.read_rows(catalog.resolve(record))
        return sorted((r["task_id"], r["sample"], tuple(r["token_ids"]), r["completion"]) for r in rows)

    got = completions(root)
    assert len(got) == len({r[:2] for r in got}) == 2 * jobs_per_part  # no job lost, none twice
    assert got == completions(reference_root, postgres_url)  # each job samples with its own seed, wherever it ran
    tasks, _ = ui_view(re.search(r"runs/flow-run/([0-9a-f-]{36})", text).group(1))
    assert tasks == {"generate_part": ["COMPLETED"] * 2}, tasks


def test_a_pipeline_on_ray_makes_the_threads_runners_artifacts_and_both_share_a_postgres_catalog(uninterrupted, postgres_url):
    """configs/micro.yaml (code and math, every stage, from an empty run root) on the Ray cluster (a
    head and one worker node on this machine), at the same time as the threads runner's two runs on
    another root, against one catalog on PostgreSQL (the `uninterrupted` runs).

    On Ray both branches (prepare, the expert with math's GRPO steps, its warm-up, generate, verify),
    the baseline and the generate stages' parts ran in Ray's worker processes; every artifact equals
    the threads runner's; each root's rows name its own intact files; `distillery ls` lists every
    artifact of both roots, once per root; and the Prefect UI shows the Ray tasks' states and the
    progress of the generate parts that ran on the cluster.
    """
    url, (roots, ray_pid) = postgres_url, uninterrupted
    text = (roots["ray"].parent / "ray.log").read_text()
    planned_here = planned(roots["ray"], url)[1]
    assert {m.groups() for m in COMPUTING.finditer(text)} == {(stage, domain) for stage, domain, _ in planned_here}
    places = dict(re.findall(r"(branch \w+|baseline|part \d/2) runs in pid (\d+)", text))
    assert {"branch code", "branch math", "baseline", "part 1/2", "part 2/2"} <= set(places), text[-4000:]
    assert str(ray_pid) not in places.values()  # not threads of the run's own process
    assert contents(roots["ray"], url) == contents(roots["threads"], url)
    for root in roots.values():
        assert leftovers(root) == [] and doctor(root, url=url).problems == [] and not (root / CATALOG_FILE).exists()
    ids = {item.id for item in planned_here.values()}
    listed = cli("ls", "--root", str(roots["ray"]), "--catalog", url).splitlines()[1:]
    assert sorted((line.split()[0], line.split()[-1]) for line in listed) == sorted((i, str(r.resolve())) for i in ids for r in roots.values())
    tasks, stages = ui_view(re.search(r"runs/flow-run/([0-9a-f-]{36})", text).group(1))
    assert tasks == {"domain_branch": ["COMPLETED"] * 2, "no_expert_baseline": ["COMPLETED"], "generate_part": ["COMPLETED"] * 4}, tasks
    assert stages["generate"] == [("COMPLETED", [100.0, 100.0])] * 2, stages


def cli(*args: str) -> str:
    """stdout of a `distillery` command that must succeed."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"distillery {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def on_ray(address: str) -> tuple[str, ...]:
    """Settings of a run on the Ray cluster at `address`, one torch thread a task (`ONE_THREAD`)."""
    return "execution.runner=ray", f"execution.address={address}", "execution.threads=1"


RAY_TASKS = ("domain_branch", "no_expert_baseline", "generate_part")


def ui_view(flow_run_id: str) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, list[float]]]]]:
    """From the Prefect API, over a flow run and every flow run below it: the Ray tasks' runs by task
    name -> their states, and the flow runs by flow name -> [(state, the values its progress artifacts ended at)]."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with get_client(sync_client=True) as client:
        top = UUID(flow_run_id)
        runs = {top: client.read_flow_run(top), **flow_runs_below(client, top)}
        tasks: dict[str, list[str]] = {}
        for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(runs))), limit=200):
            if t.name.startswith(RAY_TASKS):
                tasks.setdefault(t.name.rsplit("-", 1)[0], []).append(t.state.type.value)
        bars = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=list(runs)), type=ArtifactFilterType(any_=["progress"])), limit=200)
        names = {r.flow_id: client.read_flow(r.flow_id).name for r in runs.values()}
    stages: dict[str, list[tuple[str, list[float]]]] = {}
    for r in runs.values():
        stages.setdefault(names[r.flow_id], []).append((r.state.type.value, sorted(float(a.data) for a in bars if a.flow_run_id == r.id)))
    return tasks, stages


@pytest.mark.nightly
@pytest.mark.parametrize("repetition", [1, 2, 3, 4])
def test_two_runs_at_once_again(tmp_path, api_url, reference, repetition):
    """Four more pairs (the reference run is the first): the same artifacts every time."""
    two_runs_at_once(tmp_path / "run", api_url)
    assert contents(tmp_path / "run") == reference[0]


@pytest.mark.nightly
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_each_stage_at_more_points(tmp_path, api_url, reference, seed):
    lines = kill_stages(tmp_path / "run", api_url, reference, seed, ORDER)
    print("\n".join(lines))
