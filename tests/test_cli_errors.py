"""Bad input, as a careless user gives it: one line naming the bad thing, exit status 2, no
traceback, and nothing under the run root changed. All of these fail before any flow starts.
(An unreadable config file is not here: the tests run as root, whom permissions do not stop.)
A damaged checkpoint in a whole pipeline run is in test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import tables
from data.catalog import Catalog
from data.lineage import LineageRecord
from flows.cli import main


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A run root with one dataset in its catalog."""
    root = tmp_path / "run"
    record = LineageRecord(id="5eed000000000001", kind="dataset", stage="prepare", domain="math", name="seed",
                           uri="datasets/prepare/math/seed.parquet", parents=[], params={}, code_version={})
    Catalog(root).add(tables.write_table([{"prompt": "q", "answer": 1}], root / record.uri, record))
    return root


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


def _fails_cleanly(argv: list[str], named: str, root: Path, capsys: pytest.CaptureFixture) -> str:
    before = _snapshot(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("distillery: error: ") and "Traceback" not in err, err
    assert named in err, err
    assert _snapshot(root) == before
    return err


def _config(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (b"seed: 1\n\xff\xfe\n", "not UTF-8"),
        ("domains: []\n", "domains is empty"),
        ("domains: [math, code, math]\n", "domains lists math twice"),
        ("model:\n  index_topk: 4096\n", "index_topk (4096) is larger than max_position_embeddings (1024)"),
        ("run_root: ''\n", "run_root is empty"),
        ("model:\n  pretrained: /no/such/checkpoint\n", "model.pretrained: no checkpoint directory at '/no/such/checkpoint'"),
        ("- a list\n", "must hold a mapping"),
        ("seed: [1\n", "not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ],
    ids=["not-utf8", "empty-domains", "duplicate-domain", "topk-beyond-positions", "empty-run-root", "no-pretrained-dir", "not-a-mapping", "bad-yaml"],
)
def test_bad_config_files(text: str | bytes, named: str, tmp_path: Path, root: Path, capsys: pytest.CaptureFixture) -> None:
    path = _config(tmp_path, text)
    err = _fails_cleanly(["run", "--config", path, "--set", f"run_root={root}"] if "run_root" not in named else
                         ["run", "--config", path], named, root, capsys)
    assert path in err


def test_a_config_that_is_a_directory(tmp_path: Path, root: Path, capsys: pytest.CaptureFixture) -> None:
    _fails_cleanly(["run", "--config", str(tmp_path)], f"config {tmp_path} is not a file", root, capsys)


def test_run_roots_that_cannot_be(tmp_path: Path, root: Path, capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for run_root, named in ((a_file, f"{a_file} is a file"), (a_file / "below", f"{a_file} is a file"),
                            (Path("/proc/distillery-run"), "cannot create it")):
        err = _fails_cleanly(["run", "--set", f"run_root={run_root}"], named, root, capsys)
        assert f"run_root {run_root}:" in err
    assert a_file.read_text() == "not a directory"


def test_a_catalog_that_cannot_be_opened(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "run"
    (root / "catalog.sqlite").mkdir(parents=True)
    for argv in (["ls", "--root", str(root)], ["run", "--set", f"run_root={root}"]):
        _fails_cleanly(argv, f"catalog {root / 'catalog.sqlite'} is not a file", root, capsys)
    assert main(["doctor", "--root", str(root)]) == 1  # a problem it reports, with what --repair would do
    assert "catalog_unreadable" in capsys.readouterr().out


def test_a_footer_with_unknown_keys(root: Path, capsys: pytest.CaptureFixture) -> None:
    path = root / "datasets/prepare/math/seed.parquet"
    table = pq.read_table(path)
    record = json.loads(table.schema.metadata[b"distillery.lineage"])
    record["surprise"] = 1
    pq.write_table(table.replace_schema_metadata({b"distillery.lineage": json.dumps(record).encode()}), path)
    _fails_cleanly(["show", "5eed", "--root", str(root)], "unknown lineage fields surprise", root, capsys)


def test_a_footer_cut_short(root: Path, capsys: pytest.CaptureFixture) -> None:
    path = root / "datasets/prepare/math/seed.parquet"
    path.write_bytes(path.read_bytes()[:-30])
    _fails_cleanly(["show", "5eed", "--root", str(root)], f"corrupt Parquet file {path}", root, capsys)


def test_content_changed_under_the_same_id(root: Path, capsys: pytest.CaptureFixture) -> None:
    """Rewritten with other values and the same lineage record: only the fingerprint can tell."""
    path = root / "datasets/prepare/math/seed.parquet"
    record = tables.read_record(path)
    pq.write_table(pa.table({"prompt": ["q"], "answer": [2]}).replace_schema_metadata({b"distillery.lineage": record.to_json().encode()}),
                   path)
    # The plan of a run never names this hand-made id, so the stage-facing check is the one to show it:
    from flows.artifacts import require
    from flows.plan import Planned

    item = Planned(stage="prepare", domain="math", name="seed", kind="dataset", params={}, parents=(), id=record.id, key=record.id, code="")
    with pytest.raises(Exception, match=r"5eed000000000001 \(prepare/math/seed\).*(bytes|sha256).*distillery doctor"):
        require(Catalog(root), item)


def test_show_an_artifact_whose_files_are_gone(root: Path, capsys: pytest.CaptureFixture) -> None:
    (root / "datasets/prepare/math/seed.parquet").unlink()
    err = _fails_cleanly(["show", "5eed", "--root", str(root)], "its files are gone", root, capsys)
    assert "distillery lineage 5eed000000000001" in err
    assert main(["lineage", "5eed", "--root", str(root)]) == 0  # the lineage outlives the files


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="domains is empty"):
        main(["--debug", "run", "--config", _config(tmp_path, "domains: []\n")])


def test_a_stage_the_config_leaves_out(root: Path, capsys: pytest.CaptureFixture) -> None:
    _fails_cleanly(["stage", "opd", "--config", "configs/micro.yaml", "--set", f"run_root={root}"],
                   "stage 'opd' has nothing to do in this config: it runs when opd.steps > 0", root, capsys)
