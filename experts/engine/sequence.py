"""One request's state while the engine runs it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from experts.domains.base import ToolEnv


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of request `index` under config seed `seed`: a hash, so neighbours are unrelated."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


@dataclass(eq=False)
class Sequence:
    """Token ids and progress of one request.

    `ids` is [BOS] prompt completion, tool results included. The first `num_cached` of them are in the
    KV cache; the rest are fed to the model at the next step, whose last logits give the next token.
    """

    index: int
    ids: list[int]
    prompt_len: int
    seed: int
    env: ToolEnv | None = None
    num_cached: int = 0
    model_tokens: int = 0
    tool_calls: int = 0
    turn_start: int = 0  # where the current model turn began (after the prompt or the last tool result)
    finish_reason: str | None = None
    block_table: list[int] = field(default_factory=list)
    slots: torch.Tensor | None = None  # [len(block_table) * block_size] int64 slot id of each position
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self.turn_start = len(self.ids)

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
