"""Wall time of the whole pipeline on a config, then of a rerun (every stage skipped).

    .venv/bin/python -m benchmarks.pipeline --fresh-clone                 # `make run` in a fresh clone of HEAD: install included
    .venv/bin/python -m benchmarks.pipeline --config configs/quality.yaml --root runs/quality

--fresh-clone times what a newcomer waits for: `git clone` of the committed HEAD, then `make run`
(virtual environment, install with pip's cache off, the pipeline on configs/tiny.yaml), then
`make run` again. Otherwise the pipeline runs in this checkout with its installed environment.
With --resume the first run starts from an existing root and computes only what it lacks; the
table says how many stage runs it skipped, so its time is never mistaken for a full run's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import write_section
from flows.config import load_config
from flows.stages import STAGES

REPO = Path(__file__).resolve().parent.parent


def timed(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {proc.returncode}); see {log}")
    return time.monotonic() - started


def count_skips(log: Path) -> int:
    return log.read_text().count(": skipped, outputs already in the catalog")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--fresh-clone", action="store_true", help="time `make run` (install included) in a fresh clone of HEAD")
    parser.add_argument("--root", help="run root to keep the artifacts in (must not exist yet); default: a temporary one")
    parser.add_argument("--resume", action="store_true", help="--root exists: compute only the stages it lacks")
    args = parser.parse_args()
    exists = bool(args.root) and Path(args.root).exists()
    if exists and not args.resume:
        sys.exit(f"--root {args.root} exists: the first run must compute everything (or pass --resume)")
    if args.resume and not exists:
        sys.exit(f"--resume needs an existing --root, got {args.root}")
    if args.fresh_clone and (args.root or args.config != "configs/tiny.yaml"):
        sys.exit("--fresh-clone times `make run` as it is: configs/tiny.yaml into its own run root")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.fresh_clone:
            checkout = tmp / "clone"
            subprocess.run(["git", "clone", "--quiet", str(REPO), str(checkout)], check=True)
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True).stdout.strip()
            env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
            env.pop("VIRTUAL_ENV", None)
            first = timed(["make", "run"], checkout, tmp / "first.log", env)
            second = timed(["make", "run"], checkout, tmp / "second.log", env)
            root = checkout / load_config(checkout / args.config).run_root
            command = f".venv/bin/python -m benchmarks.pipeline --fresh-clone` (commit {commit}: `git clone`, then `make run` twice, pip's cache off"
        else:
            root = Path(args.root) if args.root else tmp / "run"
            run = [sys.executable, "-m", "flows.cli", "run", "--config", args.config, "--set", f"run_root={root}"]
            first = timed(run, REPO, tmp / "first.log")
            second = timed(run, REPO, tmp / "second.log")
            resume = " --root <root> --resume" if args.resume else ""
            command = f".venv/bin/python -m benchmarks.pipeline --config {args.config}{resume}` (installed environment"
        skipped_first, skipped = (count_skips(tmp / f"{run}.log") for run in ("first", "second"))
        report = (root / "report.md").read_text()
    config = load_config(REPO / args.config)
    stage_runs = sum(len(s.domains(config)) for s in STAGES.values())
    tables_md = report[report.index("Held-out accuracy") : report.index("Student training data")].strip()
    if args.fresh_clone:
        first_run = "fresh clone: virtual environment, install, every stage computed"
    elif args.resume:
        first_run = f"root resumed: {skipped_first} of {stage_runs} stage runs skipped, the rest computed"
    else:
        first_run = "every stage computed"
    body = (
        f"## Pipeline wall time ({args.config})\n\n"
        f"Command: `{command})\n\n"
        f"| run | wall time |\n|---|---|\n"
        f"| first ({first_run}) | {first:.0f} s |\n"
        f"| second ({skipped} of {stage_runs} stage runs reported skipped) | {second:.0f} s |\n\n"
        f"From the first run's report:\n\n{tables_md}\n"
    )
    write_section(f"pipeline {args.config}", body)
    print(body)


if __name__ == "__main__":
    main()
