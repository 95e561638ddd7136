"""benchmarks/dsa_gpu.py (what scripts/gpu_check.sh runs on a GPU) runs every path on tiny shapes
here, in Triton's interpreter: its correctness checks pass and it prints both tables."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# Nightly (`pytest -m nightly`), not CI: the suite is over CI's 25-minute budget with it (docs/experiments.md, 2026-12-06).
@pytest.mark.nightly
def test_gpu_check_runs_every_path_on_cpu() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.dsa_gpu", "--quick", "--device", "cpu", "--no-record"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "the same kept scores as the reference" in proc.stdout
    for row in ("| prefill forward, S = T = 64 |", "| prefill backward, S = T = 64 |", "| decode, batch 4, T = 96 |", "| 64 |"):
        assert row in proc.stdout, proc.stdout
