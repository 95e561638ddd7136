"""`distillery lineage <id> --format svg|png`: the ancestry as a picture, one box per artifact."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from data import tables
from data.catalog import Catalog
from data.lineage import LineageRecord
from flows.cli import main


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """seed -> expert (with the base) -> generations, and a mixture of two domains' generations:
    the base and a seed are shared ancestors, drawn once each."""
    root = tmp_path / "run"
    catalog = Catalog(root)

    def add(id_: str, stage: str, domain: str | None, parents: list[str]) -> None:
        record = LineageRecord(id=id_, kind="dataset", stage=stage, domain=domain, name="out", uri=f"datasets/{id_}.parquet",
                               parents=parents, params={}, code_version={})
        catalog.add(tables.write_table([{"x": 1}], root / record.uri, record))

    add("seed0000000000aa", "prepare", None, [])
    add("base0000000000bb", "base", None, ["seed0000000000aa"])
    for d in ("math", "code"):
        add(f"gen{d}00000000cc", "generate", d, ["base0000000000bb", "seed0000000000aa"])
    add("mix0000000000dd", "mixture", None, ["genmath00000000cc", "gencode00000000cc"])
    return root


def test_svg_has_one_box_per_ancestor(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lineage.svg"
    assert main(["lineage", "mix0", "--root", str(root), "--format", "svg", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    boxes = {g.get("id") for g in ET.parse(out).iter("{http://www.w3.org/2000/svg}g") if (g.get("id") or "").startswith("artifact-")}
    assert boxes == {f"artifact-{i}" for i in ("seed0000000000aa", "base0000000000bb", "genmath00000000cc", "gencode00000000cc",
                                                "mix0000000000dd")}


def test_png_by_default_beside_the_caller(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["lineage", "genmath", "--root", str(root), "--format", "png"]) == 0
    assert (tmp_path / "lineage-genmath00000000cc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp-*"))
