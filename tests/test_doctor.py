"""`distillery doctor` on a small run root of real artifacts: two Parquet datasets and a
safetensors checkpoint directory, each with its lineage and catalog row. Each test damages the
root one way and checks what doctor reports and what `--repair` leaves (never a deleted file).
The same checks on a whole pipeline run are in test_pipeline.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from data import tables
from data.catalog import Catalog
from data.checkpoints import save_directory
from data.doctor import QUARANTINE, doctor
from data.errors import ArtifactError
from data.lineage import LineageRecord
from data.shards import ShardDir
from data.temporary import WORK, sweep, temporary
from flows.cli import main


def _record(id_: str, stage: str, name: str, kind: str, uri: str, parents: list[str]) -> LineageRecord:
    return LineageRecord(id=id_, kind=kind, stage=stage, domain="math", name=name, uri=uri,
                         parents=parents, params={"n": 3}, code_version={"git_commit": None})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    catalog = Catalog(root)
    tasks = _record("5eed000000000001", "prepare", "seed", "dataset", "prepare/math/seed.parquet", [])
    catalog.add(tables.write_table([{"prompt": f"q{i}", "answer": i} for i in range(50)], root / tasks.uri, tasks))
    model = _record("0de1000000000002", "train", "model", "checkpoint", "train/math/model", [tasks.id])

    def weights(directory: Path) -> None:
        save_file({"w": torch.randn(64, 64), "b": torch.randn(64)}, directory / "model.safetensors")
        (directory / "config.json").write_text('{"hidden_size": 64}')

    catalog.add(save_directory(root / model.uri, model, weights))
    rows = _record("9e40000000000003", "generate", "generations", "dataset", "generate/math/generations.parquet", [model.id, tasks.id])
    catalog.add(tables.write_table([{"completion": "x" * i} for i in range(30)], root / rows.uri, rows))
    return root


def _records(root: Path) -> dict[str, str]:
    return {r.id: r.to_json() for r in Catalog(root).list()}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_healthy_root_has_no_problems(root: Path) -> None:
    report = doctor(root)
    assert (report.checked, report.problems) == (3, [])
    assert all(r.sha256 is not None and r.bytes is not None for r in Catalog(root).list())


@pytest.mark.parametrize("how", ["deleted", "garbage"])
def test_repair_rebuilds_a_lost_catalog_equal_to_the_original(root: Path, how: str) -> None:
    original = _records(root)
    catalog_file = root / "catalog.sqlite"
    if how == "deleted":
        catalog_file.unlink()
    else:
        catalog_file.write_bytes(os.urandom(8192))
    kinds = [p.kind for p in doctor(root).problems]
    assert kinds == ["catalog_missing" if how == "deleted" else "catalog_unreadable"] + ["uncatalogued"] * 3
    doctor(root, repair=True)
    assert _records(root) == original  # ids, parents, paths, sizes, fingerprints: every field
    assert doctor(root).problems == []
    if how == "garbage":  # moved aside, not deleted
        (kept,) = (root / QUARANTINE).rglob("catalog.sqlite")
        assert len(kept.read_bytes()) == 8192


def test_a_truncated_parquet_file_is_found_and_quarantined(root: Path) -> None:
    catalog = Catalog(root)
    victim = catalog.resolve(catalog.get("9e40000000000003"))
    cut = victim.read_bytes()[:-200]
    victim.write_bytes(cut)
    (problem,) = doctor(root).problems
    assert (problem.kind, problem.artifact_id, problem.path) == ("unreadable", "9e40000000000003", victim)
    report = doctor(root, repair=True)
    assert not victim.exists() and catalog.find("9e40000000000003") is None
    (kept,) = (root / QUARANTINE).rglob("generations.parquet")
    assert kept.read_bytes() == cut and kept.relative_to(root).parts[2:] == victim.relative_to(root).parts
    assert any("dropped catalog row 9e40000000000003" in a for a in report.actions)
    assert doctor(root).problems == []


def test_a_flipped_byte_in_checkpoint_weights_is_found(root: Path) -> None:
    catalog = Catalog(root)
    weights = catalog.resolve(catalog.get("0de1000000000002")) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the fingerprint can tell
    weights.write_bytes(bytes(data))
    (problem,) = doctor(root).problems
    assert (problem.kind, problem.artifact_id) == ("damaged", "0de1000000000002")
    assert "sha256" in problem.detail
    doctor(root, repair=True)
    assert catalog.find("0de1000000000002") is None and list((root / QUARANTINE).rglob("model.safetensors"))


def test_a_footer_that_disagrees_with_the_catalog_is_named(root: Path) -> None:
    catalog = Catalog(root)
    record = catalog.get("5eed000000000001")
    path = catalog.resolve(record)
    forged = LineageRecord.from_json(record.to_json())
    forged.parents = ["0123456789abcdef"]
    tables.write_table(tables.read_table(path), path, forged)  # same values, other parents
    (problem,) = doctor(root).problems
    assert (problem.kind, problem.artifact_id) == ("lineage_mismatch", "5eed000000000001") and "parents" in problem.detail


def test_orphan_temporary_files_are_moved_aside(root: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = temporary(root / "generate" / "math" / "generations.parquet", dead.pid)
    orphan.write_bytes(b"half a file")
    live = temporary(root / "generate" / "math" / "other.parquet")  # a writer still at work: left alone
    live.write_bytes(b"being written")
    (problem,) = doctor(root).problems
    assert (problem.kind, problem.path) == ("orphan_temp", orphan)
    doctor(root, repair=True)
    assert not orphan.exists() and live.exists()
    assert [p.read_bytes() for p in (root / QUARANTINE).rglob(orphan.name)] == [b"half a file"]


def test_work_directories_are_listed_and_a_saved_artifacts_is_removed(root: Path, capsys: pytest.CaptureFixture) -> None:
    """A killed stage's work directory (snapshots, shards) is kept for the run that goes on from it;
    the one of an artifact already saved (a kill between the save and the clean-up) is not needed."""
    done = root / WORK / "0de1000000000002"  # the checkpoint in the catalog
    going = root / WORK / "77a1000000000009"  # nothing in the catalog: a stage not finished
    for work in (done, going):
        work.mkdir(parents=True)
        torch.save({"w": torch.randn(32, 32)}, work / "sft.pt")
    size = (going / "sft.pt").stat().st_size
    report = doctor(root)
    assert [(p.kind, p.path, p.artifact_id) for p in report.problems] == [("finished_work", done, "0de1000000000002")]
    assert report.work == {going: size}
    assert main(["doctor", "--root", str(root), "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"removed {done}" in out and f"work in progress: {going}" in out
    assert not done.exists() and (going / "sft.pt").stat().st_size == size and doctor(root).problems == []


def test_repair_never_deletes_a_byte(root: Path) -> None:
    """Everything damaged at once: every byte that was under the root is still there after repair."""
    catalog = Catalog(root)
    victim = catalog.resolve(catalog.get("9e40000000000003"))
    victim.write_bytes(victim.read_bytes()[:100])
    (catalog.resolve(catalog.get("0de1000000000002")) / "config.json").write_text('{"hidden_size": 65}')
    before = sorted(_files(root).values())
    doctor(root, repair=True)
    after = _files(root)
    assert sorted(v for k, v in after.items() if k != "catalog.sqlite") == sorted(v for v in before if not v.startswith(b"SQLite"))


def test_a_stage_refuses_a_damaged_input_and_names_doctor(root: Path) -> None:
    from flows.artifacts import require
    from flows.plan import Planned

    catalog = Catalog(root)
    record = catalog.get("5eed000000000001")
    path = catalog.resolve(record)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    item = Planned(stage=record.stage, domain=record.domain, name=record.name, kind=record.kind, params={}, parents=(),
                   id=record.id, key=record.id, code="")
    with pytest.raises(ArtifactError, match=r"5eed000000000001.*distillery doctor"):
        require(catalog, item)


def test_cli(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["doctor", "--root", str(root)]) == 0
    assert "no problems" in capsys.readouterr().out
    (root / "catalog.sqlite").unlink()
    assert main(["doctor", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "catalog_missing" in out and out.count("uncatalogued") == 3 and "--repair" in out
    assert main(["doctor", "--root", str(root), "--repair"]) == 0
    assert "catalogued 5eed000000000001" in capsys.readouterr().out
    assert main(["doctor", "--root", str(root / "nowhere")]) == 2


def test_a_killed_writer_leaves_only_a_temporary_name_and_the_next_write_sweeps_it(tmp_path: Path) -> None:
    """SIGKILL a process halfway through writing a checkpoint directory: nothing is visible under
    the final name, doctor names the leftover, and `sweep` (run by every stage before it
    computes) removes it."""
    target = tmp_path / "run" / "checkpoints" / "model"
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom data.checkpoints import save_directory\nfrom data.lineage import LineageRecord\n"
        "def write(d):\n    (d / 'part.bin').write_bytes(b'x' * 4096)\n    print('writing', flush=True)\n    time.sleep(600)\n"
        "record = LineageRecord(id='a', kind='checkpoint', stage='s', domain=None, name='model', uri='checkpoints/model',"
        " parents=[], params={}, code_version={})\n"
        f"save_directory(Path({str(target)!r}), record, write)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()
        writer.wait()
    (leftover,) = target.parent.iterdir()
    assert not target.exists() and leftover == temporary(target, writer.pid)
    assert [(p.kind, p.path) for p in doctor(tmp_path / "run").problems] == [("catalog_missing", tmp_path / "run" / "catalog.sqlite"),
                                                                               ("orphan_temp", leftover)]
    assert sweep(target) == [leftover] and list(target.parent.iterdir()) == []


def test_a_shard_directory_drops_a_dead_writers_half_shard(tmp_path: Path) -> None:
    shards = ShardDir(tmp_path / "work")
    shards.write(pa.table({"x": [1, 2]}), {})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    half = temporary(tmp_path / "work" / "shard-00001.parquet", dead.pid)
    half.write_bytes(b"PAR1 half")
    reopened = ShardDir(tmp_path / "work")
    assert not half.exists() and [p.name for p in reopened.paths()] == ["shard-00000.parquet"]


def test_an_empty_catalog_file_is_a_catalog_without_rows(tmp_path: Path) -> None:
    """A run killed between creating catalog.sqlite and its first commit leaves an empty file."""
    (tmp_path / "catalog.sqlite").touch()
    assert Catalog(tmp_path).list() == []
    assert doctor(tmp_path).problems == []
