"""Registers DSA sparse attention as a transformers attention implementation named "dsa_sparse".

Usage:
    from kernels.attention import register
    register()
    model.set_attn_implementation("dsa_sparse")
    # or: AutoModelForCausalLM.from_pretrained(path, attn_implementation="dsa_sparse")

DeepseekV32Attention passes the indexer's raw top-k as `indices` ([B, S, topk] int32) to any
implementation other than "eager"/"sdpa". Those indices may point at tokens the query must not see
(when fewer than topk tokens are visible, top-k still fills every slot, with -inf-scored ones), so
they are filtered against the attention mask before the sparse kernel runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Indexer

from kernels import reference

ATTN_IMPLEMENTATION = "dsa_sparse"
# An index_topk no sequence reaches: the indexer then selects every visible token.
DENSE_TOPK = 1 << 62
TRITON_ENV = "DISTILLERY_DSA_TRITON"


def register(name: str = ATTN_IMPLEMENTATION) -> None:
    """Make `name` selectable as `attn_implementation` (idempotent)."""
    AttentionInterface.register(name, dsa_attention_forward)
    # For a name without a registered mask function transformers builds no mask at all and
    # DeepseekV32Attention then fails on `attention_mask[:, 0]`; the indexer needs the boolean
    # [B, 1, S, T] causal+padding mask that sdpa gets.
    AttentionMaskInterface.register(name, sdpa_mask)


@contextlib.contextmanager
def dense_attention(model: nn.Module) -> Iterator[None]:
    """Make every DSA indexer select all tokens (dense attention); the old index_topk is restored on exit."""
    indexers = [m for m in model.modules() if isinstance(m, DeepseekV32Indexer)]
    saved = [ix.index_topk for ix in indexers]
    try:
        for ix in indexers:
            ix.index_topk = DENSE_TOPK
        yield
    finally:
        for ix, k in zip(indexers, saved, strict=True):
            ix.index_topk = k


def use_triton(x: torch.Tensor) -> bool:
    """Triton kernels for CUDA tensors (or anywhere with DISTILLERY_DSA_TRITON=1); the reference otherwise."""
    return x.is_cuda or os.environ.get(TRITON_ENV) == "1"


def allowed_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The mask an attention layer receives -> [B, S, T] bool, True = may attend.

    Accepts the boolean (sdpa, dsa_sparse) or additive float (eager) mask, as [B, 1, S, T] or [B, S, T].
    """
    mask = attention_mask[:, 0] if attention_mask.dim() == 4 else attention_mask
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min


def dsa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    indices: torch.Tensor | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers attention function over the indexer-selected keys.

    Args:
        module: the calling attention layer (unused; part of the interface).
        query: [B, H, S, Dqk].
        key: [B, Hk, T, Dqk].
        value: [B, Hk, T, Dv].
        attention_mask: [B, 1, S, T] bool (True = attend) or additive float mask, or None (causal only).
        dropout: must be 0; attention dropout is not implemented.
        scaling: softmax scale (default Dqk ** -0.5).
        indices: [B, S, K] selected key positions from the DSA indexer.

    Returns:
        (attn_output [B, S, H, Dv], None): the layout eager attention returns; weights are never built.
    """
    if indices is None:
        raise ValueError(f"{ATTN_IMPLEMENTATION} needs `indices` from a DSA indexer (DeepseekV32Attention)")
    if dropout:
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION} does not implement attention dropout")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    kv_len = key.shape[2]
    allowed = None if attention_mask is None else allowed_mask(attention_mask)
    indices = reference.mask_indices(indices, kv_len, attention_mask=allowed)
    # [B, H, L, D] -> [B, L, H, D] views; both backends take strided inputs.
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    if use_triton(query):
        # Deferred so the reference (CPU) path never imports the Triton kernels.
        from kernels import triton_dsa

        return triton_dsa.sparse_attention(q, k, v, indices, scale), None
    return reference.sparse_attention(q, k, v, indices, scale), None
