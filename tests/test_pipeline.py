"""The whole DAG on the smoke config, through a real (temporary) Prefect server."""

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_dataset
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import get_current_settings
from prefect.testing.utilities import prefect_test_harness
from transformers import AutoModelForCausalLM

from data import tables
from data.catalog import Catalog
from data.doctor import QUARANTINE, doctor
from data.temporary import temporary
from flows.cli import main
from flows.config import PipelineConfig, load_config
from flows.pipeline import pipeline, subflow
from flows.plan import plan
from flows.stages import STAGES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_server):
    """One full smoke run, shared by the tests below (they only read it, or restore it)."""
    root = tmp_path_factory.mktemp("run") / "smoke"
    config = load_config("configs/smoke.yaml", [f"run_root={root}"])
    started = time.monotonic()
    result = pipeline(config)
    return config, result, time.monotonic() - started


def test_pipeline_writes_every_planned_artifact(run):
    config, result, seconds = run
    catalog = Catalog(config.run_root)
    planned = plan(config)
    assert seconds < 600  # a couple of minutes alone; generous, as CI machines are shared
    for item in planned.values():
        record = catalog.find(item.id)
        assert record is not None, item
        path = catalog.resolve(record)
        if record.kind == "dataset" and record.rows == 0:
            # datasets refuses an empty split ("corresponds to no data"); pyarrow reads it.
            assert tables.read_table(path).num_rows == 0
        elif record.kind == "dataset":
            assert load_dataset("parquet", data_files=str(path), split="train").num_rows == record.rows
        elif record.kind == "report":
            assert {"report.md", "report-scores.png", "report-curves.png", "lineage.json"} <= {p.name for p in path.iterdir()}
        else:
            assert type(AutoModelForCausalLM.from_pretrained(path)).__name__ == "DeepseekV32ForCausalLM"
    assert result["report"] == planned[("report", None, "report")].id
    report = (Path(config.run_root) / "report.md").read_text()
    assert report == (catalog.resolve(catalog.get(result["report"])) / "report.md").read_text()
    for name in ("base", "student", "baseline", *[f"expert:{d}" for d in config.domains]):
        assert f"| {name} |" in report
    # configs/smoke.yaml runs two GRPO steps on math: its before/after held-out row is in the report.
    rl = catalog.get(planned[("train_expert", "math", "model")].id).metrics
    assert len(rl["rl_rewards"]) == 2
    assert all(0 <= rl[k] <= 1 for k in ("heldout_sft", "heldout_rl", "heldout_sft_sampled", "heldout_rl_sampled"))
    assert all(0 <= rl[k] <= 2 for k in ("heldout_rl_ci", "heldout_rl_sampled_ci"))
    # Every artifact records its stage's wall time; benchmarks/rl.py reports the expert's.
    assert 0 < rl["seconds"] <= seconds
    assert all(catalog.get(item.id).metrics["seconds"] >= 0 for item in planned.values())
    # The students record the tokens that carried loss (equal-token comparisons: benchmarks/opd.py); the experts do not count them.
    trained = {(r.stage, r.domain): r.metrics.get("trained_tokens") for r in catalog.list(kind="checkpoint")}
    assert trained["distill", None] > 0 and trained["baseline", None] > 0 and trained["train_expert", "math"] is None, trained
    assert "Expert RL" in report and "| math |" in report.split("Expert RL")[1]
    for figure in ("report-scores.png", "report-curves.png"):
        assert (Path(config.run_root) / figure).read_bytes().startswith(b"\x89PNG")


def test_rerun_skips_every_stage_and_sweeps_what_dead_writers_left(run, caplog):
    """A second run computes nothing and changes nothing; at its start it removes the temporary
    names of writers that are gone, and keeps a live writer's and whatever doctor quarantined."""
    config, _, first = run
    root = Path(config.run_root)
    before = snapshot(root)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [temporary(root / "datasets" / "half.parquet", dead.pid), temporary(root / "report.md", dead.pid)]
    kept = [temporary(root / "datasets" / "live.parquet"), temporary(root / QUARANTINE / "t" / "old.parquet", dead.pid)]
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    started = time.monotonic()
    try:
        with caplog.at_level("INFO", logger="prefect.flow_runs"):
            pipeline(config)
        assert time.monotonic() - started < max(60.0, first / 2)
        assert [p.exists() for p in left + kept] == [False, False, True, True]
    finally:
        kept[0].unlink()
        shutil.rmtree(root / QUARANTINE)
    after = snapshot(root)
    # The report's copy beside the catalog is published on every run; nothing else may change.
    published = ("report.md", "report-scores.png", "report-curves.png")
    assert {k: v for k, v in after.items() if k not in published} == {k: v for k, v in before.items() if k not in published}
    skipped = [r.getMessage() for r in caplog.records if "skipped, outputs already in the catalog" in r.getMessage()]
    assert len(skipped) == sum(len(s.domains(config)) for s in STAGES.values()), skipped


def test_student_data_lineage_reaches_all_raw_sources(run, capsys):
    config, _, _ = run
    mixture = plan(config)[("mixture", None, "mixture")].id
    assert main(["lineage", mixture, "--root", config.run_root]) == 0
    tree = capsys.readouterr().out
    for d in config.domains:
        for piece in (f"verify/{d}/verified", f"generate/{d}/generations", f"train_expert/{d}/model", f"prepare/{d}/seed", f"prepare/{d}/prompts"):
            assert piece in tree, piece
    assert "base/model" in tree
    assert main(["lineage", mixture, "--root", config.run_root, "--format", "mermaid"]) == 0
    assert capsys.readouterr().out.startswith("graph TD")


def test_the_mixture_lineage_is_a_picture_in_the_ui(run):
    """The mixture stage's markdown artifact inlines the student data's ancestry as a PNG."""
    with get_client(sync_client=True) as client:
        (artifact, *_) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["mixture-lineage"])))
    png = re.search(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", artifact.data)
    assert png is not None and base64.b64decode(png.group(1))[:8] == b"\x89PNG\r\n\x1a\n"


def test_ls_and_show(run, capsys):
    config, _, _ = run
    assert main(["ls", "--root", config.run_root]) == 0
    listing = capsys.readouterr().out
    assert "train_expert" in listing and "verified" in listing
    scores = plan(config)[("evaluate", None, "scores")].id
    assert main(["show", scores, "--root", config.run_root, "--rows", "2"]) == 0
    shown = capsys.readouterr().out
    assert "schema" in shown and "model: string" in shown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--config", "configs/smoke.yaml", "--set", "distill.stepz=1"], "distill.stepz"),
        (["run", "--config", "configs/smoke.yaml", "--set", "distill.steps=lots"], "distill.steps"),
        (["run", "--config", "configs/nope.yaml"], "nope.yaml"),
        (["run", "--config", "configs/smoke.yaml", "--set", "domains=[math, chess]"], "chess"),
        (["stage", "sing", "--config", "configs/smoke.yaml"], "sing"),
        (["stage", "generate", "--domain", "chess", "--config", "configs/smoke.yaml"], "chess"),
        (["show", "0000dead", "--config", "configs/smoke.yaml"], "0000dead"),
    ],
)
def test_bad_input_is_one_clear_error_and_touches_nothing(run, capsys, argv, message):
    config, _, _ = run
    before = snapshot(Path(config.run_root))
    argv = [*argv, "--set", f"run_root={config.run_root}"] if argv[0] in ("run", "stage") else [*argv[:-2], "--root", config.run_root]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert snapshot(Path(config.run_root)) == before


def test_corrupt_parquet_in_run_root_is_named(run, capsys):
    config, _, _ = run
    catalog = Catalog(config.run_root)
    victim = catalog.resolve(catalog.find(plan(config)[("verify", "code", "verified")].id))
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[: len(original) // 2])
        before = snapshot(Path(config.run_root))
        assert main(["run", "--config", "configs/smoke.yaml", "--set", f"run_root={config.run_root}"]) == 2
        assert victim.name in capsys.readouterr().err
        assert snapshot(Path(config.run_root)) == before
    finally:
        victim.write_bytes(original)


def test_damaged_checkpoint_weights_are_named_before_the_flow_starts(run, capsys, tmp_path):
    config, _, _ = run
    root = tmp_path / "copy"
    shutil.copytree(config.run_root, root)
    record = Catalog(root).find(plan(config)[("dsa_warmup", "agents", "model")].id)
    weights = Catalog(root).resolve(record) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x04
    weights.write_bytes(bytes(data))
    before = snapshot(root)
    assert main(["run", "--config", "configs/smoke.yaml", "--set", f"run_root={root}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and record.id in err and "sha256" in err and "distillery doctor" in err
    assert snapshot(root) == before


def test_stage_subflows_end_without_waiting_for_a_heartbeat(prefect_server):
    """Prefect waits at the end of a flow run for its heartbeat thread, which sleeps in 1 s steps:
    a stage run as a subflow has none (its pipeline's run keeps its own), so a skipped stage takes
    a fraction of a second, not one."""

    @flow
    def stage(config: PipelineConfig) -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    @flow
    def outer(config: PipelineConfig) -> tuple:
        started = time.monotonic()
        seen = [subflow(stage, config, config) for _ in range(3)]
        return get_current_settings().flows.heartbeat_frequency, seen, time.monotonic() - started

    own, seen, seconds = outer(load_config(None, []))
    assert own is not None and seen == [None] * 3
    assert seconds < 2.5  # with a heartbeat each subflow takes at least 1 s


def test_stage_needs_its_inputs(tmp_path, capsys, prefect_server):
    root = tmp_path / "empty"
    assert main(["stage", "generate", "--domain", "math", "--config", "configs/smoke.yaml", "--set", f"run_root={root}"]) == 2
    assert "missing input" in capsys.readouterr().err
    assert not root.exists()


# Nightly (`pytest -m nightly`), not CI: the suite is over CI's 25-minute budget with it (docs/experiments.md, 2026-12-06).
@pytest.mark.nightly
def test_one_domain_change_reruns_only_its_branch(run):
    config, _, _ = run
    changed = load_config("configs/smoke.yaml", [f"run_root={config.run_root}", "per_domain.math.generate.sampling.temperature=0.7"])
    catalog = Catalog(config.run_root)
    before = {r.id for r in catalog.list()}
    pipeline(changed)
    new = [r for r in catalog.list() if r.id not in before]
    # The baseline never sees generated data: it is not retrained.
    assert {(r.stage, r.domain) for r in new} == {("generate", "math"), ("verify", "math"), ("mixture", None), ("distill", None), ("evaluate", None), ("report", None)}


def test_editing_the_report_code_reruns_only_the_report(run, source_copy, tmp_path):
    """`distill/report.py` edited, then the whole pipeline run again: every stage skips itself but the report."""
    config, _, _ = run
    src, python = source_copy
    root = tmp_path / "run"
    shutil.copytree(config.run_root, root)  # a run root moves whole: its catalog holds relative paths
    report = src / "distill" / "report.py"
    report.write_text(report.read_text() + "\n# a typo fixed\n")
    before = {r.id for r in Catalog(root).list()}
    out = python("-m", "flows.cli", "run", "--config", "configs/smoke.yaml", "--set", f"run_root={root}")
    assert [(r.stage, r.name) for r in Catalog(root).list() if r.id not in before] == [("report", "report")]
    skipped = (out.stdout + out.stderr).count(": skipped, outputs already in the catalog")
    assert skipped == sum(len(s.domains(config)) for s in STAGES.values()) - 1


def test_doctor_on_a_whole_run(run, tmp_path):
    """A copy of the smoke run: healthy as written; its catalog deleted, then overwritten with
    garbage, is rebuilt equal to the original; a cut-short dataset and a flipped byte in a
    checkpoint's weights are found and moved aside."""
    config, _, _ = run
    root = tmp_path / "copy"
    shutil.copytree(config.run_root, root)
    catalog = Catalog(root)
    original = {r.id: r.to_json() for r in catalog.list()}
    report = doctor(root)
    assert report.problems == [] and report.checked == len(original)
    for damage in (lambda f: f.unlink(), lambda f: f.write_bytes(os.urandom(f.stat().st_size))):
        damage(catalog.path)
        doctor(root, repair=True)
        assert {r.id: r.to_json() for r in catalog.list()} == original
    dataset = catalog.resolve(catalog.find(plan(config)[("verify", "code", "verified")].id))
    dataset.write_bytes(dataset.read_bytes()[:-64])
    weights = catalog.resolve(catalog.find(plan(config)[("train_expert", "math", "model")].id)) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0x10
    weights.write_bytes(bytes(data))
    found = {(p.kind, p.path) for p in doctor(root).problems}
    assert found == {("unreadable", dataset), ("damaged", weights.parent)}
    assert main(["doctor", "--root", str(root), "--repair"]) == 0
    assert len(catalog.list()) == len(original) - 2 and len(list((root / QUARANTINE).rglob("*.safetensors"))) == 1
