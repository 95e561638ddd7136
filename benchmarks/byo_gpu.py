"""configs/byo.yaml on a GPU in bf16: every stage's wall time and peak GPU memory, generation on our engine and on vLLM.

    scripts/gpu_check.sh byo                                        # on one H100/H200, about 5 minutes; writes "byo gpu"
    .venv/bin/python -m benchmarks.byo_gpu --backends native --no-record   # the same path on CPU (no memory column)

The stand-ins are written first (tests/byo_fixtures.py: a DeepseekV3 base with a chat tokenizer, a
Qwen2 student, GSM8K- and MBPP-shaped files). One `distillery run` with the native engine, then one
with `generate.engine.backend=vllm` on the same run root: the second re-runs only what generation
feeds (generate, verify, mixture, distill, evaluate, report), so its rows are those stages. Peak
memory is torch's allocator high-water mark in the pipeline process from a stage's start to its
save (`peak_gpu_mib` in the lineage); the four domain branches and the baseline run concurrently,
so a stage's peak includes what its neighbours held. vLLM's own memory (a separate process that
reserves its share of the GPU up front) is not in it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.record import write_section
from data.catalog import Catalog

REPO = Path(__file__).resolve().parent.parent
COMMAND = "scripts/gpu_check.sh byo"
BF16 = ["model.dtype=bfloat16", "expert.precision=bf16", "distill.precision=bf16", "distill.student.dtype=bfloat16"]


def _run(args: list[str], log: Path) -> tuple[int, float]:
    start = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.run(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    return code, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["native", "vllm"], choices=["native", "hf", "vllm"])
    parser.add_argument("--work", default="runs/byo-gpu", help="fixtures and run root go under it")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    work = REPO / args.work
    work.mkdir(parents=True, exist_ok=True)
    fixtures, root = work / "fixtures", work / "run"
    code, took = _run([sys.executable, "tests/byo_fixtures.py", str(fixtures)], work / "fixtures.log")
    if code:
        sys.exit(f"writing the stand-ins failed; see {work / 'fixtures.log'}")
    paths = [f"prepare.sources.math.path={fixtures / 'gsm8k.jsonl'}", f"prepare.sources.code.path={fixtures / 'mbpp'}",
             f"model.pretrained={fixtures / 'deepseek-v3'}", f"distill.student.pretrained={fixtures / 'qwen2-student'}"]
    lines = [f"Stand-ins written in {took:.0f} s.", ""]
    rows = []
    seen: set[str] = set()
    for backend in args.backends:
        sets = [f"run_root={root}", *paths, *BF16, f"generate.engine.backend={backend}"]
        cmd = [sys.executable, "-m", "flows.cli", "run", "--config", "configs/byo.yaml", *(x for s in sets for x in ("--set", s))]
        log = work / f"run-{backend}.log"
        code, took = _run(cmd, log)
        outcome = "completed" if code == 0 else f"FAILED (exit {code}; its log: {log})"
        lines.append(f"- backend `{backend}`: {outcome} in {took:.0f} s")
        for record in Catalog(str(root)).list():
            if record.id in seen:
                continue
            seen.add(record.id)
            rows.append((backend, record.label, record.metrics.get("seconds", ""), record.metrics.get("peak_gpu_mib", "-")))
    table = "\n".join(f"| {b} | {label} | {s} | {m} |" for b, label, s, m in rows)
    body = (
        "## configs/byo.yaml on a GPU, bf16\n\n"
        f"Command: `{COMMAND}` (benchmarks/byo_gpu.py; what the columns mean: its docstring). Device: {_device()}.\n\n"
        + "\n".join(lines)
        + f"\n\n| generation backend | artifact | stage seconds | peak GPU MiB |\n|---|---|---:|---:|\n{table}\n"
    )
    print(body)
    if not args.no_record:
        write_section("byo gpu", body)


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
