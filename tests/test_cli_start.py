"""Commands that only read a run root start without torch and transformers (about 4 s of imports),
and `distillery stage --help` still lists every stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from data import tables
from data.catalog import Catalog
from data.lineage import LineageRecord

REPO = Path(__file__).resolve().parent.parent

READ_ONLY = """
import sys
from flows.cli import main
root, rid = sys.argv[1], sys.argv[2]
codes = [main(["ls", "--root", root]), main(["show", rid, "--root", root]), main(["lineage", rid, "--root", root]),
         main(["doctor", "--root", root])]
print("codes", codes, "heavy", sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""


def test_read_only_commands_import_no_torch(tmp_path: Path) -> None:
    root = tmp_path / "run"
    record = LineageRecord(id="5eed000000000002", kind="dataset", stage="prepare", domain="code", name="seed",
                           uri="datasets/prepare/code/seed.parquet", parents=[], params={}, code_version={})
    Catalog(root).add(tables.write_table([{"prompt": "q", "answer": 1}], root / record.uri, record))

    proc = subprocess.run([sys.executable, "-c", READ_ONLY, str(root), record.id], cwd=REPO, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(record.id) >= 2 and "prepare/code/seed" in proc.stdout  # listed, its lineage; shown
    assert proc.stdout.strip().endswith("codes [0, 0, 0, 0] heavy []"), proc.stdout


def test_stage_help_lists_the_stages() -> None:
    from flows.stages import STAGES

    proc = subprocess.run([sys.executable, "-m", "flows.cli", "stage", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr
    listed = " ".join(proc.stdout.split("stages:", 1)[1].split())
    assert listed == ", ".join(STAGES)
