"""The KV cache the engine owns: per layer a pool of latent slots and of indexer-key slots, handed out in blocks.

A sequence holds a block table; position p of it lives in slot `block_table[p // block_size] *
block_size + p % block_size` of every layer's pools. Sparse attention gathers keys by index, so the
attention kernels read straight from the pools with slot ids: paging needs no copy.
"""

from __future__ import annotations

from collections import deque

import torch

from generation.engine.sequence import Sequence


class KVCache:
    """Slot pools for every layer: latent [num_slots, Dc + Dr] and indexer keys [num_slots, DI].

    Pools start as NaN, so a kernel that reads a slot nobody wrote poisons its output instead of
    silently attending to zeros.
    """

    def __init__(
        self, num_layers: int, num_blocks: int, block_size: int, latent_dim: int, index_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.block_size = block_size
        num_slots = num_blocks * block_size
        self.latent = [torch.full((num_slots, latent_dim), float("nan"), dtype=dtype, device=device) for _ in range(num_layers)]
        self.index_keys = [torch.full((num_slots, index_dim), float("nan"), dtype=dtype, device=device) for _ in range(num_layers)]
        self.free_blocks: deque[int] = deque(range(num_blocks))
        self._offsets = torch.arange(block_size, device=device)

    @property
    def num_slots(self) -> int:
        return self.latent[0].shape[0]

    def blocks_needed(self, seq: Sequence, length: int) -> int:
        """Blocks `seq` must still get to hold `length` tokens."""
        return max(0, -(-length // self.block_size) - len(seq.block_table))

    def can_grow(self, seq: Sequence, length: int) -> bool:
        return self.blocks_needed(seq, length) <= len(self.free_blocks)

    def grow(self, seq: Sequence, length: int) -> None:
        """Give `seq` blocks for `length` tokens (call `can_grow` first)."""
        new = [self.free_blocks.popleft() for _ in range(self.blocks_needed(seq, length))]
        if not new:
            return
        seq.block_table += new
        slots = (torch.tensor(new, device=self._offsets.device)[:, None] * self.block_size + self._offsets).flatten()
        seq.slots = slots if seq.slots is None else torch.cat([seq.slots, slots])

    def free(self, seq: Sequence) -> None:
        """Return `seq`'s blocks; its cached tokens are gone (a preempted sequence is prefilled again)."""
        self.free_blocks.extend(seq.block_table)
        seq.block_table, seq.slots, seq.num_cached = [], None, 0
