"""Wall time of the whole pipeline on a config, then of a rerun (every stage skipped).

    .venv/bin/python -m benchmarks.pipeline --config configs/tiny.yaml
    .venv/bin/python -m benchmarks.pipeline --config configs/tiny.yaml --root runs/x --resume

With --resume the first run starts from an existing root and computes only the stages whose
outputs it lacks (after a config change that touches a few stages); the table says how many it
skipped, so its time is never mistaken for a full run's.
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


def count_skips(log: Path) -> int:
    return log.read_text().count(": skipped, outputs already in the catalog")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--root", help="run root to keep the artifacts in (must not exist yet); default: a temporary one")
    parser.add_argument("--resume", action="store_true", help="--root exists: compute only the stages it lacks")
    args = parser.parse_args()
    exists = bool(args.root) and Path(args.root).exists()
    if exists and not args.resume:
        sys.exit(f"--root {args.root} exists: the first run must compute everything (or pass --resume)")
    if args.resume and not exists:
        sys.exit(f"--resume needs an existing --root, got {args.root}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or str(Path(tmp) / "run")
        first = timed_run(args.config, root, Path(tmp) / "first.log")
        second = timed_run(args.config, root, Path(tmp) / "second.log")
        skipped_first, skipped = (count_skips(Path(tmp) / f"{run}.log") for run in ("first", "second"))
        report = (Path(root) / "report.md").read_text()
    tables_md = report[report.index("Held-out accuracy") : report.index("Student training data")].strip()
    first_run = f"root resumed: {skipped_first} of {skipped} stage runs skipped, the rest computed" if args.resume else "everything computed"
    body = (
        f"## Pipeline wall time ({args.config})\n\n"
        f"Command: `.venv/bin/python -m benchmarks.pipeline --config {args.config}{' --root <root> --resume' if args.resume else ''}` (the same work as `make run`, venv already installed)\n\n"
        f"| run | wall time |\n|---|---|\n"
        f"| first ({first_run}) | {first:.0f} s |\n"
        f"| second (every stage skipped: {skipped} skip messages) | {second:.0f} s |\n\n"
        f"From the first run's report:\n\n{tables_md}\n"
    )
    write_section(f"pipeline {args.config}", body)
    print(body)


if __name__ == "__main__":
    main()
