"""Data-parallel SFT under torchrun: `train_sft` with `devices` > 1 lands here.

The calling stage stays one Prefect flow; the training runs as a subprocess,
``python -m torch.distributed.run --nproc_per_node <devices> -m experts.sft <spec>`` (`experts.sft.ddp_worker`),
on a copy of the model saved to a scratch directory. Every process draws the same batches from
the same seed and trains on its share of each (`experts.sft.train_loop`), under
DistributedDataParallel: NCCL, one GPU per process, when CUDA is there; gloo on CPU otherwise.
Rank 0 reports each step's loss to a file the parent reads for progress, and saves the trained
weights and the loss curve, which the parent loads back. With a snapshot (`experts.snapshot`), every
process resumes from it and rank 0 saves it. A failed run raises with its log's tail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from experts.snapshot import Snapshot

_LOG_TAIL = 4000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_sft_distributed(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[tuple[list[int], list[int]]],
    cfg: BaseModel,
    *,
    seed: int,
    progress: Callable[[int, int, float], None] | None = None,
    snapshot: Snapshot | None = None,
) -> list[float]:
    """Train `model` in place on `encoded` with `cfg.devices` processes; the loss per step (of the whole batch).

    `cfg` is the `experts.sft.TrainConfig` (not imported: experts.sft imports this module). Every
    process resumes from `snapshot`; rank 0 saves it.
    """
    home = next(model.parameters()).device
    model.to("cpu")  # the workers load their own copies: this one would take GPU 0's memory from rank 0
    with tempfile.TemporaryDirectory(prefix="distillery-ddp-") as scratch:
        work = Path(scratch)
        model.save_pretrained(work / "model")
        (work / "examples.json").write_text(json.dumps([list(map(list, e)) for e in encoded]))
        spec = {"model": str(work / "model"), "examples": str(work / "examples.json"), "config": cfg.model_dump(mode="json"),
                "seed": seed, "pad_id": tokenizer.pad_token_id, "out": str(work / "trained.pt"), "losses": str(work / "losses.txt"),
                "snapshot": None if snapshot is None else {"path": str(snapshot.path), "every_s": snapshot.every_s}}
        (work / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.devices}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "experts.sft", str(work / "spec.json")]
        # Each process gets an equal share of the cores, as torchrun would otherwise give each one thread.
        threads = max(1, (os.cpu_count() or 1) // cfg.devices)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
               *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(work / "log.txt", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            reported = 0
            while True:
                code = proc.poll()
                reported = _report(Path(spec["losses"]), reported, cfg.steps, progress)
                if code is not None:
                    break
                time.sleep(0.5)
        if code != 0:
            tail = (work / "log.txt").read_text()[-_LOG_TAIL:]
            raise RuntimeError(f"data-parallel training ({cfg.devices} processes, torchrun) exited {code}; its log ends:\n{tail}")
        trained = torch.load(spec["out"], map_location="cpu")
        model.load_state_dict(trained["model"])
        model.to(home).eval()
        return trained["losses"]


def _report(path: Path, reported: int, total: int, progress: Callable[[int, int, float], None] | None) -> int:
    if progress is None or not path.exists():
        return reported
    text = path.read_text()  # once: a second read could see a line the first did not
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]  # the last line may be half-written
    for line in lines:
        step, loss = line.split()
        if int(step) > reported:  # a resumed run's first line is the step after its snapshot's
            progress(int(step), total, float(loss))
            reported = int(step)
    return reported
