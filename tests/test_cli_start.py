"""Commands that only read a run root start without torch and transformers (about 4 s of imports),
and `distillery stage --help` still lists every stage."""

from __future__ import annotations

import os
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


SETTINGS = """
import flows  # what every entry to a flow imports first
from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
print(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), PREFECT_SERVER_ANALYTICS_ENABLED.value())
"""


def test_runs_give_prefects_ephemeral_server_time_to_start_unless_told_otherwise() -> None:
    """Prefect's own 20 s for its ephemeral server's start failed runs on a busy machine; a value the user sets wins."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_")}
    outputs = []
    for extra in ({}, {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "7", "PREFECT_SERVER_ANALYTICS_ENABLED": "true"}):
        proc = subprocess.run([sys.executable, "-c", SETTINGS], cwd=REPO, env={**base, **extra}, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.split())
    assert outputs == [["120", "False"], ["7", "True"]]
