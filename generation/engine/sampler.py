"""Next tokens from logits: temperature, top-k, top-p (in transformers' order), greedy at temperature 0.

Each sequence draws its one uniform number from its own generator and picks by inverse CDF over its
own row, so its tokens do not depend on which other sequences share the batch.
"""

from __future__ import annotations

import torch


def warp(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """[..., V] logits -> the fp32 logits the sampler draws from: divided by `temperature` (> 0), and
    -inf outside the top-k / top-p set. RL reuses it, so that training reads the sampler's own distribution."""
    shape = logits.shape
    logits = logits.float().reshape(-1, shape[-1]) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1)  # ascending, as transformers' TopPLogitsWarper
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits.reshape(shape)


def sample(logits: torch.Tensor, generators: list[torch.Generator], temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """[B, V] logits -> [B] int64 token ids; `generators[b]` drives row b; top_k 0 = off, top_p 1 = off."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = warp(logits, temperature, top_p, top_k)
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf.device)
    # Scaled by the row total so rounding in the cumsum can never push u past the last token.
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=cdf.shape[-1] - 1)
