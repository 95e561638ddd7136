"""A training phase's state, saved as it goes, so that a killed stage resumes where it was.

A stage's training phases (SFT, GRPO, a student's distillation, on-policy distillation, an indexer
warm-up) each own one file: `Snapshot.path`. It holds the model's weights, the optimizer's state,
the step, torch's random state and the state of every `random.Random` the loop draws from, and what
the loop carries between steps (the batches left in the epoch, the curves so far). A loop given a
snapshot loads it when it starts, skips the steps it holds, and saves one at most every
`every_s` seconds and at the end of the phase, so that a stage killed in a later phase does not
train the earlier ones again (a finished phase keeps no optimizer state).

Restored and run on, a loop gives the same weights and curves, bit for bit, as a run that was never
stopped, on the same thread count (tests/test_snapshot.py). The files carry no identity of their
own: the stage keeps them in its work directory, named by its first output's id
(`flows.artifacts.StageRun.work`), so a changed config, input or code starts afresh, and removes
them once its outputs are saved.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data.temporary import temporary


@dataclass
class Snapshot:
    """Where one training phase keeps its state, and how often it saves it (0: after every step)."""

    path: Path
    every_s: float
    _saved_at: float = field(default_factory=time.monotonic, repr=False)

    def load(self) -> dict | None:
        """The saved state, or None when there is none. A phase loads when it starts, so the clock of
        timed saves starts here, not when the stage made its snapshots (a warm-up after an hour of
        training would otherwise save after its first step)."""
        self._saved_at = time.monotonic()
        if not self.path.is_file():
            return None
        # Tensors, numbers, strings and containers only: loading runs no pickled code from a shared run root.
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def due(self, step: int, total: int) -> bool:
        """Whether to save after `step` of `total` steps."""
        return step == total or time.monotonic() - self._saved_at >= self.every_s

    def save(self, state: dict) -> None:
        """Write `state` under a temporary name and rename it into place: a kill mid-write keeps the previous one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(self.path)
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self._saved_at = time.monotonic()


def capture(
    step: int, total: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rngs: Mapping[str, random.Random], **carried: Any
) -> dict:
    """The state after `step` of `total`: what `resume` needs to go on as if never stopped."""
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if step < total else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "rngs": {name: rng.getstate() for name, rng in rngs.items()},
        "carried": carried,
    }


def resume(
    snapshot: Snapshot | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rngs: Mapping[str, random.Random]
) -> tuple[int, dict[str, Any]]:
    """Load `snapshot` (when there is one) into the model, optimizer and generators: (the step to go on from, what the loop carried)."""
    state = None if snapshot is None else snapshot.load()
    if state is None:
        return 0, {}
    model.load_state_dict(state["model"])
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for name, rng in rngs.items():
        rng.setstate(state["rngs"][name])
    print(f"resumed from {snapshot.path} at step {state['step']}")
    return state["step"], state["carried"]
