"""DeepSeek Sparse Attention through the model: MLA in absorbed (MQA) form over the latent cache.

transformers' `DeepseekV32Attention` scores the indexer over a full [B, S, HI, T] fp32 tensor and
expands the compressed latent cache into per-head K and V (`expand_kv`) at every step, so even with
our sparse kernel plugged in (`kernels.attention.dsa_attention_forward`) a 16K prefill or a 64K
decode step costs O(L^2) memory or O(T * H * D) work. `SparseMLAAttention` replaces that forward
when the attention implementation is "dsa_sparse" and does what V3.2 (and FlashMLA) do instead:

    1. the indexer runs chunk by chunk over queries, each chunk only against the keys it may see,
       and keeps its top-k: [B, S, K] indices, never an [S, T] score matrix for the whole prefill;
    2. the key projection W_UK is folded into the query, so every head attends over the one shared
       latent [c_kv | k_rope] (Dc + Dr wide) and the value is c_kv itself; W_UV is applied to the
       [B, S, H, Dc] output afterwards. Only the K selected latents are read per query.

The cache holds exactly what is attended to: the layer's key cache is the latent [B, 1, T, Dc + Dr]
and its value cache is empty ([B, 1, T, 0]); the indexer keys live in the same `DynamicCache`. Such
a cache is only valid for this forward: do not switch attention implementation mid-generation.

Usage:
    from kernels.mla import enable_sparse_attention
    enable_sparse_attention(model)   # registers "dsa_sparse", swaps the attention class, selects it
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.models.deepseek_v32.modeling_deepseek_v32 import (
    DeepseekV32Attention,
    apply_rotary_pos_emb,
    apply_rotary_pos_emb_interleave,
)

from kernels import int8_indexer, reference
from kernels.attention import ATTN_IMPLEMENTATION, allowed_mask, register, use_triton

# fp32 elements of indexer scores per query chunk ([B, C, T]): 1 MiB. Small chunks stay in cache (4K
# prefill: 64-query chunks 1.8x faster than 512); the causal trim also wastes less with them.
_INDEXER_CHUNK_BUDGET = 1 << 18
# The int8 indexer pays where its score GEMM saves more than its fp32 re-ranking of k + margin
# candidates a query costs: over many keys, with a wide indexer and a small k. At k >= 1024 most
# queries fail the proposal's check and are scored again in fp32 (0.4-0.6x the fp32 indexer's speed),
# at width 256 it is 0.86-0.99x; measured bounds in docs/experiments.md ("When the int8 indexer
# pays"). A decode step would quantize the whole key cache for one query row.
_INT8_MIN_QUERIES = 64
_INT8_MIN_KEYS = 8192
_INT8_MIN_KEYS_PER_K = 32
_INT8_MIN_WIDTH = 512
_INT8_MAX_K = 512


def int8_pays(queries: int, keys: int, k: int, width: int) -> bool:
    """Whether the int8 indexer is the faster one for `queries` over `keys`, top-`k`, indexer heads x dim = `width`."""
    return (queries >= _INT8_MIN_QUERIES and keys >= max(_INT8_MIN_KEYS, _INT8_MIN_KEYS_PER_K * k)
            and width >= _INT8_MIN_WIDTH and k <= _INT8_MAX_K)


def indexer_projections(
    attn: DeepseekV32Attention, hidden_states: torch.Tensor, q_resid: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The lightning indexer's queries, keys and head weights, exactly as `DeepseekV32Indexer` builds them.

    Args:
        attn: the layer (its `indexer` holds wq_b, wk, k_norm, weights_proj).
        hidden_states: [B, S, hidden] input of the attention module.
        q_resid: [B, S, q_lora_rank], `q_a_layernorm(q_a_proj(hidden_states))`.
        position_embeddings: (cos, sin) [B, S, Dr] from the model's rotary embedding.

    Returns:
        iq [B, S, HI, DI], ik [B, S, DI], w [B, S, HI] fp32 (transformers' n_heads**-0.5 folded in).
        The score scale is `attn.indexer.softmax_scale`, applied inside the ReLU.
    """
    ix = attn.indexer
    batch, seq_len, _ = hidden_states.shape
    cos, sin = position_embeddings
    q = ix.wq_b(q_resid).view(batch, seq_len, ix.n_heads, ix.head_dim)
    k = ix.k_norm(ix.wk(hidden_states)).unsqueeze(2)
    split = [ix.qk_rope_head_dim, ix.head_dim - ix.qk_rope_head_dim]
    q_rot, q_pass = q.split(split, dim=-1)
    k_rot, k_pass = k.split(split, dim=-1)
    # The indexer uses half-split RoPE, the main attention interleaved RoPE (as in transformers).
    q_rot, k_rot = apply_rotary_pos_emb(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
    weights = ix.weights_proj(hidden_states.to(ix.weights_proj.weight.dtype)).float() * ix.n_heads**-0.5
    return torch.cat([q_rot, q_pass], dim=-1), torch.cat([k_rot, k_pass], dim=-1)[:, :, 0], weights


def indexer_topk(
    iq: torch.Tensor,
    ik: torch.Tensor,
    weights: torch.Tensor,
    scale: float,
    topk: int,
    allowed: torch.Tensor | None = None,
    chunk_size: int | None = None,
    int8: bool | None = None,
) -> torch.Tensor:
    """Top-k keys per query by index score: [B, S, min(topk, T)] int32, -1 = empty.

    The queries are the last S of the T keys (prefill: S == T; decode: S == 1). On CPU it runs one
    query chunk at a time, each scored only against the keys up to its last query's position, so a
    prefill does half the work of the full square and never holds more than [B, chunk, T] scores;
    with Triton, `triton_dsa.indexer_topk` fuses scoring and top-k and holds no scores at all.

    Args:
        iq: [B, S, HI, D] indexer queries; ik: [B, T, D] indexer keys; weights: [B, S, HI].
        scale: applied inside the ReLU.
        topk: keys kept per query (clamped to T).
        allowed: optional [B, S, T] bool (a view is fine), True = the query may see the key: causal plus
            key padding, as DeepseekV32 builds it (only its last row is read); causal if None.
        chunk_size: queries per chunk; by default sized to a fixed score budget.
        int8: on CPU, score in int8 and re-rank the best candidates in fp32 (`kernels.int8_indexer`);
            None = where it is the faster (`int8_pays`).
    """
    batch, seq_len = iq.shape[:2]
    kv_len = ik.shape[1]
    offset = kv_len - seq_len
    k = min(topk, kv_len)
    # Masks are causal plus key padding (all DeepseekV32 builds), so the last query sees exactly the
    # keys that are not padding; masking by that row is a cheap [B, T] test instead of [B, S, T].
    padding = None if allowed is None else allowed[:, -1]
    if use_triton(iq):
        from kernels import triton_dsa

        return triton_dsa.indexer_topk(iq, ik, weights, k, q_positions=offset, scale=scale, key_padding_mask=padding)
    if int8 or (int8 is None and int8_pays(seq_len, kv_len, k, iq.shape[2] * iq.shape[3])):
        return int8_indexer.indexer_topk(
            iq, ik, weights, k, offset=offset, scale=scale, key_padding_mask=padding,
            # Its int32 and fp32 work buffers hold chunk x HI x T: the budget counts 8 indexer heads.
            chunk_size=chunk_size or max(1, _INDEXER_CHUNK_BUDGET * 8 // (kv_len * iq.shape[2])),
        )
    if chunk_size is None:
        chunk_size = max(1, _INDEXER_CHUNK_BUDGET // max(1, batch * kv_len))
    out = []
    for s0 in range(0, seq_len, chunk_size):
        s1 = min(seq_len, s0 + chunk_size)
        keys = offset + s1  # keys after the chunk's last query are causally masked anyway
        scores = reference.indexer_scores(
            iq[:, s0:s1], ik[:, :keys], weights[:, s0:s1], q_positions=offset + s0, scale=scale,
            key_padding_mask=None if padding is None else padding[:, :keys],
        )
        out.append(reference.topk_indices(scores, k))
    return torch.cat(out, dim=1)


class SparseMLAAttention(DeepseekV32Attention):
    """`DeepseekV32Attention` whose "dsa_sparse" path is absorbed MLA over the indexer's top-k.

    Same parameters and state dict as the parent; any other attention implementation runs the
    parent's forward unchanged.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if self.config._attn_implementation != ATTN_IMPLEMENTATION:
            return super().forward(hidden_states, position_embeddings, attention_mask, past_key_values, position_ids, **kwargs)
        if self.training and self.attention_dropout:
            raise NotImplementedError(f"{ATTN_IMPLEMENTATION} does not implement attention dropout")
        batch, seq_len, _ = hidden_states.shape
        q_abs, latent, (iq, ik, weights) = self.project(hidden_states, position_embeddings)
        if past_key_values is not None:
            latent = past_key_values.update(latent[:, None], latent.new_empty(batch, 1, seq_len, 0), self.layer_idx)[0][:, 0]
            ik = past_key_values.update_indexer(ik, self.layer_idx)
        allowed = None if attention_mask is None else allowed_mask(attention_mask)
        with torch.no_grad():  # the selection is discrete; the indexer learns in experts.warmup
            indices = indexer_topk(iq, ik, weights, self.indexer.softmax_scale, self.indexer.index_topk, allowed)
        out_latent = _ops(q_abs).sparse_attention(q_abs, latent, latent[..., : self.kv_lora_rank], indices, self.scaling)
        return self.output(out_latent), None

    def project(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Absorbed query [B, S, H, Dc + Dr], latent [B, S, Dc + Dr] = [c_kv | k_rope], indexer (iq, ik, w)."""
        batch, seq_len, _ = hidden_states.shape
        d_nope, d_rope, d_c = self.qk_nope_head_dim, self.qk_rope_head_dim, self.kv_lora_rank
        cos, sin = position_embeddings
        q_resid = self.q_a_layernorm(self.q_a_proj(hidden_states))
        q = self.q_b_proj(q_resid).view(batch, seq_len, self.num_heads, self.qk_head_dim)
        q_nope, q_rot = q.split([d_nope, d_rope], dim=-1)
        kv_pass, k_rot = self.kv_a_proj_with_mqa(hidden_states).split([d_c, d_rope], dim=-1)
        q_rot, k_rot = apply_rotary_pos_emb_interleave(q_rot, k_rot[:, :, None], cos, sin, unsqueeze_dim=2)
        latent = torch.cat([self.kv_a_layernorm(kv_pass), k_rot[:, :, 0]], dim=-1)
        w_uk = self.kv_b_proj.weight.view(self.num_heads, d_nope + self.v_head_dim, d_c)[:, :d_nope]
        if torch.is_grad_enabled() and (q_nope.requires_grad or w_uk.requires_grad):
            q_abs = torch.cat([torch.einsum("bshn,hnc->bshc", q_nope, w_uk), q_rot], dim=-1)
        else:
            # Head-major storage written in place (a [B, S, H, D] view of it goes on): einsum + cat copy
            # about 1 GB more at a 16K prefill (0.9 vs 0.6 s). `out=` has no autograd, hence the branch.
            heads_major = q_nope.new_empty(batch, self.num_heads, seq_len, d_c + d_rope)
            torch.matmul(q_nope.transpose(1, 2), w_uk, out=heads_major[..., :d_c])
            q_abs = heads_major.transpose(1, 2)
            q_abs[..., d_c:] = q_rot
        with torch.no_grad():
            index = indexer_projections(self, hidden_states, q_resid, position_embeddings)
        return q_abs, latent, index

    def output(self, out_latent: torch.Tensor) -> torch.Tensor:
        """[B, S, H, Dc] attention output in latent space -> W_UV per head -> o_proj: [B, S, hidden]."""
        w_uv = self.kv_b_proj.weight.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)[:, self.qk_nope_head_dim :]
        return self.o_proj(torch.einsum("bshc,hvc->bshv", out_latent, w_uv).flatten(2))


def enable_sparse_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Run `model`'s DSA layers through `SparseMLAAttention` with "dsa_sparse" selected; returns the model.

    The parameters are untouched (the classes are swapped in place), so checkpoints saved afterwards
    load into the stock model.
    """
    register()
    for module in model.modules():
        if type(module) is DeepseekV32Attention:
            module.__class__ = SparseMLAAttention
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def _ops(x: torch.Tensor) -> ModuleType:
    if use_triton(x):
        # Deferred so the CPU path never imports the Triton kernels.
        from kernels import triton_dsa

        return triton_dsa
    return reference
