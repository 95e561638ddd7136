import os

# Set before Prefect is imported anywhere in the test session.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from prefect_stack import start_stack  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "distill", "experts", "generation", "domains", "kernels", "data")


def _copy_source(root: Path) -> Path:
    """The code (packages, configs, pyproject.toml) copied to `root`."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copy(REPO / "pyproject.toml", root)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): ops this
    small only wait on each other across threads (about 15x slower on two shared cores), and
    bit-for-bit comparisons need one reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def source_copy(tmp_path):
    """A copy of the code to edit; `run(*args)` runs Python in it, its packages first on the path."""
    root = _copy_source(tmp_path / "src")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(root)}
        proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    return root, run


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory):
    """A Prefect server, the deployments and a process worker running flows in a source copy
    (tests/prefect_stack.py), shared by the tests of one module: starting one takes about 30 s."""
    base = tmp_path_factory.mktemp("prefect-stack")
    with start_stack(base, _copy_source(base / "src")) as stack:
        yield stack
