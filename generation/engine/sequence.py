"""One request's state while the engine runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from generation.turns import Trace


@dataclass(eq=False)
class Sequence(Trace):
    """A trace plus what the engine keeps for it.

    The first `num_cached` of `ids` are in the KV cache; the rest are fed to the model at the next
    step, whose last logits give the next token.
    """

    index: int = 0
    seed: int = 0
    num_cached: int = 0
    block_table: list[int] = field(default_factory=list)
    slots: torch.Tensor | None = None  # [len(block_table) * block_size] int64 slot id of each position
    generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def pending(self) -> int:
        """Tokens not yet in the cache (1 in a decode step, more after admission or a tool result)."""
        return len(self.ids) - self.num_cached

    def rng(self) -> torch.Generator:
        """This request's own generator, created when it first samples: its tokens depend on nothing else."""
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        return self.generator
