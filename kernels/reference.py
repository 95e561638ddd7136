"""Plain-PyTorch DeepSeek Sparse Attention (DSA): the CPU path and the oracle for the Triton kernels.

Shape letters used throughout:
    B batch, S queries, T keys (cache length; T >= S), HI indexer heads, H query heads,
    Hk key/value heads (H % Hk == 0; Hk == 1 is the absorbed MLA form), K selected tokens per query,
    D / Dqk / Dv head widths.

Index contract shared with `kernels.triton_dsa`: `indices[b, s, :]` holds key positions in [0, T);
a negative entry (-1) is an empty slot that contributes nothing. `mask_indices` turns the raw
indexer top-k (which may point at masked tokens) into that form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of fp32 work space (gathered K and V plus scores) per query chunk: 4 MiB. Without autograd
# the gathers fill one reused buffer (fresh multi-MiB tensors per chunk cost more in page faults than
# the copy). At the v3.2 benchmark shape's 16K prefill 7-query chunks took 3.4-3.5 s, 28-query chunks
# (a 16 MiB budget) 3.8-4.3 s: the gathered latents of a small chunk stay in cache for both matmuls.
_CHUNK_BUDGET = 1 << 20
# Two-level top-k (see `topk_unordered`): blocks of a power of two such that there are at least this many
# blocks per selected key; below the minimum block size one plain top-k is faster.
_TOPK_BLOCKS_PER_K = 8
_TOPK_MIN_BLOCK = 4


def query_positions(
    q_positions: torch.Tensor | int | None, batch: int, seq_len: int, kv_len: int, device: torch.device
) -> torch.Tensor:
    """Absolute key-axis position of each query, as an int64 tensor [B, S].

    `q_positions` may be a [B, S] (or [S], broadcast over B) tensor, an int offset (query s sits at
    offset + s), or None, meaning the queries are the last S of the T keys (offset T - S): the
    layout of a prefill (T == S) and of a decode step over a cache.
    """
    if isinstance(q_positions, torch.Tensor):
        return q_positions.to(device=device, dtype=torch.long).expand(batch, seq_len)
    offset = kv_len - seq_len if q_positions is None else q_positions
    return (torch.arange(seq_len, device=device) + offset).expand(batch, seq_len)


def indexer_scores(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    weights: torch.Tensor,
    q_positions: torch.Tensor | int | None = None,
    *,
    scale: float = 1.0,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lightning-indexer scores I[b,s,t] = sum_j weights[b,s,j] * relu(scale * q_idx[b,s,j] . k_idx[b,t]).

    Args:
        q_idx: [B, S, HI, D] indexer queries.
        k_idx: [B, T, D] indexer keys (one per token, shared by all indexer heads).
        weights: [B, S, HI] per-query head weights.
        q_positions: see `query_positions`; used for the causal mask.
        scale: applied inside the ReLU (transformers uses index_head_dim ** -0.5).
        causal: mask keys after each query's position.
        key_padding_mask: optional [B, T] bool, False marks keys (padding) no query may select.

    Returns:
        [B, S, T] fp32 scores, -inf where masked.
    """
    batch, seq_len, n_heads, _ = q_idx.shape
    kv_len = k_idx.shape[1]
    # One GEMM for all heads, ReLU in place, then the head weights as a batched [1, HI] x [HI, T] product.
    heads = torch.bmm(q_idx.float().flatten(1, 2) * scale, k_idx.float().transpose(1, 2)).relu_()  # [B, S*HI, T]
    scores = torch.matmul(weights.float()[:, :, None, :], heads.view(batch, seq_len, n_heads, kv_len))[:, :, 0]  # [B, S, T]
    if causal:
        pos = query_positions(q_positions, batch, seq_len, kv_len, scores.device)
        scores.masked_fill_(torch.arange(kv_len, device=scores.device) > pos[:, :, None], float("-inf"))
    if key_padding_mask is not None:
        scores.masked_fill_(~key_padding_mask[:, None, :], float("-inf"))
    return scores


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k key positions per query: [B, S, T] scores -> [B, S, k] int32, -1 in empty slots, in no set order.

    A slot is empty when it holds a -inf (masked) score or when k exceeds T.
    """
    kv_len = scores.shape[-1]
    values, idx = topk_unordered(scores, min(k, kv_len))
    idx = idx.masked_fill(values == float("-inf"), -1).to(torch.int32)
    return F.pad(idx, (0, k - idx.shape[-1]), value=-1)


def selected_scores(idx: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The scores of a selection (`topk_indices`' layout) in descending order, -inf for empty slots.

    Two selections that differ only among keys tied at the k-th score have equal selected scores:
    the way to compare a faster top-k with the exact one, where the exact one is itself ambiguous.
    """
    picked = scores.gather(-1, idx.long().clamp(min=0))
    return torch.where(idx >= 0, picked, float("-inf")).sort(-1, descending=True).values


def topk_unordered(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, positions) of the k largest scores along the last dim, unordered; the same set as `topk`.

    Over long rows, two levels: every top-k element lies in a block whose maximum is among the k
    largest block maxima (any other block's elements are at most the k-th largest maximum, itself
    at most the k-th largest element), so the row is cut into blocks of b, the k best blocks found
    by their maxima, and the top-k taken among their k * b elements. torch's CPU top-k costs about
    7 ns per element; at T = 16K, k = 256 this is 2x faster, at 64K 3x. A block need not be
    contiguous: block j holds positions j, j + n, j + 2n, ... (n blocks), so that its maxima are an
    elementwise max of b rows of the [b, n] view instead of a reduction over b-element runs (1.2x).
    """
    kv_len = scores.shape[-1]
    block = 1 << max(0, (kv_len // (_TOPK_BLOCKS_PER_K * max(k, 1))).bit_length() - 1)
    if block < _TOPK_MIN_BLOCK:
        return scores.topk(k, dim=-1, sorted=False)
    n_blocks = kv_len // block
    body = scores[..., : n_blocks * block].unflatten(-1, (block, n_blocks))  # [..., b, n]
    best = body.amax(-2).topk(k, dim=-1, sorted=False).indices  # [..., k]
    cand = body.gather(-1, best[..., None, :].expand(*best.shape[:-1], block, k)).flatten(-2)
    pos = (best[..., None, :] + n_blocks * torch.arange(block, device=scores.device)[:, None]).flatten(-2)
    if n_blocks * block < kv_len:  # the ragged tail joins the candidates whole
        cand = torch.cat([cand, scores[..., n_blocks * block :]], dim=-1)
        tail = torch.arange(n_blocks * block, kv_len, device=scores.device)
        pos = torch.cat([pos, tail.expand(*pos.shape[:-1], -1)], dim=-1)
    values, j = cand.topk(k, dim=-1, sorted=False)
    return values, pos.gather(-1, j)


def mask_indices(
    indices: torch.Tensor,
    kv_len: int,
    q_positions: torch.Tensor | int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace every selection a query may not attend to with -1.

    The indexer's top-k fills all its slots even when fewer tokens are visible, so selections can
    point past the query (causal) or at padding. A selection s of query q survives only if
    0 <= s < T, s <= position(q), and attention_mask[b, q, s] is True.

    Args:
        indices: [B, S, K] integer key positions (negative = already empty).
        kv_len: T, the number of keys.
        q_positions: see `query_positions`.
        attention_mask: optional bool [B, S, T] (or broadcastable), True = may attend.

    Returns:
        [B, S, K] int32 indices with -1 in the empty slots.
    """
    batch, seq_len, _ = indices.shape
    idx = indices.long()
    pos = query_positions(q_positions, batch, seq_len, kv_len, indices.device)
    valid = (idx >= 0) & (idx < kv_len) & (idx <= pos[:, :, None])
    if attention_mask is not None:
        safe = idx.clamp(0, kv_len - 1)
        valid &= attention_mask.expand(batch, seq_len, kv_len).gather(-1, safe)
    return torch.where(valid, idx, -1).to(torch.int32)


def _as_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, T, D] shared latent -> [B, T, 1, D]; [B, T, Hk, D] passes through."""
    return x.unsqueeze(2) if x.dim() == 3 else x


def _gather(x: torch.Tensor, idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x[b, idx[b, c, k]] for x [B, T, Hk, D] and idx [B, C, K] (non-negative): [B, C, K, Hk, D].

    `index_select` on rows is several times faster on CPU than advanced indexing; it needs the
    (B, T) dims to flatten without a copy, which holds for one sequence or a [B, T, ...] layout.
    `out` (contiguous, x's dtype, at least B*C*K rows) receives the rows instead of a new tensor:
    a fresh multi-MiB tensor per chunk costs more in page faults than the copy itself.
    """
    batch, kv_len = x.shape[:2]
    shape = (*idx.shape, *x.shape[2:])
    rows = None if out is None else out.view(-1, *x.shape[2:])[: idx.numel()]
    if batch == 1:
        return torch.index_select(x[0], 0, idx.flatten(), out=rows).view(shape)
    if x.stride(0) == kv_len * x.stride(1):
        offsets = idx + torch.arange(batch, device=idx.device)[:, None, None] * kv_len
        return torch.index_select(x.flatten(0, 1), 0, offsets.flatten(), out=rows).view(shape)
    picked = x[torch.arange(batch, device=x.device)[:, None, None], idx]
    return picked if rows is None else rows.view(shape).copy_(picked)


def is_prefix_view(v: torch.Tensor, k: torch.Tensor) -> bool:
    """True when v is k[..., :Dv] (same storage, offset and strides; absorbed MLA's values).

    Strides of size-1 dims are ignored: `unsqueeze` gives k and its prefix different ones there.
    """
    if v.data_ptr() != k.data_ptr() or v.shape[:-1] != k.shape[:-1] or v.shape[-1] > k.shape[-1]:
        return False
    return all(n == 1 or a == b for n, a, b in zip(v.shape, v.stride(), k.stride()))


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    scale: float,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Attention of each query over only its selected keys, softmax in fp32. Differentiable.

    Args:
        q: [B, S, H, Dqk] queries.
        k: [B, T, Hk, Dqk] keys, or [B, T, Dqk] one latent shared by every head (absorbed MLA).
        v: [B, T, Hk, Dv] values, or [B, T, Dv] (for absorbed MLA: `kv[..., :Dv]`).
        indices: [B, S, K] key positions, -1 = empty slot (see `mask_indices`).
        scale: softmax scale applied to q . k.
        chunk_size: queries per chunk; default sizes chunks to a fixed work-space budget.

    Returns:
        [B, S, H, Dv] in q's dtype. A query with no valid selection gets zeros.
    """
    k, v = _as_heads(k), _as_heads(v)
    batch, seq_len, n_heads, d_qk = q.shape
    kv_heads, d_v = k.shape[2], v.shape[3]
    n_sel = indices.shape[-1]
    groups = n_heads // kv_heads
    if chunk_size is None:
        per_query = batch * n_sel * (kv_heads * (d_qk + d_v) + 2 * n_heads)
        chunk_size = max(1, _CHUNK_BUDGET // max(per_query, 1))
    chunk_size = min(chunk_size, seq_len)
    # Absorbed MLA passes V as a prefix view of K: one gather serves both.
    shared_v = is_prefix_view(v, k)
    # Without autograd the gathers reuse one buffer and fill it in place (see `_gather`).
    reuse = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    k_buf = k.new_empty(batch * chunk_size * n_sel, kv_heads, d_qk) if reuse else None
    v_buf = None if shared_v or not reuse else v.new_empty(batch * chunk_size * n_sel, kv_heads, d_v)

    out = torch.empty(batch, seq_len, n_heads, d_v, dtype=q.dtype, device=q.device)
    for start in range(0, seq_len, chunk_size):
        idx = indices[:, start : start + chunk_size].long()
        valid = idx >= 0
        full = bool(valid.all())  # every slot filled: all of a prefill past the first K queries
        safe = idx if full else idx.clamp(min=0)
        k_sel = _gather(k, safe, k_buf).float()
        v_sel = k_sel[..., :d_v] if shared_v else _gather(v, safe, v_buf).float()
        # Zero the empty slots: a 0 weight (or 0 gradient) times a non-finite value, e.g. whatever a
        # padding slot holds, is still NaN.
        if not full:
            if reuse:  # zero just the empty rows: a full-size masked_fill costs more than the gather
                empty = (~valid).flatten().nonzero().squeeze(1)
                k_sel.view(-1, kv_heads, d_qk).index_fill_(0, empty, 0.0)
                if not shared_v:
                    v_sel.view(-1, kv_heads, d_v).index_fill_(0, empty, 0.0)
            else:
                empty = ~valid[..., None, None]
                k_sel, v_sel = k_sel.masked_fill(empty, 0.0), v_sel.masked_fill(empty, 0.0)
        q_c = q[:, start : start + chunk_size].float().unflatten(2, (kv_heads, groups))  # [B, C, Hk, G, Dqk]
        # matmul over permuted views, not einsum: einsum copies the gathered keys into its own layout.
        scores = torch.matmul(q_c, k_sel.permute(0, 1, 3, 4, 2)).mul_(scale)  # [B, C, Hk, G, K]
        if not full:
            keep = valid[:, :, None, None, :]
            scores = scores.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if not full:  # a query whose slots are all empty would softmax to NaN; give it a zero output instead
            probs = probs.masked_fill(~keep.any(-1, keepdim=True), 0.0)
        out[:, start : start + chunk_size] = torch.matmul(probs, v_sel.transpose(2, 3)).flatten(2, 3)
    return out
