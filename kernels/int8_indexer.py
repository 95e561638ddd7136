"""The lightning indexer's top-k on CPU with int8 scores and an exact fp32 re-ranking.

V3.2 runs its indexer in FP8: the indexer's quadratic cost is what a sparse prefill pays instead of
dense attention, so it has to be cheap. On CPU the cheap type is int8 (VNNI): `torch._int_mm` runs
the [C*HI, D] x [D, T] score GEMM about 5x faster than fp32 on this project's 2-core machine. A
quantized score is not the exact score, so int8 only proposes: each query keeps its top k + margin
keys by int8 score, those candidates are scored again in fp32 exactly as `reference.indexer_scores`
does, and the k best of them are the result. That set is the fp32 top-k unless a key of the true
top-k ranks below k + margin by int8 score: at the v3.2 benchmark shape 3 of 16384 queries at 16K,
at the "small" shape (4 indexer heads) 0.5-0.7%, all where the k-th best score is near ReLU's zero
and tiny against the row's largest. So each query's candidates also measure its int8 error, and a
query whose left-out keys could come within that error of its k-th fp32 score (`_at_risk`) goes
through the fp32 indexer (1.2% of the queries at v3.2's 16K, 10% at the small shape's). What remains
is a query whose int8 error outside its candidates exceeds twice the largest inside (benchmarks/dsa.py
counts the misses), and exact fp32 ties.

Quantization is symmetric: one scale per (query, head) row and one per key, so
relu(q . k) = s_q * s_k * relu(q8 . k8) up to rounding, and the head-weighted sum folds s_q into
the head weights and s_k into one multiply per key.
"""

from __future__ import annotations

import torch

from kernels import reference

# Candidates kept beyond k for the fp32 re-ranking. On benchmarks/dsa.py's v3.2 data at 16K (k = 256)
# a margin of 64 missed a true top-k key for 19 of 16384 queries, 128 for 3 (0.02%), for 0.2-0.3 s
# more on a 3.3 s indexer.
DEFAULT_MARGIN = 128


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 over the last dim: (x8 int8, scale fp32 [...]) with x ~= x8 * scale[..., None]."""
    amax = x.abs().amax(-1).float()
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return torch.round(x.float() / scale[..., None]).to(torch.int8), scale


def indexer_topk(
    iq: torch.Tensor,
    ik: torch.Tensor,
    weights: torch.Tensor,
    k: int,
    *,
    offset: int,
    scale: float,
    key_padding_mask: torch.Tensor | None = None,
    chunk_size: int,
    margin: int = DEFAULT_MARGIN,
) -> torch.Tensor:
    """Top-k keys per query by indexer score: [B, S, k] int32, -1 = empty slot, in no set order.

    Args:
        iq: [B, S, HI, D] indexer queries; ik: [B, T, D] indexer keys; weights: [B, S, HI].
        k: keys kept per query (at most T).
        offset: query s sits at key position offset + s (causal mask).
        scale: applied inside the ReLU.
        key_padding_mask: optional [B, T] bool, False = a key no query may select.
        chunk_size: queries scored at once; each chunk only against the keys up to its last query.
        margin: int8 candidates beyond k that the fp32 re-ranking sees.
    """
    batch, seq_len, n_heads, dim = iq.shape
    scaled_q = iq.float() * scale  # [B, S, HI, D]
    q8, q_scale = quantize_rows(scaled_q)  # [B, S, HI, D], [B, S, HI]
    k8, k_scale = quantize_rows(ik)  # [B, T, D], [B, T]
    head_w = weights.float() * q_scale  # s_q folds into the head weights
    exact_k = ik.float()
    # Reused across chunks: fresh multi-MiB tensors per chunk cost more in page faults than the work.
    dots_i = torch.empty(chunk_size * n_heads * (offset + seq_len), dtype=torch.int32)
    dots_f = torch.empty(chunk_size * n_heads * (offset + seq_len))
    cand_keys = torch.empty(chunk_size * (k + margin), dim)
    out = torch.full((batch, seq_len, k), -1, dtype=torch.int32, device=iq.device)
    # Only a chunk's diagonal block holds keys after some of its queries: key offset + s0 + j is
    # after query s0 + i exactly when j > i.
    after = torch.ones(chunk_size, chunk_size, dtype=torch.bool).triu_(1)
    risky: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    for b in range(batch):
        for s0 in range(0, seq_len, chunk_size):
            s1 = min(seq_len, s0 + chunk_size)
            n_q, keys = s1 - s0, offset + s1  # keys after the chunk's last query are masked anyway
            dots = dots_i[: n_q * n_heads * keys].view(n_q * n_heads, keys)
            torch._int_mm(q8[b, s0:s1].reshape(n_q * n_heads, dim), k8[b, :keys].t(), out=dots).clamp_min_(0)
            heads = dots_f[: n_q * n_heads * keys].view(n_q, n_heads, keys).copy_(dots.view(n_q, n_heads, keys))
            approx = torch.matmul(head_w[b, s0:s1, None, :], heads)[:, 0].mul_(k_scale[b, :keys])  # [C, keys]
            approx[:, offset + s0 :].masked_fill_(after[:n_q, :n_q], float("-inf"))
            if key_padding_mask is not None:
                approx.masked_fill_(~key_padding_mask[b, None, :keys], float("-inf"))
            top = min(k + margin, keys)
            cand_score, cand = reference.topk_unordered(approx, top)  # [C, top]
            exact = _rescore(iq[b, s0:s1], exact_k[b], weights[b, s0:s1], cand, cand_keys, scale)
            exact.masked_fill_(cand_score == float("-inf"), float("-inf"))
            best, j = exact.topk(min(k, top), dim=-1, sorted=False)
            picked = cand.gather(-1, j).masked_fill_(best == float("-inf"), -1)
            out[b, s0:s1, : picked.shape[1]] = picked.to(torch.int32)
            if top < keys:
                risky[b].append(s0 + _at_risk(cand_score, exact, best))
    # Queries the int8 proposal may have failed go through the fp32 indexer, a chunk of them at a time
    # (one GEMM reads the keys once for all of them).
    for b, found in enumerate(risky):
        queries = torch.cat(found) if found else torch.empty(0, dtype=torch.long)
        for c0 in range(0, queries.numel(), chunk_size):
            q = queries[c0 : c0 + chunk_size]
            keys = offset + int(q[-1]) + 1
            scores = reference.indexer_scores(
                iq[b : b + 1, q], ik[b : b + 1, :keys], weights[b : b + 1, q], (offset + q)[None], scale=scale,
                key_padding_mask=None if key_padding_mask is None else key_padding_mask[b : b + 1, :keys],
            )
            out[b, q] = reference.topk_indices(scores, k)[0]
    return out


def _at_risk(approx: torch.Tensor, exact: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Queries whose selection a key outside their candidates might still belong to: [C] row numbers.

    A key left out has an int8 score at most the lowest candidate's; its fp32 score may exceed that
    by the int8 error, estimated per query as twice the largest |int8 - fp32| over its own candidates.
    Where that could reach the k-th best fp32 score, the query is scored again over all its keys
    (see the module docstring for how often, and why).
    """
    finite = approx > float("-inf")
    err = torch.where(finite, (exact - approx).abs(), 0.0).amax(-1)
    floor = torch.where(finite, approx, float("inf")).amin(-1)
    kth = best.amin(-1)
    return ((floor + 2 * err >= kth) & finite.all(-1)).nonzero().squeeze(1)


def _rescore(q: torch.Tensor, ik: torch.Tensor, weights: torch.Tensor, cand: torch.Tensor, buf: torch.Tensor, scale: float) -> torch.Tensor:
    """fp32 index scores of candidate keys, by `reference.indexer_scores` with each query its own batch
    row: q [C, HI, D], ik [T, D] fp32, weights [C, HI], cand [C, N] -> [C, N].

    The keys are gathered into `buf` (at least C * N rows of D), as `reference.sparse_attention` gathers
    into its buffers: a fresh multi-MiB tensor per chunk pays page faults (index_select 0.74 -> 0.41 s
    at 16K in a profile; the whole indexer within its run-to-run noise, 3.9-4.2 s either way).
    """
    keys = buf[: cand.numel()]
    torch.index_select(ik, 0, cand.flatten(), out=keys)
    keys = keys.view(*cand.shape, ik.shape[-1])
    return reference.indexer_scores(q[:, None], keys, weights[:, None], scale=scale, causal=False)[:, 0]

