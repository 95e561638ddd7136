import os

# Set before Prefect is imported anywhere in the test session.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "distill", "experts", "generation", "domains", "kernels", "data")


@pytest.fixture
def source_copy(tmp_path):
    """A copy of the code (packages, configs, pyproject.toml) to edit; `run(*args)` runs Python in it, its packages first on the path."""
    root = tmp_path / "src"
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copy(REPO / "pyproject.toml", root)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(root)}
        proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    return root, run
