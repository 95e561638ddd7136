"""Wall time of the whole pipeline on a config, then of a rerun (every stage skipped).

    .venv/bin/python -m benchmarks.pipeline --config configs/tiny.yaml
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import write_section

REPO = Path(__file__).resolve().parent.parent


def timed_run(config: str, run_root: str, log: Path) -> float:
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", config, "--set", f"run_root={run_root}"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"pipeline failed (exit {proc.returncode}); see {log}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--root", help="run root to keep the artifacts in (must not exist yet); default: a temporary one")
    args = parser.parse_args()
    if args.root and Path(args.root).exists():
        sys.exit(f"--root {args.root} exists: the first run must compute everything")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or str(Path(tmp) / "run")
        first = timed_run(args.config, root, Path(tmp) / "first.log")
        second = timed_run(args.config, root, Path(tmp) / "second.log")
        log = (Path(tmp) / "second.log").read_text()
        skipped = log.count(": skipped, outputs already in the catalog")
        report = (Path(root) / "report.md").read_text()
    tables_md = report[report.index("Held-out accuracy") : report.index("Student training data")].strip()
    body = (
        f"## Pipeline wall time ({args.config})\n\n"
        f"Command: `.venv/bin/python -m benchmarks.pipeline --config {args.config}` (the same work as `make run`, venv already installed)\n\n"
        f"| run | wall time |\n|---|---|\n| first (everything computed) | {first:.0f} s |\n| second (every stage skipped: {skipped} skip messages) | {second:.0f} s |\n\n"
        f"From the first run's report:\n\n{tables_md}\n"
    )
    write_section(f"pipeline {args.config}", body)
    print(body)


if __name__ == "__main__":
    main()
