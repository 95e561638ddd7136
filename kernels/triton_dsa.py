"""Triton kernels for DeepSeek Sparse Attention: indexer scores, fused indexer top-k, sparse attention forward and backward.

Shapes, the -1 empty-slot index contract and the semantics match `kernels.reference`, which is the
oracle for every kernel here. On CPU tensors the kernels only run under TRITON_INTERPRET=1, which
must be set before triton is first imported in the process (triton.language's own @triton.jit
helpers pick the interpreter then; importing a transformers model already imports triton).

At DeepSeek-V3.2's size (absorbed MLA, q . k over 576 = 512 latent + 64 rope dims, values the
latent's first 512) q . k is split at the values' width so that 576 pads to 512 + 64 rather than
1024, the key tile doubles as the value tile, 16 heads share a program, and the backward runs one
pass per gradient (dq, dk, dv): so every kernel fits sm_90's registers without spilling
(`benchmarks/hopper.py` compiles them ahead of time and tests/test_hopper_compile.py keeps it so).

Matmuls inside a program use `tl.dot` when a block has >= 16 rows (query heads sharing one KV head,
e.g. absorbed MLA); with fewer heads per KV head (transformers' expanded form has one) a
broadcast-multiply-reduce is used instead, since `tl.dot` needs every dimension >= 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.reference import is_prefix_view, query_positions, topk_indices

_LOG2E = 1.4426950408889634
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Selected tokens per inner-loop step and query heads per program: the largest pair with which every
# attention kernel fits sm_90's registers without spilling at V3.2's 576/512 widths, 8 warps
# (benchmarks/hopper.py; 64 heads a program spilled 2.7 KB in the forward).
_BLOCK_K = 32
_MAX_BLOCK_H = 16
_INDEXER_BLOCK_S = 32
_INDEXER_BLOCK_T = 64
# The fused indexer top-k keeps [16, 2 * K_PAD] int64 live: beyond 256 it spills on sm_90
# (benchmarks/hopper.py), so larger k (V3.2's 2048) scores blocks of queries, then selects.
_FUSED_MAX_K_PAD = 256
_SCORES_BUDGET = 256 * 2**20  # bytes of fp32 scores a block of queries may take


@triton.jit
def _mm(a, b, USE_DOT: tl.constexpr):
    """[M, N] x [N, P] -> [M, P] in fp32."""
    if USE_DOT:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)


@triton.jit
def _sparse_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_os, stride_oh,
    seq_len, n_sel, groups, n_heads, d_qk, d_v, scale_log2,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TAIL: tl.constexpr, SHARED_KV: tl.constexpr, USE_DOT: tl.constexpr,
):
    # Program = (batch * query, kv head, block of the query heads that share that kv head).
    # q . k is split at BLOCK_DA: absorbed MLA's 576 = 512 (latent) + 64 (rope) pads to 512 + 64,
    # not to 1024. With SHARED_KV the values are the keys' first d_v dims (absorbed MLA's latent),
    # so the key tile is loaded once and serves both products.
    pid_bs = tl.program_id(0).to(tl.int64)  # int64 offsets: caches can exceed 2**31 elements
    kv_head = tl.program_id(1)
    b = pid_bs // seq_len
    s = pid_bs % seq_len
    g = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = g < groups
    heads = kv_head * groups + g
    da = tl.arange(0, BLOCK_DA)
    db = BLOCK_DA + tl.arange(0, BLOCK_DB)
    dv = tl.arange(0, BLOCK_DV)

    q_row = q_ptr + b * stride_qb + s * stride_qs + heads[:, None] * stride_qh
    q_a = tl.load(q_row + da[None, :], mask=head_ok[:, None] & (da[None, :] < d_qk), other=0.0)
    if HAS_TAIL:
        q_b = tl.load(q_row + db[None, :], mask=head_ok[:, None] & (db[None, :] < d_qk), other=0.0)
    k_base = k_ptr + b * stride_kb + kv_head * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head * stride_vh
    idx_base = idx_ptr + pid_bs * n_sel

    # Online softmax in the log2 domain; m stays -inf until a valid slot is seen.
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)
    for k0 in range(0, n_sel, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        idx = tl.load(idx_base + kk, mask=kk < n_sel, other=-1).to(tl.int64)
        valid = idx >= 0
        keys_a = tl.load(k_base + idx[:, None] * stride_kt + da[None, :], mask=valid[:, None] & (da[None, :] < d_qk), other=0.0)
        if SHARED_KV:
            vals = keys_a
        else:
            vals = tl.load(v_base + idx[:, None] * stride_vt + dv[None, :], mask=valid[:, None] & (dv[None, :] < d_v), other=0.0)
        scores = _mm(q_a, tl.trans(keys_a), USE_DOT)
        if HAS_TAIL:
            keys_b = tl.load(k_base + idx[:, None] * stride_kt + db[None, :], mask=valid[:, None] & (db[None, :] < d_qk), other=0.0)
            scores += _mm(q_b, tl.trans(keys_b), USE_DOT)
        scores = scores * scale_log2
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # Subtract 0 instead of -inf while a row has no valid slot yet, so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(scores - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _mm(p.to(vals.dtype), vals, USE_DOT)
        m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # rows without a valid slot: 0
    tl.store(out_ptr + b * stride_ob + s * stride_os + heads[:, None] * stride_oh + dv[None, :],
             out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None] & (dv[None, :] < d_v))
    # log2-sum-exp for the backward; -inf for rows without a valid slot (never read there).
    lse = m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0))
    tl.store(lse_ptr + pid_bs * n_heads + heads, lse, mask=head_ok)


@triton.jit
def _sparse_attn_bwd_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dkt, stride_dkh,
    stride_dvb, stride_dvt, stride_dvh,
    seq_len, n_sel, groups, n_heads, d_qk, d_v, scale, scale_log2,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TAIL: tl.constexpr, SHARED_KV: tl.constexpr, USE_DOT: tl.constexpr, GRAD: tl.constexpr,
):
    # Same program layout and q . k split as the forward, launched once per GRAD: "dq" accumulates this
    # program's own dq rows; "dk" and "dv" add to the rows of the tokens it selected, which other
    # queries share, hence fp32 atomics. Each pass recomputes the probabilities, but holds a third of
    # the state: one pass with every gradient live spills at V3.2's width (benchmarks/hopper.py).
    pid_bs = tl.program_id(0).to(tl.int64)  # int64 offsets: caches can exceed 2**31 elements
    kv_head = tl.program_id(1)
    b = pid_bs // seq_len
    s = pid_bs % seq_len
    g = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = g < groups
    heads = kv_head * groups + g
    da = tl.arange(0, BLOCK_DA)
    db = BLOCK_DA + tl.arange(0, BLOCK_DB)
    dv_offs = tl.arange(0, BLOCK_DV)
    qa_mask = head_ok[:, None] & (da[None, :] < d_qk)
    qb_mask = head_ok[:, None] & (db[None, :] < d_qk)
    do_mask = head_ok[:, None] & (dv_offs[None, :] < d_v)

    q_row = b * stride_qb + s * stride_qs + heads[:, None] * stride_qh
    q_a = tl.load(q_ptr + q_row + da[None, :], mask=qa_mask, other=0.0)
    do = tl.load(do_ptr + b * stride_dob + s * stride_dos + heads[:, None] * stride_doh + dv_offs[None, :],
                 mask=do_mask, other=0.0)
    lse = tl.load(lse_ptr + pid_bs * n_heads + heads, mask=head_ok, other=0.0)
    delta = tl.load(delta_ptr + pid_bs * n_heads + heads, mask=head_ok, other=0.0)
    k_base = k_ptr + b * stride_kb + kv_head * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head * stride_vh
    dk_base = dk_ptr + b * stride_dkb + kv_head * stride_dkh
    dv_base = dv_ptr + b * stride_dvb + kv_head * stride_dvh
    idx_base = idx_ptr + pid_bs * n_sel

    dq_a = tl.zeros([BLOCK_H, BLOCK_DA], tl.float32)
    dq_b = tl.zeros([BLOCK_H, BLOCK_DB], tl.float32)
    if HAS_TAIL:
        q_b = tl.load(q_ptr + q_row + db[None, :], mask=qb_mask, other=0.0)
    for k0 in range(0, n_sel, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        idx = tl.load(idx_base + kk, mask=kk < n_sel, other=-1).to(tl.int64)
        valid = idx >= 0
        ka_mask = valid[:, None] & (da[None, :] < d_qk)
        v_mask = valid[:, None] & (dv_offs[None, :] < d_v)
        keys_a = tl.load(k_base + idx[:, None] * stride_kt + da[None, :], mask=ka_mask, other=0.0)
        if SHARED_KV:
            vals = keys_a
        else:
            vals = tl.load(v_base + idx[:, None] * stride_vt + dv_offs[None, :], mask=v_mask, other=0.0)

        # Recompute the probabilities from the saved log2-sum-exp.
        scores = _mm(q_a, tl.trans(keys_a), USE_DOT)
        if HAS_TAIL:
            kb_mask = valid[:, None] & (db[None, :] < d_qk)
            keys_b = tl.load(k_base + idx[:, None] * stride_kt + db[None, :], mask=kb_mask, other=0.0)
            scores += _mm(q_b, tl.trans(keys_b), USE_DOT)
        p = tl.where(head_ok[:, None] & valid[None, :], tl.exp2(scores * scale_log2 - lse[:, None]), 0.0)
        if GRAD == "dv":
            d_vals = _mm(tl.trans(p).to(do.dtype), do, USE_DOT)  # [BLOCK_K, BLOCK_DV]
            tl.atomic_add(dv_base + idx[:, None] * stride_dvt + dv_offs[None, :], d_vals, mask=v_mask)
        else:
            dp = _mm(do, tl.trans(vals), USE_DOT)  # [BLOCK_H, BLOCK_K]
            ds = p * (dp - delta[:, None])  # dL/d(logit), logit = scale * q . k
        if GRAD == "dq":
            dq_a += _mm(ds.to(keys_a.dtype), keys_a, USE_DOT)
            if HAS_TAIL:
                dq_b += _mm(ds.to(keys_b.dtype), keys_b, USE_DOT)
        if GRAD == "dk":
            d_keys_a = _mm(tl.trans(ds).to(q_a.dtype), q_a, USE_DOT) * scale
            tl.atomic_add(dk_base + idx[:, None] * stride_dkt + da[None, :], d_keys_a, mask=ka_mask)
            if HAS_TAIL:
                d_keys_b = _mm(tl.trans(ds).to(q_b.dtype), q_b, USE_DOT) * scale
                tl.atomic_add(dk_base + idx[:, None] * stride_dkt + db[None, :], d_keys_b, mask=kb_mask)

    if GRAD == "dq":
        tl.store(dq_ptr + q_row + da[None, :], (dq_a * scale).to(dq_ptr.dtype.element_ty), mask=qa_mask)
        if HAS_TAIL:
            tl.store(dq_ptr + q_row + db[None, :], (dq_b * scale).to(dq_ptr.dtype.element_ty), mask=qb_mask)


@triton.jit
def _index_tile(
    q_base, k_base, w_base, stride_qs, stride_qh, stride_kt, stride_ws,
    s_offs, s_ok, t_offs, t_ok, head_dim, scale, n_heads,
    BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Unmasked index scores of a [BLOCK_S queries, BLOCK_T keys] tile: sum_j w_j * relu(scale * q_j . k)."""
    d = tl.arange(0, BLOCK_D)
    keys = tl.load(k_base + t_offs[:, None] * stride_kt + d[None, :], mask=t_ok[:, None] & (d[None, :] < head_dim), other=0.0)
    acc = tl.zeros([BLOCK_S, BLOCK_T], tl.float32)
    for j in range(0, n_heads):
        q = tl.load(q_base + s_offs[:, None] * stride_qs + j * stride_qh + d[None, :], mask=s_ok[:, None] & (d[None, :] < head_dim), other=0.0)
        w = tl.load(w_base + s_offs * stride_ws + j, mask=s_ok, other=0.0).to(tl.float32)
        acc += w[:, None] * tl.maximum(tl.dot(q, tl.trans(keys), input_precision="ieee") * scale, 0.0)
    return acc


@triton.jit
def _indexer_kernel(
    q_ptr, k_ptr, w_ptr, pos_ptr, kpm_ptr, out_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_wb, stride_ws,
    seq_len, kv_len, head_dim, scale,
    N_HEADS: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program = (batch, tile of queries, tile of keys); writes one [BLOCK_S, BLOCK_T] tile of scores.
    b = tl.program_id(0).to(tl.int64)  # int64 offsets: B * S * T can exceed 2**31
    s_offs = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    t_offs = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    s_ok = s_offs < seq_len
    t_ok = t_offs < kv_len

    allowed = s_ok[:, None] & t_ok[None, :]
    n_heads = N_HEADS
    if CAUSAL:
        pos = tl.load(pos_ptr + b * seq_len + s_offs, mask=s_ok, other=-1)
        allowed &= t_offs[None, :] <= pos[:, None]
        # Tiles entirely above the diagonal (half of a prefill) skip the head loop.
        n_heads = tl.where(tl.program_id(2) * BLOCK_T <= tl.max(pos, axis=0), N_HEADS, 0)
    if HAS_KPM:
        kpm = tl.load(kpm_ptr + b * kv_len + t_offs, mask=t_ok, other=0)
        allowed &= kpm[None, :] != 0

    acc = _index_tile(q_ptr + b * stride_qb, k_ptr + b * stride_kb, w_ptr + b * stride_wb, stride_qs, stride_qh, stride_kt, stride_ws,
                      s_offs, s_ok, t_offs, t_ok, head_dim, scale, n_heads, BLOCK_S, BLOCK_T, BLOCK_D)
    acc = tl.where(allowed, acc, float("-inf"))
    tl.store(out_ptr + (b * seq_len + s_offs[:, None]) * kv_len + t_offs[None, :], acc,
             mask=s_ok[:, None] & t_ok[None, :])


@triton.jit
def _indexer_topk_kernel(
    q_ptr, k_ptr, w_ptr, pos_ptr, kpm_ptr, out_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_wb, stride_ws,
    seq_len, kv_len, head_dim, scale, topk, n_keep,
    N_HEADS: tl.constexpr, HAS_KPM: tl.constexpr,
    BLOCK_S: tl.constexpr, K_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program = (batch, tile of queries). It walks the keys in blocks of K_PAD up to its last query's
    # position and keeps a running top-K_PAD per query, so no [S, T] score matrix is ever written.
    # A (score, key) pair is packed into one int64 -- order-preserving int32 of the fp32 score in the
    # high half, key index in the low half -- so one bitonic top-k over [running | block] carries the
    # indices with the scores.
    b = tl.program_id(0).to(tl.int64)
    s_offs = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s_offs < seq_len
    pos = tl.load(pos_ptr + b * seq_len + s_offs, mask=s_ok, other=-1)
    last = tl.max(pos, axis=0)
    # -inf packs to this key; the running buffer starts full of it and it decodes to the empty slot -1.
    neg_inf_key = (tl.full([BLOCK_S, K_PAD], float("-inf"), tl.float32).to(tl.int32, bitcast=True) ^ 0x7FFFFFFF).to(tl.int64)
    best = neg_inf_key << 32
    for t0 in range(0, last + 1, K_PAD):
        t_offs = t0 + tl.arange(0, K_PAD)
        t_ok = t_offs < kv_len
        allowed = s_ok[:, None] & t_ok[None, :] & (t_offs[None, :] <= pos[:, None])
        if HAS_KPM:
            kpm = tl.load(kpm_ptr + b * kv_len + t_offs, mask=t_ok, other=0)
            allowed &= kpm[None, :] != 0
        acc = _index_tile(q_ptr + b * stride_qb, k_ptr + b * stride_kb, w_ptr + b * stride_wb, stride_qs, stride_qh, stride_kt, stride_ws,
                          s_offs, s_ok, t_offs, t_ok, head_dim, scale, N_HEADS, BLOCK_S, K_PAD, BLOCK_D)
        acc = tl.where(allowed, acc, float("-inf"))
        bits = acc.to(tl.int32, bitcast=True)
        ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)  # signed-int order == float order
        packed = (ordered << 32) | t_offs.to(tl.int64)[None, :]
        both = tl.reshape(tl.join(best, packed), [BLOCK_S, 2 * K_PAD])
        best = tl.topk(both, K_PAD)
    idx = (best & 0xFFFFFFFF).to(tl.int32)
    idx = tl.where((best >> 32) == neg_inf_key, -1, idx)
    k_offs = tl.arange(0, K_PAD)
    tl.store(out_ptr + (b * seq_len + s_offs[:, None]) * topk + k_offs[None, :], idx,
             mask=s_ok[:, None] & (k_offs[None, :] < n_keep))


def _check_rows(name: str, x: torch.Tensor, ndim: int) -> None:
    """Kernels take arbitrary outer strides but need a float tensor with a unit-stride last dim."""
    assert x.dim() == ndim, f"{name}: expected {ndim} dims, got shape {tuple(x.shape)}"
    assert x.dtype in _FLOAT_DTYPES, f"{name}: unsupported dtype {x.dtype}"
    assert x.stride(-1) == 1, f"{name}: last dim must be contiguous, strides {x.stride()}"


def _launch_config(n_heads: int, kv_heads: int, d_qk: int, d_v: int, shared_kv: bool) -> dict:
    """Constexprs of the attention kernels: q . k split at the values' width (absorbed MLA's
    576 = 512 + 64), values read from the key tile when they are its first d_v dims."""
    groups = n_heads // kv_heads
    block_h = min(triton.next_power_of_2(groups), _MAX_BLOCK_H)
    block_dv = max(16, triton.next_power_of_2(d_v))
    block_da = min(max(16, triton.next_power_of_2(d_qk)), block_dv)
    tail = d_qk - block_da
    return {
        "BLOCK_H": block_h,
        "BLOCK_K": _BLOCK_K,
        "BLOCK_DA": block_da,
        "BLOCK_DB": max(16, triton.next_power_of_2(max(tail, 1))),
        "BLOCK_DV": block_dv,
        "HAS_TAIL": tail > 0,
        "SHARED_KV": shared_kv and block_da == block_dv,
        "USE_DOT": block_h >= 16,
        "num_warps": 8 if block_dv >= 256 else 4,
    }


def _attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on [B,S,H,Dqk] q, [B,T,Hk,*] k/v; returns (out [B,S,H,Dv], lse2 [B,S,H] fp32)."""
    batch, seq_len, n_heads, d_qk = q.shape
    kv_heads, d_v = k.shape[2], v.shape[3]
    out = q.new_empty((batch, seq_len, n_heads, d_v))
    lse = q.new_empty((batch, seq_len, n_heads), dtype=torch.float32)
    cfg = _launch_config(n_heads, kv_heads, d_qk, d_v, is_prefix_view(v, k))
    grid = (batch * seq_len, kv_heads, triton.cdiv(n_heads // kv_heads, cfg["BLOCK_H"]))
    _sparse_attn_fwd_kernel[grid](
        q, k, v, indices, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        seq_len, indices.shape[-1], n_heads // kv_heads, n_heads, d_qk, d_v, scale * _LOG2E,
        **cfg,
    )
    return out, lse


class _SparseAttention(torch.autograd.Function):
    """Autograd wrapper: Triton forward, Triton backward (dq direct, dk/dv by fp32 atomics)."""

    @staticmethod
    def forward(ctx, q, k, v, indices, scale):  # noqa: ANN001, ANN205 - autograd signature
        out, lse = _attention_forward(q, k, v, indices, scale)
        ctx.save_for_backward(q, k, v, indices, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, d_out):  # noqa: ANN001, ANN205 - autograd signature
        q, k, v, indices, out, lse = ctx.saved_tensors
        d_out = d_out.contiguous()
        batch, seq_len, n_heads, d_qk = q.shape
        kv_heads, d_v = k.shape[2], v.shape[3]
        # delta[b,s,h] = sum_d dO * O, the softmax-backward row term.
        delta = (d_out.float() * out.float()).sum(-1).contiguous()
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        cfg = _launch_config(n_heads, kv_heads, d_qk, d_v, is_prefix_view(v, k))
        grid = (batch * seq_len, kv_heads, triton.cdiv(n_heads // kv_heads, cfg["BLOCK_H"]))
        for grad in ("dq", "dk", "dv"):
            _sparse_attn_bwd_kernel[grid](
                q, k, v, indices, d_out, lse, delta, dq, dk, dv,
                q.stride(0), q.stride(1), q.stride(2),
                k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2),
                d_out.stride(0), d_out.stride(1), d_out.stride(2),
                dk.stride(0), dk.stride(1), dk.stride(2),
                dv.stride(0), dv.stride(1), dv.stride(2),
                seq_len, indices.shape[-1], n_heads // kv_heads, n_heads, d_qk, d_v, ctx.scale, ctx.scale * _LOG2E,
                **cfg, GRAD=grad,
            )
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, scale: float
) -> torch.Tensor:
    """Sparse attention over the selected keys (prefill or decode), differentiable w.r.t. q, k, v.

    Args:
        q: [B, S, H, Dqk] queries.
        k: [B, T, Hk, Dqk] keys, or [B, T, Dqk] one latent shared by every head (absorbed MLA).
        v: [B, T, Hk, Dv] values, or [B, T, Dv] (for absorbed MLA: the view `kv[..., :Dv]`).
        indices: [B, S, K] contiguous int32 key positions, -1 = empty slot.
        scale: softmax scale applied to q . k.
    Any outer strides are accepted for q, k, v; their last dim must be contiguous.

    Returns:
        [B, S, H, Dv] in q's dtype; a query with no valid selection gets zeros.
    """
    k = k.unsqueeze(2) if k.dim() == 3 else k
    v = v.unsqueeze(2) if v.dim() == 3 else v
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_rows(name, x, 4)
    assert k.dtype == q.dtype and v.dtype == q.dtype, "q, k, v must share a dtype"
    assert indices.dtype == torch.int32 and indices.is_contiguous(), "indices must be contiguous int32"
    batch, seq_len, n_heads, _ = q.shape
    assert indices.shape[:2] == (batch, seq_len), f"indices {tuple(indices.shape)} vs q {tuple(q.shape)}"
    assert k.shape[:3] == v.shape[:3] and k.shape[0] == batch, "k and v must be [B, T, Hk, *]"
    assert n_heads % k.shape[2] == 0, "query heads must be a multiple of kv heads"
    return _SparseAttention.apply(q, k, v, indices, scale)


def _indexer_config(n_heads: int, head_dim: int, causal: bool, has_kpm: bool) -> dict:
    """Constexprs of `_indexer_kernel`."""
    return {
        "N_HEADS": n_heads, "CAUSAL": causal, "HAS_KPM": has_kpm,
        "BLOCK_S": _INDEXER_BLOCK_S, "BLOCK_T": _INDEXER_BLOCK_T, "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "num_warps": 4,
    }


def _indexer_topk_config(n_heads: int, head_dim: int, topk: int, kv_len: int, has_kpm: bool) -> dict:
    """Constexprs of `_indexer_topk_kernel`: 16 queries a program (tl.dot needs >= 16 rows), a running
    top-K_PAD per query ([16, 2 * K_PAD] int64 is the largest live tile)."""
    k_pad = max(16, triton.next_power_of_2(min(topk, kv_len)))
    return {
        "N_HEADS": n_heads, "HAS_KPM": has_kpm,
        "BLOCK_S": 16, "K_PAD": k_pad, "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "num_warps": 4 if k_pad <= 128 else 8,
    }


def _scores_then_topk(
    q_idx: torch.Tensor, k_idx: torch.Tensor, weights: torch.Tensor, topk: int, pos: torch.Tensor, scale: float,
    key_padding_mask: torch.Tensor | None,
) -> torch.Tensor:
    """`indexer_topk` for a k the fused kernel cannot hold (V3.2's 2048): scores of a block of queries
    at a time by `_indexer_kernel`, then `torch.topk` (a radix select on GPUs)."""
    batch, seq_len, _, _ = q_idx.shape
    kv_len = k_idx.shape[1]
    out = torch.empty((batch, seq_len, topk), dtype=torch.int32, device=q_idx.device)
    rows = max(1, _SCORES_BUDGET // (4 * batch * kv_len))
    for s0 in range(0, seq_len, rows):
        s1 = min(seq_len, s0 + rows)
        scores = indexer_scores(q_idx[:, s0:s1], k_idx, weights[:, s0:s1], pos[:, s0:s1], scale=scale, key_padding_mask=key_padding_mask)
        out[:, s0:s1] = topk_indices(scores, topk)
    return out


def _indexer_args(
    q_idx: torch.Tensor, k_idx: torch.Tensor, weights: torch.Tensor, q_positions: torch.Tensor | int | None, key_padding_mask: torch.Tensor | None
) -> tuple[int, int, int, int, int, torch.Tensor, torch.Tensor | None]:
    """Checks the indexer inputs; (B, S, HI, D, T, int32 query positions [B, S], int8 key padding mask or None)."""
    _check_rows("q_idx", q_idx, 4)
    _check_rows("k_idx", k_idx, 3)
    _check_rows("weights", weights, 3)
    batch, seq_len, n_heads, head_dim = q_idx.shape
    kv_len = k_idx.shape[1]
    assert k_idx.shape == (batch, kv_len, head_dim), f"k_idx {tuple(k_idx.shape)} vs q_idx {tuple(q_idx.shape)}"
    assert weights.shape == (batch, seq_len, n_heads), f"weights {tuple(weights.shape)}"
    pos = query_positions(q_positions, batch, seq_len, kv_len, q_idx.device).to(torch.int32).contiguous()
    kpm = key_padding_mask
    if kpm is not None:
        assert kpm.shape == (batch, kv_len) and kpm.dtype == torch.bool, "key_padding_mask must be [B, T] bool"
        kpm = kpm.to(torch.int8).contiguous()
    return batch, seq_len, n_heads, head_dim, kv_len, pos, kpm


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
    """Fused lightning-indexer scores with causal/padding masking (no autograd; the indexer is no_grad).

    Args:
        q_idx: [B, S, HI, D] indexer queries.
        k_idx: [B, T, D] indexer keys.
        weights: [B, S, HI] per-query head weights (last dim contiguous).
        q_positions: [B, S] tensor, int offset, or None (= T - S); see `reference.query_positions`.
        scale: applied inside the ReLU.
        causal: mask keys after each query's position.
        key_padding_mask: optional [B, T] bool, False = key never selectable.

    Returns:
        [B, S, T] fp32 scores, -inf where masked.
    """
    batch, seq_len, n_heads, head_dim, kv_len, pos, kpm = _indexer_args(q_idx, k_idx, weights, q_positions, key_padding_mask)
    out = torch.empty((batch, seq_len, kv_len), dtype=torch.float32, device=q_idx.device)
    grid = (batch, triton.cdiv(seq_len, _INDEXER_BLOCK_S), triton.cdiv(kv_len, _INDEXER_BLOCK_T))
    _indexer_kernel[grid](
        q_idx, k_idx, weights, pos, pos if kpm is None else kpm, out,
        q_idx.stride(0), q_idx.stride(1), q_idx.stride(2),
        k_idx.stride(0), k_idx.stride(1),
        weights.stride(0), weights.stride(1),
        seq_len, kv_len, head_dim, scale,
        **_indexer_config(n_heads, head_dim, causal, kpm is not None),
    )
    return out


def indexer_topk(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    weights: torch.Tensor,
    topk: int,
    q_positions: torch.Tensor | int | None = None,
    *,
    scale: float = 1.0,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal lightning-indexer scores fused with top-k: `reference.topk_indices(reference.indexer_scores(...), topk)`.

    Args:
        q_idx: [B, S, HI, D] indexer queries; k_idx: [B, T, D] indexer keys; weights: [B, S, HI].
        topk: keys kept per query.
        q_positions: [B, S] tensor, int offset, or None (= T - S); see `reference.query_positions`.
        scale: applied inside the ReLU.
        key_padding_mask: optional [B, T] bool, False = key never selectable.

    Returns:
        [B, S, topk] int32 key positions, best first, -1 in empty slots (fewer visible keys than topk).
        Exact score ties may be broken differently from `torch.topk`.
    """
    batch, seq_len, n_heads, head_dim, kv_len, pos, kpm = _indexer_args(q_idx, k_idx, weights, q_positions, key_padding_mask)
    assert 0 < topk < 2**31 and kv_len < 2**31, "topk and T must fit in int32"
    cfg = _indexer_topk_config(n_heads, head_dim, topk, kv_len, kpm is not None)
    if cfg["K_PAD"] > _FUSED_MAX_K_PAD:
        return _scores_then_topk(q_idx, k_idx, weights, topk, pos, scale, key_padding_mask)
    out = torch.full((batch, seq_len, topk), -1, dtype=torch.int32, device=q_idx.device)
    grid = (batch, triton.cdiv(seq_len, cfg["BLOCK_S"]))
    _indexer_topk_kernel[grid](
        q_idx, k_idx, weights, pos, pos if kpm is None else kpm, out,
        q_idx.stride(0), q_idx.stride(1), q_idx.stride(2),
        k_idx.stride(0), k_idx.stride(1),
        weights.stride(0), weights.stride(1),
        seq_len, kv_len, head_dim, scale, topk, min(topk, cfg["K_PAD"]),
        **cfg,
    )
    return out
