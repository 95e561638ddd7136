"""A real Ray cluster for tests: a head and worker nodes started with `ray start`, in a temporary
directory, stopped when the block ends, pass or fail.

The nodes take 127.0.0.1 as their address, but Ray's GCS and raylets listen on every interface
all the same (its loopback-only mode refuses a second node); and `ray stop --force` stops every
Ray instance on the machine, since Ray's agents rename their processes and ours cannot be told
apart by their temporary directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Ray's command line, from the environment running the tests (installed with the test extra).
RAY = Path(sys.executable).parent / "ray"
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # the stages pass paths and configs, not tensors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict[str, str] = ENV, timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([str(RAY), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def worker_pids(temp_dir: Path) -> list[int]:
    """Process ids of the Ray worker processes (those that run tasks) of the cluster in `temp_dir`."""
    out = subprocess.run(["pgrep", "-f", "default_worker.py"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out if str(temp_dir) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]


@contextmanager
def ray_cluster(workers: int = 1, cpus_per_node: int = 1) -> Iterator[tuple[str, Path]]:
    """Yield (address, Ray's temp dir) of a head plus `workers` worker nodes, each offering `cpus_per_node` CPUs."""
    # Ray's socket paths live under its temp dir and must stay short (AF_UNIX: 107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    # A HOME of its own: an auth token that an earlier in-process Ray left in ~/.ray makes a joining
    # node fail authentication (Ray 2.60, "InvalidAuthToken"); drivers connect with theirs all the same.
    env = {**ENV, "HOME": str(temp_dir / "home")}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = [f"--num-cpus={cpus_per_node}", f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"]
    try:
        _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--temp-dir={temp_dir}",
             "--include-dashboard=false", *common, env=env)
        for _ in range(workers):
            _ray("start", f"--address={address}", "--node-ip-address=127.0.0.1", *common, env=env)
        yield address, temp_dir
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=ENV, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
