"""A key/value + indexer-key cache for DSA models that writes in place instead of concatenating.

transformers' `DynamicCache` grows every layer's tensors with `torch.cat` at each decode step: a step
over a 64K-token latent cache copies the whole cache (64K x 576 fp32 = 150 MiB per layer) to append
one row. `StaticCache` preallocates but hands the attention its whole `max_cache_len` buffer, so the
indexer would score and mask keys that do not exist yet. `PreallocatedCache` does what a serving
engine does: one buffer per tensor with room to spare, new rows copied into place, and views of the
filled prefix returned, so the attention sees exactly the tokens written so far. When a buffer is
full it is reallocated at twice the size (amortised O(1) copies per token); give the final length up
front and it is allocated once.

Usage:
    cache = PreallocatedCache(model.config, capacity=prompt_len + max_new_tokens)
    model.generate(input_ids, past_key_values=cache, ...)
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicIndexedLayer


def _write(buffer: torch.Tensor | None, states: torch.Tensor, start: int, dim: int, capacity: int) -> torch.Tensor:
    """Copy `states` into `buffer` at [start, start + n) along `dim`, reallocating (x2) when it does not fit."""
    end = start + states.shape[dim]
    if buffer is None or buffer.shape[dim] < end:
        size = list(states.shape)
        size[dim] = max(end, capacity, 0 if buffer is None else 2 * buffer.shape[dim])
        grown = states.new_empty(size)
        if buffer is not None and start:
            grown.narrow(dim, 0, start).copy_(buffer.narrow(dim, 0, start))
        buffer = grown
    buffer.narrow(dim, start, end - start).copy_(states)
    return buffer


class PreallocatedIndexedLayer(DynamicIndexedLayer):
    """One layer: keys/values [B, H, T, D] and indexer keys [B, T, D] in buffers, exposed as prefix views.

    `keys`, `values` and `indexer_keys` always hold views of the written prefix, so every method of the
    parent that reads them (masks, beam reordering, cropping) sees the same tensors as with
    `DynamicIndexedLayer`; methods that replace them are followed by `_adopt`.
    """

    def __init__(self, capacity: int = 0, **kwargs: object) -> None:
        super().__init__()
        self.capacity = capacity
        self._buffers: dict[str, torch.Tensor | None] = {"keys": None, "values": None, "indexer_keys": None}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
        start = self.get_seq_length()
        self.keys = self._append("keys", key_states, start, dim=-2)
        self.values = self._append("values", value_states, start, dim=-2)
        return self.keys, self.values

    def update_indexer(self, indexer_key_states: torch.Tensor) -> torch.Tensor:
        if not self.is_indexer_initialized:
            self.indexer_dtype, self.indexer_device = indexer_key_states.dtype, indexer_key_states.device
            self.is_indexer_initialized = True
        start = 0 if self.indexer_keys is None else self.indexer_keys.shape[1]
        self.indexer_keys = self._append("indexer_keys", indexer_key_states, start, dim=1)
        return self.indexer_keys

    def _append(self, name: str, states: torch.Tensor, start: int, dim: int) -> torch.Tensor:
        dim = dim % states.dim()
        buffer = _write(self._buffers[name], states, start, dim, self.capacity)
        self._buffers[name] = buffer
        return buffer.narrow(dim, 0, start + states.shape[dim])

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def _adopt(self) -> None:
        """After a parent method replaced the views with new tensors, make those the buffers."""
        self._buffers = {"keys": self.keys, "values": self.values, "indexer_keys": self.indexer_keys}

    def reset(self) -> None:
        super().reset()
        self._buffers = dict.fromkeys(self._buffers)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if tokens_to_remove and self.indexer_keys is not None:
            # The parent crops the positions only; the indexer keys must shrink with the keys they index.
            self.indexer_keys = self.indexer_keys[:, : self.get_seq_length()]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._adopt()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.indexer_keys is not None:
            self.indexer_keys = self.indexer_keys.repeat_interleave(repeats, dim=0)
        self._adopt()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.indexer_keys is not None:
            self.indexer_keys = self.indexer_keys[indices]
        self._adopt()


# Layer types whose cache is "every token so far": sliding-window and linear-attention layers keep other state.
_FULL_ATTENTION = {"full_attention", "indexed_attention"}


class PreallocatedCache(Cache):
    """A cache of `PreallocatedIndexedLayer`s, one per decoder layer of `config`; `capacity` tokens reserved per layer."""

    def __init__(self, config: PretrainedConfig, capacity: int = 0) -> None:
        if not self.fits(config):
            raise ValueError(f"PreallocatedCache holds full-attention layers only; {type(config).__name__} has sliding-window or linear-attention layers")
        layers = config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[PreallocatedIndexedLayer(capacity) for _ in range(layers)])

    @staticmethod
    def fits(config: PretrainedConfig) -> bool:
        """True when every decoder layer attends to all previous tokens (no sliding window, no linear attention)."""
        text = config.get_text_config(decoder=True)
        types = getattr(text, "layer_types", None)
        return (types is None and getattr(text, "sliding_window", None) is None) or (types is not None and set(types) <= _FULL_ATTENTION)
