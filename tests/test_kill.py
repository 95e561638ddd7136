"""Kill anywhere: SIGKILL `distillery run` inside each stage at a random point, run it again, and
compare every artifact with an uninterrupted run's.

The runs form one chain: each run finishes the stage the previous one was killed in, then is
killed inside the next stage, either at a random fraction of that stage's wall time in the
uninterrupted run or at the moment its first write is under way (a temporary file appears in one
of its output directories: the window in which a half-written file could show under its final
name). CI kills six stages, one of each way a stage writes (tables, a trained checkpoint,
streamed generation shards, their verification, the student, the report directory), within CI's
time budget; the nightly-sized test kills every stage at three more random points
(`pytest -m nightly tests/test_kill.py`).

A kill the stage beats (a write too short for the poller to see, a sub-second stage faster than in
the reference run) is reported, not failed; more than half the kills must land inside their stage.

After every kill: no catalog row names an incomplete or changed file, and no file under a final
name is damaged (`doctor` finds nothing but dead writers' temporary files and complete files the
catalog had not been told of yet). After the last run: no temporary file anywhere, `doctor` finds
nothing, and every artifact's content equals the uninterrupted run's.

The uninterrupted run also serves the tests of the Ray runner and of a catalog shared on
PostgreSQL: they start from copies of its run root.
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
CONFIG = REPO / "configs" / "micro.yaml"  # every stage, about a minute with one domain
# One domain: the baseline still trains beside the expert, so a kill still lands on two writers at
# once, and a second branch would double the test's time without a kind of write of its own.
OVERRIDES = ["domains=[code]"]
# Each stage in the order it first starts (the baseline trains beside the expert).
ORDER = [
    ("prepare", "code"), ("base", None), ("baseline", None), ("train_expert", "code"), ("dsa_warmup", "code"), ("generate", "code"),
    ("verify", "code"), ("mixture", None), ("distill", None), ("evaluate", None), ("report", None),
]
# One stage of each way of writing; the others write the same ways (base, dsa_warmup, distill and
# baseline as train_expert: a checkpoint directory; verify, mixture and evaluate as prepare: tables;
# generate: shards, then their merge; report: a directory, then its copies beside the catalog).
CI_STAGES = [("prepare", "code"), ("train_expert", "code"), ("generate", "code"), ("report", None)]
COMPUTING = re.compile(r" - (\w+)(?:\[(\w+)\])?: computing ")
# What a kill may leave: a dead writer's temporary file (the next run sweeps it), a complete file
# whose catalog row was not written yet (the next run writes it again, atomically), and no catalog
# yet in a run root that holds only the first stage's lock or its first half-written file.
HARMLESS = {"orphan_temp", "uncatalogued", "catalog_missing"}
RUN_TIMEOUT_S = 900
SHARD_ROWS = 8  # the lost-worker test's shards and batches: small, for a kill window of some seconds


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
        env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0", **(env or {})}
        sets = [f"run_root={root}", *OVERRIDES, *settings]
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
    return catalog, plan(load_config(CONFIG, [f"run_root={root}", *OVERRIDES, *settings]), catalog)


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


def copy_before(reference_root: Path, root: Path, stages: tuple[str, ...]) -> None:
    """Copy the reference run root to `root` without the outputs of `stages` and of every stage after them."""
    shutil.copytree(reference_root, root)
    catalog, items = planned(root)
    first = min(i for i, (stage, _) in enumerate(ORDER) if stage in stages)
    later = {stage for stage, _ in ORDER[first:]}
    for (stage, _, _), item in items.items():
        if stage in later:
            path = catalog.resolve(catalog.get(item.id))
            catalog.remove(item.id)
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def two_runs_at_once(root: Path, api_url: str) -> None:
    """Two `distillery run`s started together on one run root, as two people might: both finish,
    every stage is computed by one of them (the other waits on the stage's lock, told who holds it,
    then skips it), and nothing is left half-written or catalogued twice."""
    logs = [root.parent / f"{root.name}-{i}.log" for i in (1, 2)]
    runs = [Run(root, api_url, log) for log in logs]
    finish_all(runs)
    text = "".join(log.read_text() for log in logs)
    computed = [m.groups() for m in COMPUTING.finditer(text)]
    assert sorted(computed, key=str) == sorted(set(computed), key=str) and set(computed) == set(ORDER), computed
    assert re.search(r": waiting for another run on .* \(pid \d+ on ", text), "the two runs never met on a stage"
    ids = [r.id for r in Catalog(root).list()]
    assert len(ids) == len(set(ids)) and leftovers(root) == [] and doctor(root).problems == []


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory, api_url) -> Path:
    """The uninterrupted run's root (two at once: `two_runs_at_once`); tests only read it."""
    root = tmp_path_factory.mktemp("reference") / "run"
    two_runs_at_once(root, api_url)
    return root


@pytest.fixture(scope="module")
def reference(reference_root) -> tuple[dict[tuple, str], dict[tuple, float]]:
    """The uninterrupted run's every artifact's content hash, and each (stage, domain)'s wall time."""
    seconds = {(r.stage, r.domain): r.metrics["seconds"] for r in Catalog(reference_root).list()}
    return contents(reference_root), seconds


def kill_stages(root: Path, api_url: str, reference: tuple[dict, dict], seed: int, stages: list[tuple[str, str | None]]) -> list[str]:
    """Kill a run inside each of `stages` in turn (in ORDER's order), at a random time or at a random
    stage's first write (where a half-written file could show); then one run to the end. A line per kill."""
    expected, seconds = reference
    rng = random.Random(seed)
    log = root.parent / f"seed-{seed}.log"
    lines, landed = [], 0
    for stage, domain in stages:
        fraction, at_write = rng.uniform(0.05, 0.8), rng.random() < 0.5
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
        lines.append(f"{where:19} killed {when:21} missing: {', '.join(missing) or '-':18} left: {len(leftovers(root))} temporary, "
                     f"{sum(p.kind == 'uncatalogued' for p in problems)} uncatalogued")
    assert landed > len(stages) // 2, f"only {landed} of {len(stages)} kills landed inside their stage:\n" + "\n".join(lines)
    Run(root, api_url, log).finish()
    assert leftovers(root) == []  # every writer has exited: any temporary name would be here
    assert doctor(root).problems == []
    assert contents(root) == expected
    return lines


def test_kill_a_stage_of_each_kind_and_recover(tmp_path, api_url, reference):
    assert set(CI_STAGES) <= set(ORDER)
    lines = kill_stages(tmp_path / "run", api_url, reference, int(os.environ.get("DISTILLERY_KILL_SEED", 0)), [s for s in ORDER if s in CI_STAGES])
    print("\n".join(lines))


def test_a_run_on_a_ray_cluster_makes_the_same_artifacts(tmp_path, api_url, reference_root, reference, ray_address):
    """`execution.runner: ray` on a real cluster (a head and one worker node on this machine): the branch,
    the baseline and the generate stage's two parts run as Ray tasks in Ray's worker processes, and
    every artifact equals the threads runner's.

    The run starts from a copy of the reference run root without its generate outputs and what
    follows them (CI's time): the branch's Ray task skips the expert and its warm-up and runs
    generate, whose parts are Ray tasks of their own, and verify; the baseline's Ray task skips.
    Both domains at every stage from an empty root: the nightly test below.
    """
    root, log = tmp_path / "run", tmp_path / "ray.log"
    copy_before(reference_root, root, ("generate",))
    run = Run(root, api_url, log, settings=on_ray(ray_address))
    run.finish()
    text = log.read_text()
    computed = {m.groups() for m in COMPUTING.finditer(text)}
    assert computed == {s for s in ORDER if ORDER.index(s) >= ORDER.index(("generate", "code"))}, computed
    places = dict(re.findall(r"(branch code|baseline|part \d/2) runs in pid (\d+)", text))
    assert set(places) == {"branch code", "baseline", "part 1/2", "part 2/2"}, text[-4000:]
    assert str(run.proc.pid) not in places.values()  # not threads of the run's own process
    assert leftovers(root) == [] and doctor(root).problems == []
    assert contents(root) == reference[0]
    # What the UI shows: the Ray tasks' states, and the progress of the parts that ran on the cluster.
    tasks, stages = ui_view(re.search(r"runs/flow-run/([0-9a-f-]{36})", text).group(1))
    assert tasks == {"domain_branch": ["COMPLETED"], "no_expert_baseline": ["COMPLETED"], "generate_part": ["COMPLETED"] * 2}, tasks
    state, bars = stages["generate"]
    assert state == "COMPLETED" and bars == [100.0, 100.0], (state, bars)


def test_generate_on_ray_survives_a_lost_worker(tmp_path, api_url, reference_root, ray_address):
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

    def completions(run_root: Path) -> list[tuple]:
        catalog = Catalog(run_root)
        (record,) = catalog.list(stage="generate")
        rows = tables.read_rows(catalog.resolve(record))
        return sorted((r["task_id"], r["sample"], tuple(r["token_ids"]), r["completion"]) for r in rows)

    got = completions(root)
    assert len(got) == len({r[:2] for r in got}) == 2 * jobs_per_part  # no job lost, none twice
    assert got == completions(reference_root)  # each job samples with its own seed, wherever it ran
    tasks, _ = ui_view(re.search(r"runs/flow-run/([0-9a-f-]{36})", text).group(1))
    assert tasks == {"generate_part": ["COMPLETED"] * 2}, tasks


def test_two_runs_on_two_run_roots_share_one_postgres_catalog(tmp_path, api_url, reference_root):
    """Two `distillery run`s on two run roots at once against one catalog on a real PostgreSQL server
    (started here on loopback, stopped at the end): both finish, each root's rows name its own intact
    files, the two roots hold the same artifacts, and `distillery ls` lists every artifact of both,
    once per root.

    Each root starts as a copy of the reference root without generate and what follows (CI's time;
    `pytest -m nightly tests/test_catalog.py` runs two whole pipelines), moved onto the server the
    way a user moves one: `distillery doctor --repair` with the server's url catalogues its files.
    One torch thread a run: two runs of two threads on two cores spin-wait on each other (evaluate
    4 s alone, 35 s so); results then differ from the two-thread reference in their last bits.
    """
    roots = [tmp_path / "alice", tmp_path / "bob"]
    with postgres_server() as url:
        for root in roots:
            copy_before(reference_root, root, ("generate",))
            (root / CATALOG_FILE).unlink()
            (root / ROOT_ID_FILE).unlink()  # a copy, not a move: an id of its own, else both roots would own the same rows
            doctor(root, repair=True, url=url)
        runs = [Run(root, api_url, tmp_path / f"{root.name}.log", settings=(f"catalog.url={url}",), env={"OMP_NUM_THREADS": "1"})
                for root in roots]
        finish_all(runs)
        text = "".join((tmp_path / f"{root.name}.log").read_text() for root in roots)
        computed = [m.groups() for m in COMPUTING.finditer(text)]
        after = [s for s in ORDER if ORDER.index(s) >= ORDER.index(("generate", "code"))]
        assert sorted(computed, key=str) == sorted(after * 2, key=str), computed  # each run computed its own root's
        for root in roots:
            assert leftovers(root) == [] and doctor(root, url=url).problems == [] and not (root / CATALOG_FILE).exists()
        assert contents(roots[0], url) == contents(roots[1], url)
        ids = {item.id for item in planned(roots[0], url)[1].values()}
        listed = cli("ls", "--root", str(roots[0]), "--catalog", url).splitlines()[1:]
        assert sorted((line.split()[0], line.split()[-1]) for line in listed) == sorted((i, str(root.resolve())) for i in ids for root in roots)


def cli(*args: str) -> str:
    """stdout of a `distillery` command that must succeed."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"distillery {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def on_ray(address: str) -> tuple[str, ...]:
    """Settings of a run on the Ray cluster at `address`, with as many torch threads as the threads
    runner's process had (torch's default here): the last bits of a result depend on the count."""
    return "execution.runner=ray", f"execution.address={address}", f"execution.threads={torch.get_num_threads()}"


RAY_TASKS = ("domain_branch", "no_expert_baseline", "generate_part")


def ui_view(flow_run_id: str) -> tuple[dict[str, list[str]], dict[str, tuple[str, list[float]]]]:
    """From the Prefect API, over a flow run and every flow run below it: the Ray tasks' runs by task
    name -> their states, and the flow runs by flow name -> (state, the values its progress artifacts ended at)."""
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
    return tasks, {names[r.flow_id]: (r.state.type.value, sorted(float(a.data) for a in bars if a.flow_run_id == r.id)) for r in runs.values()}


# Nightly: two whole pipelines, one per runner, take about 5 minutes on 2 cores, over what CI's budget has left.
@pytest.mark.nightly
def test_a_whole_pipeline_of_two_domains_on_ray_makes_the_same_artifacts(tmp_path, api_url, ray_address):
    """configs/micro.yaml as it is (code and math, every stage) from an empty run root, once on the
    threads runner and once on the Ray cluster: on Ray both branches (prepare, the expert with math's
    GRPO steps, its warm-up, generate, verify) and the baseline train in Ray's worker processes, and
    every artifact equals the threads runner's."""
    both = ("domains=[code, math]",)
    threads, ray = tmp_path / "threads", tmp_path / "ray"
    Run(threads, api_url, tmp_path / "threads.log", settings=both).finish()
    run = Run(ray, api_url, tmp_path / "ray.log", settings=(*both, *on_ray(ray_address)))
    run.finish()
    text = (tmp_path / "ray.log").read_text()
    computed = {m.groups() for m in COMPUTING.finditer(text)}
    assert computed == {(stage, domain) for stage, domain, _ in planned(ray, settings=both)[1]}, computed
    places = dict(re.findall(r"(branch \w+|baseline|part \d/2) runs in pid (\d+)", text))
    assert {"branch code", "branch math", "baseline", "part 1/2", "part 2/2"} <= set(places), text[-4000:]
    assert str(run.proc.pid) not in places.values()
    assert leftovers(ray) == [] and doctor(ray).problems == []
    assert contents(ray, settings=both) == contents(threads, settings=both)


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
